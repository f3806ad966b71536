"""The volume guard: a window whose new rows are far fewer than before does not replace them.

An empty source day (a late upstream job, a broken filter) otherwise replaces a window's stored
rows with nothing, and the run reports success. Before a window is written, each partition's
new row count is compared with what the partition held (or, for a partition never written and
with `trailing`, with the mean of the trailing partitions): zero rows, or fewer than `min_share`
of that baseline, fail the run naming the view, the partition, both counts and how to force it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

FORCE_TAG = "featureplane/allow_volume_drop"
"""Run tag that lets a run replace windows with fewer rows (`featureplane materialize
--allow-volume-drop` sets it)."""


@dataclass(frozen=True)
class VolumeGuard:
    """`min_share`: the least share of a partition's baseline its new rows may be (0: only an
    empty partition fails); `trailing`: how many earlier partitions set the baseline of one
    never written before (0: none, such partitions pass)."""

    min_share: float = 0.5
    trailing: int = 0

    def problem(self) -> str | None:
        if not 0 <= self.min_share <= 1:
            return f"volume_guard min_share must be between 0 and 1, got {self.min_share!r}"
        if not isinstance(self.trailing, int) or self.trailing < 0:
            return f"volume_guard trailing must be a whole number >= 0, got {self.trailing!r}"
        return None


DEFAULT_VOLUME_GUARD = VolumeGuard()


class VolumeDropError(RuntimeError):
    """New rows would replace far more stored rows: nothing was written."""


@dataclass(frozen=True)
class Drop:
    """A partition whose new rows fall below its guard."""

    start: datetime
    stored: int
    new: int
    baseline: float
    trailing: bool


def drops(
    guard: VolumeGuard,
    starts: list[datetime],
    stored: Mapping[datetime, int],
    new: Mapping[datetime, int],
) -> list[Drop]:
    """The partitions (by start, in order) whose new count is below the guard; `stored` holds
    the current counts of these partitions and of the `trailing` ones before them."""
    found = []
    earlier = sorted(start for start in stored if start < starts[0])
    history = [stored[start] for start in earlier][-guard.trailing :] if guard.trailing else []
    for start in starts:
        before, rows = stored.get(start, 0), new.get(start, 0)
        baseline, trailing = float(before), False
        if not before and history:
            baseline, trailing = sum(history) / len(history), True
        if baseline and (rows == 0 or rows < guard.min_share * baseline):
            found.append(Drop(start, before, rows, baseline, trailing))
        if guard.trailing:
            history = [*history, before][-guard.trailing :] if before else history
    return found


def drop_message(view: str, drop: Drop, guard: VolumeGuard, more: int) -> str:
    """One line naming the view, the partition, the counts and how to force the write."""
    against = (
        f"the mean {drop.baseline:,.0f} rows of the {guard.trailing} partitions before it"
        if drop.trailing
        else f"{drop.stored:,} stored rows"
    )
    others = f" (and {more} more partitions)" if more else ""
    return (
        f"{view}: partition {drop.start:%Y-%m-%d %H:%M} would hold {drop.new:,} rows against "
        f"{against}, below the volume guard ({guard.min_share:.0%}){others}: nothing written. "
        f"If the drop is real, rerun with the run tag {FORCE_TAG}=true "
        "(featureplane materialize --allow-volume-drop)"
    )
