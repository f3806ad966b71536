"""Data quality: expectations as code, default rules, the volume guard and source completeness.

Every materialized window is checked before anything downstream sees it: the quality rules of
its view (pandera expectations, `expectations`, plus defaults every view gets, `rules`) are
counted on Spark (`evaluation`) and reported as the view's blocking `quality` asset check; the
volume guard (`volume`) and the sources' completeness (`completeness`) stop a window from being
written at all. Importing this package loads neither Spark nor pandera: `row_count`,
`row_check` and `VolumeGuard` are imported on first use.
"""

from datetime import timedelta
from typing import Any

from featureplane.quality.volume import DEFAULT_VOLUME_GUARD, VolumeGuard

__all__ = ["VolumeGuard", "quality_lines", "row_check", "row_count"]

DEFAULT_INVALID_SHARE = 0.01
DEFAULT_QUIET_PERIOD = timedelta(hours=1)
"""How long a complete source may go without events (`featureplane.quality.completeness`)."""


def quality_lines(
    expectations: Any,
    volume_guard: VolumeGuard | None = DEFAULT_VOLUME_GUARD,
    max_invalid_share: float = DEFAULT_INVALID_SHARE,
    source: str | None = None,
    quiet_period: timedelta | None = DEFAULT_QUIET_PERIOD,
) -> list[str]:
    """What a view or source declares beyond the defaults, one line each (its expectations'
    rules, a changed guard, share or quiet period), for the registry, so that plan shows a
    change of them; empty when it declares nothing."""
    lines = []
    if expectations is not None:
        from featureplane.quality.expectations import rule_lines

        lines += rule_lines(expectations, source)
    if volume_guard is None:
        lines.append("volume guard off")
    elif volume_guard != DEFAULT_VOLUME_GUARD:
        lines.append(
            f"volume guard: at least {volume_guard.min_share:.0%} of the stored rows"
            + (
                f" or of the mean of {volume_guard.trailing} partitions"
                if volume_guard.trailing
                else ""
            )
        )
    if max_invalid_share != DEFAULT_INVALID_SHARE:
        lines.append(f"invalid rows dropped: at most {max_invalid_share:.2%}")
    if quiet_period != DEFAULT_QUIET_PERIOD:
        lines.append(f"quiet period: {quiet_period or 'none'}")
    return lines


def __getattr__(name: str) -> Any:
    if name in ("row_count", "row_check"):
        from featureplane.quality import expectations

        return getattr(expectations, name)
    raise AttributeError(f"module 'featureplane.quality' has no attribute {name!r}")
