"""Quality rules: what a bad row (or a bad window) is, compiled to Spark expressions.

Every rule is counted over the rows of one materialized window in a single aggregation
(`featureplane.quality.evaluation`), so checking costs one scan of rows already staged, and
nothing is collected but counts and a few example rows. A rule fails when more than
`max_share` of the rows break it (0: any row), or, for a row count, outside its bounds; its
severity says whether a failure blocks the online push (`error`) or is reported (`warn`).

The defaults every feature view gets: join keys and event time not null, event time inside
the window (such rows are dropped before the write and counted; more than the view's
`max_invalid_share` fails), and, for row-level views, one row per (join keys, event time).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import Any, Literal

from pyspark.sql import Column
from pyspark.sql import functions as F

from featureplane.compute.window import TimeWindow
from featureplane.feature_view import FeatureView

Severity = Literal["error", "warn"]


@dataclass(frozen=True)
class Rule:
    """One expectation over a window's rows.

    Exactly one of: `fails` (a row breaks the rule where it is true), `unique` (columns whose
    combination must not repeat), `row_count` (bounds on the number of rows, None for open), or
    `check` (a pandera check featureplane does not compile, run by pandera's PySpark backend:
    pass or fail, without a count).
    """

    name: str
    severity: Severity = "error"
    column: str | None = None
    fails: Callable[[], Column] | None = None
    unique: tuple[str, ...] = ()
    row_count: tuple[int | None, int | None] | None = None
    check: Any = None
    max_share: float = 0.0
    source: str | None = None
    """The source whose window the rule reads; None for the view's output."""
    drops: bool = False
    """Whether the rows breaking the rule are dropped before the write."""

    @property
    def label(self) -> str:
        """The rule as a user reads it: `user_id not null`, `source page_views: …`."""
        return f"source {self.source}: {self.name}" if self.source else self.name


def _dropped_if_null(column: str, max_share: float) -> Rule:
    return Rule(
        f"{column} not null",
        column=column,
        fails=lambda: F.col(column).isNull(),
        max_share=max_share,
        drops=True,
    )


def default_rules(view: FeatureView, window: TimeWindow) -> list[Rule]:
    """The rules every view gets without configuration (see the module docstring)."""
    ts, share = view.timestamp_field, view.max_invalid_share
    rules = [_dropped_if_null(column, share) for column in (*view.join_keys, ts)]
    rules.append(
        Rule(
            f"{ts} inside the window",
            column=ts,
            fails=lambda: F.col(ts).isNotNull() & ~window.contains(ts),
            max_share=share,
            drops=True,
        )
    )
    if not view.aggregations:
        rules.append(
            Rule(
                f"unique ({', '.join((*view.join_keys, ts))})", "warn", unique=(*view.join_keys, ts)
            )
        )
    return rules


def valid_rows(view: FeatureView, window: TimeWindow) -> Column:
    """The output rows the offline store takes: those no dropping default rule fails (join
    keys and event time set, the event time inside the window, so that a run never writes
    into a neighbour's window)."""
    dropping = [rule.fails() for rule in default_rules(view, window) if rule.drops]
    return ~reduce(operator.or_, dropping)
