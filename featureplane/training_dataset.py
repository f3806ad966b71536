"""Training datasets: a spine joined point-in-time with a feature service, kept reproducible."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from featureplane._location import caller_location
from featureplane.errors import TrainingDatasetError
from featureplane.feature_service import FeatureService
from featureplane.feature_view import FeatureView, schedule_problem
from featureplane.naming import name_problem, owner_problem
from featureplane.source import BatchSource


@dataclass(frozen=True)
class TrainingDataset:
    """`TrainingDataset("ctr_training", spine=impression_labels, features=ctr)`.

    The spine is a source or a feature view (labels with entity keys and an event time); its
    timestamp column defaults to the spine's timestamp field. With a `schedule` (one day, one
    week, or hours dividing a day) it is rebuilt on it; without, on request. Each build writes a
    new version of a Delta table plus a manifest of every input version, so any version can be
    rebuilt exactly.
    """

    name: str
    spine: BatchSource | FeatureView | str
    features: FeatureService
    timestamp_column: str | None = None
    full_feature_names: bool = True
    description: str = ""
    owner: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    schedule: timedelta | None = None
    location: str = field(default_factory=caller_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        problem = name_problem(self.name) or owner_problem(self.owner)
        if not problem and not isinstance(self.spine, BatchSource | FeatureView | str):
            problem = f"spine {self.spine!r} is not a source, a feature view or the name of one"
        if not problem and not isinstance(self.features, FeatureService):
            problem = f"features must be a FeatureService, got {self.features!r}"
        if not problem and self.schedule is not None:
            problem = schedule_problem("schedule", self.schedule)
        if problem:
            raise TrainingDatasetError(str(self.name), self.location, problem)
        object.__setattr__(self, "tags", dict(self.tags))

    @property
    def spine_name(self) -> str:
        return self.spine if isinstance(self.spine, str) else self.spine.name

    @property
    def spine_timestamp(self) -> str:
        """The spine's event-time column."""
        if self.timestamp_column:
            return self.timestamp_column
        return self.spine.timestamp_field  # type: ignore[union-attr]

    @property
    def version(self) -> str:
        """Hash of what determines its rows: spine, time column, naming, features and versions."""
        spine = self.spine
        config = {
            "spine": [self.spine_name, spine.version if isinstance(spine, FeatureView) else None],
            "timestamp_column": self.spine_timestamp,
            "full_feature_names": self.full_feature_names,
            "features": [
                [s.view_name, s.view.version, list(s.features)] for s in self.features.features
            ],
        }
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
