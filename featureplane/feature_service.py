"""Feature services: named sets of features, the unit of serving, training-data retrieval,
access policy and monitoring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from featureplane._location import caller_location
from featureplane.errors import DefinitionError, FeatureServiceError
from featureplane.naming import name_problem, owner_problem

if TYPE_CHECKING:
    from featureplane.feature_view import FeatureView
    from featureplane.on_demand import OnDemandFeatureView


@dataclass(frozen=True)
class FeatureSelection:
    """Some (by default all) features of one feature view or on-demand feature view:
    `view[["clicks_1d", "ctr_1d"]]`."""

    view: FeatureView | OnDemandFeatureView
    features: tuple[str, ...]

    @property
    def view_name(self) -> str:
        return self.view.name


def select_features(
    view: FeatureView | OnDemandFeatureView,
    features: Sequence[str] | str,
    error: type[DefinitionError],
) -> FeatureSelection:
    """`view[features]`, failing with the view's own error type when a feature is unknown."""
    if isinstance(features, str):
        features = [features]
    unknown = [name for name in features if name not in view.feature_names]
    if unknown or not features:
        raise error(
            view.name,
            view.location,
            f"has no features {unknown} (features: {', '.join(view.feature_names)})",
        )
    return FeatureSelection(view, tuple(features))


def select(reference: object) -> FeatureSelection:
    """A FeatureSelection from a (on-demand) feature view (all its features) or a selection."""
    if isinstance(reference, FeatureSelection):
        return reference
    features = getattr(reference, "feature_names", None)
    if features is None:
        raise TypeError(f"{reference!r} is not a feature view or a selection of one")
    return FeatureSelection(reference, tuple(features))


@dataclass(frozen=True)
class FeatureService:
    """`FeatureService("ctr", features=[user_stats, ad_stats[["ctr_1d"]]])`.

    `features` lists feature views and on-demand feature views (all their features) or
    selections of them; it holds selections once built.
    """

    name: str
    features: Sequence[FeatureView | OnDemandFeatureView | FeatureSelection]
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
