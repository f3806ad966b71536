"""The `maintenance` job and its daily schedule: compaction and vacuum of the offline store
(`featureplane.maintenance`), reported per table in the op's output metadata and log."""

from datetime import timedelta

from dagster import (
    Config,
    DefaultScheduleStatus,
    Definitions,
    MetadataValue,
    OpExecutionContext,
    Output,
    ScheduleDefinition,
    TableColumn,
    TableRecord,
    TableSchema,
    job,
    op,
)

from featureplane.maintenance import maintain
from featureplane.repository import Repository
from resources.offline_store import OfflineStoreResource

COLUMNS = (
    "table",
    "active_files_before",
    "active_files_after",
    "stored_files_before",
    "stored_files_after",
    "stored_bytes_before",
    "stored_bytes_after",
    "compacted_files",
    "removed_files",
    "kept_versions",
    "skipped",
)


class MaintenanceConfig(Config):
    """Vacuum keeps every file younger than `min_retention_hours` (Delta's default: a week,
    which protects concurrent writers) and the versions that training datasets built within
    `max_retention_days` recorded."""

    min_retention_hours: int = 168
    max_retention_days: int = 90


@op(description="Compact and vacuum every Delta table of the offline store.")
def maintain_offline_store(
    context: OpExecutionContext, config: MaintenanceConfig, offline_store: OfflineStoreResource
) -> Output[None]:
    report = maintain(
        offline_store.store(),
        min_retention=timedelta(hours=config.min_retention_hours),
        max_retention=timedelta(days=config.max_retention_days),
    )
    records = []
    for table in report.tables:
        context.log.info(
            f"{table.uri}: {table.active_files_before} -> {table.active_files_after} active "
            f"files, {table.stored_files_before} -> {table.stored_files_after} stored files "
            f"({table.stored_bytes_before:,} -> {table.stored_bytes_after:,} bytes), "
            f"{table.compacted_files} compacted, {len(table.removed_files)} removed"
        )
        if table.skipped:
            context.log.warning(f"{table.uri}: skipped: {table.skipped}")
        values = (
            table.uri,
            table.active_files_before,
            table.active_files_after,
            table.stored_files_before,
            table.stored_files_after,
            table.stored_bytes_before,
            table.stored_bytes_after,
            table.compacted_files,
            len(table.removed_files),
            ", ".join(map(str, table.kept_versions)),
            table.skipped or "",
        )
        records.append(TableRecord(dict(zip(COLUMNS, values, strict=True))))
    for line in report.not_rebuildable:
        context.log.warning(line)
    schema = TableSchema([TableColumn(name) for name in COLUMNS])
    return Output(
        None,
        metadata={
            "tables": MetadataValue.table(records, schema),
            "removed_files": sum(len(t.removed_files) for t in report.tables),
            "skipped_tables": sum(t.skipped is not None for t in report.tables),
            "not_rebuildable": MetadataValue.md(
                "\n".join(f"- {line}" for line in report.not_rebuildable) or "none"
            ),
        },
    )


@job(description="Compaction and vacuum of the offline store's Delta tables.")
def maintenance():
    maintain_offline_store()


maintenance_schedule = ScheduleDefinition(
    name="maintenance_daily",
    job=maintenance,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
)


def definitions(repository: Repository) -> Definitions:
    return Definitions(jobs=[maintenance], schedules=[maintenance_schedule])
