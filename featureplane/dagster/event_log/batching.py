"""Batched event writes: the events Dagster marks as one batch stored in one storage call."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import yaml
from dagster import AssetMaterialization, DagsterEvent, DagsterEventType, DagsterInstance
from dagster._core.events import (
    DagsterEventBatchMetadata,
    StepMaterializationData,
    generate_event_batch_id,
)
from dagster._core.instance.ref import InstanceRef
from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID
from dagster._serdes import ConfigurableClassData

BATCH_SIZE = 10_000
"""Events of one batch stored per storage call (Dagster's batches are one output's partitions)."""


class BatchingInstance(DagsterInstance):
    """Dagster's instance with batched event writes on (`DAGSTER_EVENT_BATCH_SIZE`, when set,
    still decides)."""

    @classmethod
    def config_schema(cls) -> dict:
        return {}  # no settings of its own

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        """Dagster's defaults, with `SqliteEventLog` where Dagster keeps its SQLite event log,
        the storages opened under the instance folder's lock
        (`featureplane.dagster.instance.FirstUseLockedStorage`)."""
        defaults = dict(InstanceRef.config_defaults(base_dir))
        events = ConfigurableClassData(
            "featureplane.dagster.event_log",
            "SqliteEventLog",
            yaml.dump({"base_dir": os.path.join(base_dir, "history", "runs")}),
        )
        parts = {"run_storage": defaults["run_storage"], "event_log_storage": events}
        parts["schedule_storage"] = defaults["schedule_storage"]
        composite = {
            name: {
                "module_name": d.module_name,
                "class_name": d.class_name,
                "config_yaml": d.config_yaml,
            }
            for name, d in parts.items()
        }
        defaults["event_log_storage"] = events
        defaults["storage"] = ConfigurableClassData(
            "featureplane.dagster.instance",
            "FirstUseLockedStorage",
            yaml.dump({**composite, "home": base_dir}),
        )
        return defaults

    def _get_event_batch_size(self) -> int:
        return int(os.getenv("DAGSTER_EVENT_BATCH_SIZE", str(BATCH_SIZE)))


def report_materializations(
    instance: DagsterInstance, materializations: Sequence[AssetMaterialization]
) -> None:
    """Runless materializations reported as one batch (one storage call on a
    `BatchingInstance`), not one write each."""
    batch = generate_event_batch_id()
    for index, materialization in enumerate(materializations):
        event = DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            event_specific_data=StepMaterializationData(materialization),
            job_name=RUNLESS_JOB_NAME,
        )
        last = index == len(materializations) - 1
        metadata = DagsterEventBatchMetadata(batch, last)
        instance.report_dagster_event(event, run_id=RUNLESS_RUN_ID, batch_metadata=metadata)
