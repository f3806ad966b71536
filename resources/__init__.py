"""Dagster resources: the Spark session, the IO managers that move data to the stores, and the
notifier alerts go through."""

from resources.notifier import NotifierResource
from resources.offline_io_manager import DeltaOfflineIOManager
from resources.offline_store import OfflineStoreResource
from resources.online_io_manager import OnlineIOManager
from resources.online_store import OnlineStoreResource
from resources.spark import SparkResource

__all__ = [
    "DeltaOfflineIOManager",
    "NotifierResource",
    "OfflineStoreResource",
    "OnlineIOManager",
    "OnlineStoreResource",
    "SparkResource",
]
