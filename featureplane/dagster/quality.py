"""Each feature view's `quality` asset check: blocking, evaluated in the materialization's step.

The check runs where the window is computed (`featureplane.compute.materialization`), so it
sees exactly the rows written, and it is blocking: a failed error-severity rule fails the step
after the offline write, so `online/<name>` does not push the window in that run and the
online store keeps its previous values. Warnings fail the check with severity WARN, which
blocks nothing. The metadata lists every rule (failing count, rows, severity, status) and
example rows of each failing rule.
"""

from __future__ import annotations

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)

from featureplane.compute.materialization import PreparedWindow
from featureplane.compute.window import TimeWindow
from featureplane.quality.evaluation import QualityReport, RuleResult

CHECK_NAME = "quality"
RULES_SCHEMA = TableSchema(
    columns=[
        TableColumn("rule", "string"),
        TableColumn("severity", "string"),
        TableColumn("status", "string"),
        TableColumn("failing", "int"),
        TableColumn("rows", "int"),
    ]
)


def quality_check_spec(key: AssetKey) -> AssetCheckSpec:
    return AssetCheckSpec(
        CHECK_NAME,
        asset=key,
        blocking=True,
        description="Expectations and default rules on each window's rows (blocks the push).",
    )


def _status(result: RuleResult) -> str:
    if result.passed:
        return "passed"
    return "failed" if result.severity == "error" else "warning"


def quality_result(view: str, window: TimeWindow, prepared: PreparedWindow) -> AssetCheckResult:
    """The check result of a prepared window: passed unless an error rule failed anywhere."""
    combined = QualityReport(
        prepared.report.rows,
        [*prepared.report.results, *(r for s in prepared.sources.values() for r in s.results)],
    )
    results, errors, warnings = combined.results, combined.errors, combined.warnings
    subject = f"{view} {window.start:%Y-%m-%d %H:%M}..{window.end:%Y-%m-%d %H:%M}"
    records = [
        TableRecord(
            {
                "rule": r.rule,
                "severity": r.severity,
                "status": _status(r),
                "failing": r.failing,
                "rows": r.rows,
            }
        )
        for r in results
    ]
    examples = {r.rule: r.examples for r in results if r.examples}
    lines = [r.line(subject) for r in (*errors, *warnings)]
    return AssetCheckResult(
        passed=not errors and not warnings,
        severity=AssetCheckSeverity.WARN if warnings and not errors else AssetCheckSeverity.ERROR,
        description="\n".join(lines) or f"{subject}: all {len(results)} rules passed",
        metadata={
            "rules": MetadataValue.table(records, schema=RULES_SCHEMA),
            "failed_rules": len(errors),
            "warnings": len(warnings),
            "rows_checked": prepared.report.rows,
            "rows_dropped": prepared.dropped,
            "failing_examples": MetadataValue.json(examples),
        },
    )
