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
    from featureplane.on_demand import OnDemandFeatureView


@dataclass(frozen=True)
class FeatureSelection:
    """Some (by default all) features of one feature view or on-demand feature view:
    `view[["clicks_1d", "ctr_1d"]]`.

    Whoever holds a selection checks it (`problem`): a feature service, an on-demand view, a
    retrieval. So a selection of a feature the view lacks is reported with the definition
    that wrote it (the service's file and line), not the view's.
    """

    view: FeatureView | OnDemandFeatureView
    features: tuple[str, ...]

    @property
    def view_name(self) -> str:
        return self.view.name

    def problem(self) -> str | None:
        """Why the view cannot serve this selection, or None."""
        names = self.view.feature_names
        unknown = [name for name in self.features if name not in names]
        if unknown:
            return (
                f"selects {unknown} of {self.view_name!r}, which has the features "
                f"{', '.join(names)}"
            )
        return None if self.features else f"selects no features of {self.view_name!r}"


def served_name(view_name: str, feature: str) -> str:
    """A feature's name where views meet, in served vectors and training data: `view__feature`."""
    return f"{view_name}__{feature}"


def select_features(
    view: FeatureView | OnDemandFeatureView, features: Sequence[str] | str
) -> FeatureSelection:
    """`view[features]`: one feature's name, or a list of them."""
    return FeatureSelection(view, (features,) if isinstance(features, str) else tuple(features))


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
        problem = problem or next(filter(None, (s.problem() for s in selections)), None)
        if not problem and not selections:
            problem = "needs at least one feature view or selection"
        seen = [s.view_name for s in selections]
        if not problem and len(set(seen)) != len(seen):
            problem = f"lists a feature view twice: {seen}"
        if problem:
            raise FeatureServiceError(str(self.name), self.location, problem)
        object.__setattr__(self, "features", tuple(selections))
        object.__setattr__(self, "tags", dict(self.tags))
