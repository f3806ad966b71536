"""The only place that turns featureplane definitions into Dagster assets, checks and jobs."""

from featureplane.dagster.definitions import build_definitions

__all__ = ["build_definitions"]
