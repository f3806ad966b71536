"""Feature services: named sets of features, the unit of serving, training-data retrieval,
access policy and monitoring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from featureplane._location import caller_location
from featureplane.errors import FeatureServiceError
from featureplane.naming import name_problem, owner_problem

if TYPE_CHECKING:
    from featureplane.feature_view import FeatureView


@dataclass(frozen=True)
class FeatureSelection:
    """Some (by default all) features of one feature view: `view[["clicks_1d", "ctr_1d"]]`."""

    view: FeatureView
    features: tuple[str, ...]

    @property
    def view_name(self) -> str:
        return self.view.name


def select(reference: object) -> FeatureSelection:
    """A FeatureSelection from a FeatureView (all its features) or a FeatureSelection."""
    if isinstance(reference, FeatureSelection):
        return reference
    features = getattr(reference, "feature_names", None)
    if features is None:
        raise TypeError(f"{reference!r} is not a feature view or a selection of one")
    return FeatureSelection(reference, tuple(features))


@dataclass(frozen=True)
class FeatureService:
    """`FeatureService("ctr", features=[user_stats, ad_stats[["ctr_1d"]]])`.

    `features` lists views (all their features) or selections; it holds selections once built.
    """

    name: str
    features: Sequence[FeatureView | FeatureSelection]
    description: str = ""
    owner: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    location: str = field(default_factory=caller_location, compare=False, repr=False)

    def __post_init__(self) -> None:
        problem = name_problem(self.name) or owner_problem(self.owner)
        selections: list[FeatureSelection] = []
        for reference in self.features:
            try:
                selections.append(select(reference))
            except TypeError as exc:
                problem = problem or str(exc)
        if not problem and not selections:
            problem = "needs at least one feature view or selection"
        seen = [s.view_name for s in selections]
        if not problem and len(set(seen)) != len(seen):
            problem = f"lists a feature view twice: {seen}"
        if problem:
            raise FeatureServiceError(str(self.name), self.location, problem)
        object.__setattr__(self, "features", tuple(selections))
        object.__setattr__(self, "tags", dict(self.tags))
