"""Expectations as code: pandera's PySpark schemas, compiled to featureplane's quality rules.

A feature view or a source declares `expectations=` as a `pandera.pyspark.DataFrameSchema` (or
a `DataFrameModel` class), as a pandera user would write it:

    DataFrameSchema(
        {"page_views_1d": Column(checks=Check.in_range(1, 100_000)),
         "last_category": Column(nullable=True, checks=Check.isin(CATEGORIES, raise_warning=True))},
        checks=[row_count(min=100), row_check("distinct_categories_1d <= page_views_1d")],
        unique=["user_id", "ts"],
    )

pandera's semantics hold: a column is not nullable unless it says so, checks ignore nulls, and
`raise_warning=True` makes a check a warning (severity `warn`) instead of an error. pandera's
built-in checks become Spark predicates counted in one aggregation, with failing counts and
example rows (pandera's PySpark backend only says pass or fail, one Spark job per check); a
custom pandera check is run by pandera's backend itself. `row_count` and `row_check` are
featureplane's own checks for what pandera's PySpark API lacks: bounds on a window's rows, and a
condition across columns; pandera runs them too, so the schema still validates in a notebook.
"""

from __future__ import annotations

from typing import Any

import pandera.pyspark as pa
from pyspark.sql import Column
from pyspark.sql import functions as F

from featureplane.quality.rules import Rule

ROW_COUNT, ROW_CHECK = "row_count", "row_check"


def row_count(min: int | None = None, max: int | None = None, warn: bool = False) -> pa.Check:  # noqa: A002
    """A window holds between `min` and `max` rows (either open); a table-level check."""

    def within(df: Any) -> bool:
        rows = df.count()
        return (min is None or rows >= min) and (max is None or rows <= max)

    return pa.Check(
        within,
        name=ROW_COUNT,
        error=f"row_count(min={min}, max={max})",
        statistics={"min": min, "max": max},
        raise_warning=warn,
    )


def row_check(condition: str, name: str | None = None, warn: bool = False) -> pa.Check:
    """Every row meets a Spark SQL condition across its columns, e.g. "clicks <= impressions"
    (a row where it is null passes, as pandera ignores nulls)."""

    def holds(df: Any) -> bool:
        return df.where(~F.expr(condition)).limit(1).count() == 0

    return pa.Check(
        holds,
        name=ROW_CHECK,
        error=name or condition,
        statistics={"condition": condition},
        raise_warning=warn,
    )


def _between(column: Column, low: Any, high: Any, include_low: bool, include_high: bool) -> Column:
    lower = column >= low if include_low else column > low
    upper = column <= high if include_high else column < high
    return lower & upper


def _length(column: Column, min_value: Any, max_value: Any, exact_value: Any) -> Column:
    length = F.length(column)
    if exact_value is not None:
        return length == exact_value
    passes = F.lit(True)
    if min_value is not None:
        passes = passes & (length >= min_value)
    if max_value is not None:
        passes = passes & (length <= max_value)
    return passes


PASSES = {
    "equal_to": lambda c, s: c == s["value"],
    "not_equal_to": lambda c, s: c != s["value"],
    "greater_than": lambda c, s: c > s["min_value"],
    "greater_than_or_equal_to": lambda c, s: c >= s["min_value"],
    "less_than": lambda c, s: c < s["max_value"],
    "less_than_or_equal_to": lambda c, s: c <= s["max_value"],
    "in_range": lambda c, s: _between(
        c, s["min_value"], s["max_value"], s["include_min"], s["include_max"]
    ),
    "isin": lambda c, s: c.isin(list(s["allowed_values"])),
    "notin": lambda c, s: ~c.isin(list(s["forbidden_values"])),
    "str_matches": lambda c, s: c.rlike(f"^(?:{s['pattern']})"),
    "str_contains": lambda c, s: c.rlike(s["pattern"]),
    "str_startswith": lambda c, s: c.startswith(s["string"]),
    "str_endswith": lambda c, s: c.endswith(s["string"]),
    "str_length": lambda c, s: _length(c, s["min_value"], s["max_value"], s["exact_value"]),
}
"""pandera's built-in PySpark checks as the Spark predicate a passing value meets."""


def as_schema(expectations: Any) -> pa.DataFrameSchema:
    """A DataFrameSchema from what `expectations=` may be: the schema or a DataFrameModel."""
    if isinstance(expectations, type) and issubclass(expectations, pa.DataFrameModel):
        return expectations.to_schema()
    if isinstance(expectations, pa.DataFrameSchema):
        return expectations
    raise TypeError(
        "expectations must be a pandera.pyspark DataFrameSchema or DataFrameModel, "
        f"not {type(expectations).__name__}"
    )


def schema_problem(expectations: Any, columns: dict[str, str | None]) -> str | None:
    """Why the expectations do not fit an output of these columns (name → Spark type, None when
    open), or None: checked when the repository loads, before any data is read."""
    try:
        schema = as_schema(expectations)
    except TypeError as error:
        return str(error)
    unique = [schema.unique] if isinstance(schema.unique, str) else list(schema.unique or [])
    for name in [*schema.columns, *unique]:
        if name not in columns:
            return f"expectations name column {name!r}, which the output lacks (it has: " + (
                ", ".join(columns) + ")"
            )
    for name, column in schema.columns.items():
        declared = columns[name]
        if column.dtype is not None and declared is not None:
            expected = column.dtype.type.simpleString()
            if expected != declared:
                return f"expectations type column {name!r} as {expected}, but it is {declared}"
        for check in column.checks:
            if check.name in (ROW_COUNT, ROW_CHECK):
                return f"{check.name} is a table check: put it in checks=[...], not on {name!r}"
    return None


def compile_rules(expectations: Any, source: str | None = None) -> list[Rule]:
    """The rules of a pandera schema, in declaration order: per column nullability then its
    checks, the schema's uniqueness, then its table checks."""
    schema = as_schema(expectations)
    rules: list[Rule] = []
    for name, column in schema.columns.items():
        if not column.nullable:
            rules.append(Rule(f"{name} not null", column=name, fails=_null(name), source=source))
        rules += [_column_rule(name, check, source) for check in column.checks]
    if schema.unique:
        unique = (schema.unique,) if isinstance(schema.unique, str) else tuple(schema.unique)
        rules.append(Rule(f"unique ({', '.join(unique)})", unique=unique, source=source))
    for check in schema.checks:
        severity = "warn" if check.raise_warning else "error"
        if check.name == ROW_COUNT:
            bounds = (check.statistics["min"], check.statistics["max"])
            rules.append(Rule(check.error, severity, row_count=bounds, source=source))
        elif check.name == ROW_CHECK:
            condition = check.statistics["condition"]
            rules.append(
                Rule(
                    check.error,
                    severity,
                    fails=lambda condition=condition: ~F.expr(condition),
                    source=source,
                )
            )
        else:
            rules.append(Rule(_check_name(check), severity, check=check, source=source))
    return rules


def rule_lines(expectations: Any, source: str | None = None) -> list[str]:
    """The rules of a schema as plan and history show them: `page_views_1d in_range(1, 10)
    (error)`."""
    return [f"{rule.label} ({rule.severity})" for rule in compile_rules(expectations, source)]


def _null(name: str):
    return lambda: F.col(name).isNull()


def _column_rule(name: str, check: pa.Check, source: str | None) -> Rule:
    severity = "warn" if check.raise_warning else "error"
    label = f"{name} {_check_name(check)}"
    passes = PASSES.get(check.name)
    if passes is None:
        return Rule(label, severity, column=name, check=check, source=source)
    statistics = dict(check.statistics)
    fails = lambda: ~passes(F.col(name), statistics)  # noqa: E731 - built when evaluated
    if not check.ignore_na:
        fails = lambda: F.col(name).isNull() | ~passes(F.col(name), statistics)  # noqa: E731
    return Rule(label, severity, column=name, fails=fails, source=source)


def _check_name(check: pa.Check) -> str:
    return check.error or check.name or "custom check"


def run_with_pandera(rule: Rule, df: Any) -> bool:
    """Whether a rule pandera runs passes on `df`: a column check through a one-column schema,
    a table check through a schema of that check alone."""
    if rule.column is not None:
        schema = pa.DataFrameSchema({rule.column: pa.Column(nullable=True, checks=[rule.check])})
    else:
        schema = pa.DataFrameSchema(checks=[rule.check])
    validated = schema.validate(df)
    return not dict(validated.pandera.errors)
