"""Dagster resources: the Spark session and the IO managers that move data to the stores."""

from resources.offline_io_manager import DeltaOfflineIOManager
from resources.spark import SparkResource

__all__ = ["DeltaOfflineIOManager", "SparkResource"]
