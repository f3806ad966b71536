"""Data quality: expectations as code, default rules, the volume guard and source completeness.

Every materialized window is checked before anything downstream sees it: the quality rules of
its view (pandera expectations, `expectations`, plus defaults every view gets, `rules`) are
counted on Spark (`evaluation`) and reported as the view's blocking `quality` asset check; the
volume guard (`volume`) and the sources' completeness (`completeness`) stop a window from being
written at all. Importing this package loads neither Spark nor pandera: `row_count`,
`row_check` and `VolumeGuard` are imported on first use.
"""

from typing import Any

from featureplane.quality.volume import VolumeGuard

__all__ = ["VolumeGuard", "row_check", "row_count"]


def __getattr__(name: str) -> Any:
    if name in ("row_count", "row_check"):
        from featureplane.quality import expectations

        return getattr(expectations, name)
    raise AttributeError(f"module 'featureplane.quality' has no attribute {name!r}")
