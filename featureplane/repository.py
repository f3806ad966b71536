"""The feature repository: every definition found in a package such as `feature_assets/`.

Loading imports each module of the package (except `definitions`, which turns the repository into
Dagster objects), collects the definitions it holds (and those they reference), and checks the
whole: names unique across kinds (a feature view and an on-demand feature view never share one),
and every name a definition refers to defined. References are then resolved, so each definition
(services and on-demand views included) points at the repository's own objects.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import ModuleType

from featureplane._location import relative_path
from featureplane.access.policy import ALL_SERVICES, AccessPolicy
from featureplane.entity import Entity
from featureplane.errors import (
    AccessPolicyError,
    DefinitionError,
    FeatureServiceError,
    FeatureViewError,
    OnDemandFeatureViewError,
    RepositoryError,
    TrainingDatasetError,
)
from featureplane.feature_service import FeatureSelection, FeatureService
from featureplane.feature_view import FeatureView
from featureplane.on_demand import OnDemandFeatureView, RequestSource, stored_views
from featureplane.source import BatchSource
from featureplane.training_dataset import TrainingDataset
from featureplane.types import DType

DEFINITION_TYPES = (
    Entity,
    BatchSource,
    FeatureView,
    OnDemandFeatureView,
    FeatureService,
    TrainingDataset,
    AccessPolicy,
)
SKIPPED_MODULES = frozenset({"definitions"})


def _references(obj: object) -> list[object]:
    """Definitions an object points at, so that unregistered ones are collected too."""
    if isinstance(obj, FeatureView):
        return [*obj.sources, *obj.entities]
    if isinstance(obj, OnDemandFeatureView):
        return [selection.view for selection in obj.feature_sources]
    if isinstance(obj, FeatureService):
        return [selection.view for selection in obj.features]
    if isinstance(obj, TrainingDataset):
        return [obj.spine, obj.features]
    return []


def _known(names) -> str:
    return ", ".join(sorted(names)) or "none"


@dataclass(frozen=True)
class Repository:
    """The validated definitions of one feature repository, by name."""

    entities: dict[str, Entity]
    sources: dict[str, BatchSource]
    feature_views: dict[str, FeatureView]
    on_demand_views: dict[str, OnDemandFeatureView]
    feature_services: dict[str, FeatureService]
    training_datasets: dict[str, TrainingDataset]
    access_policies: dict[str, AccessPolicy] = field(default_factory=dict)

    @classmethod
    def from_objects(cls, objects: list[object]) -> Repository:
        """Build and check a repository from definition objects (in definition order)."""
        by_kind: dict[type, dict[str, object]] = {kind: {} for kind in DEFINITION_TYPES}
        owners: dict[str, object] = {}
        pending = [obj for obj in objects if isinstance(obj, DEFINITION_TYPES)]
        while pending:
            obj = pending.pop(0)
            if not isinstance(obj, DEFINITION_TYPES) or by_kind[type(obj)].get(obj.name) is obj:
                continue
            other = owners.get(obj.name)
            if other is not None:
                raise RepositoryError(
                    obj.name,
                    obj.location,
                    f"name already used by the {type(other).__name__} at {other.location}",
                )
            owners[obj.name] = obj
            by_kind[type(obj)][obj.name] = obj
            pending.extend(_references(obj))
        sources: dict[str, BatchSource] = by_kind[BatchSource]  # type: ignore[assignment]
        views = {name: _resolve_view(view, sources) for name, view in by_kind[FeatureView].items()}
        on_demand = {
            name: _resolve_on_demand(view, views)
            for name, view in by_kind[OnDemandFeatureView].items()
        }
        services = {
            name: _resolve_service(service, {**views, **on_demand})
            for name, service in by_kind[FeatureService].items()
        }
        datasets = {
            name: _resolve_dataset(dataset, sources, views, services)
            for name, dataset in by_kind[TrainingDataset].items()
        }
        policies: dict[str, AccessPolicy] = by_kind[AccessPolicy]  # type: ignore[assignment]
        for policy in policies.values():
            _check_policy(policy, services)
        return cls(by_kind[Entity], sources, views, on_demand, services, datasets, policies)  # type: ignore[arg-type]

    @classmethod
    def load(cls, package: str | ModuleType = "feature_assets") -> Repository:
        """Import every module of `package` and collect its definitions.

        A module that fails to import (a SyntaxError, NameError, ImportError, any exception
        but a definition's own error) raises RepositoryError with the file and line in the
        repository where it failed; the original exception is its cause.
        """
        root = _imported(package, None) if isinstance(package, str) else package
        modules = [root]
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{root.__name__}."):
            if info.name.rsplit(".", 1)[-1] not in SKIPPED_MODULES:
                modules.append(_imported(info.name, root.__path__))
        return cls.from_objects([obj for module in modules for obj in vars(module).values()])

    def feature_view(self, name: str) -> FeatureView:
        try:
            return self.feature_views[name]
        except KeyError:
            known = _known(self.feature_views)
            raise KeyError(f"no feature view named {name!r} (known: {known})") from None


def _imported(name: str, folders: Iterable[str] | None) -> ModuleType:
    """The module `name`, or RepositoryError naming the line in `folders` (the repository's;
    None for the package itself, found then) where importing it failed."""
    try:
        return importlib.import_module(name)
    except DefinitionError:
        raise
    except Exception as error:
        where = _failed_at(error, _package_folders(name) if folders is None else folders)
        raise RepositoryError(None, where, _one_line(error)) from error


def _package_folders(name: str) -> list[str]:
    """The folders of the package `name`, when Python can find it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)
    return [os.path.dirname(spec.origin)] if spec.origin else []


def _failed_at(error: Exception, folders: Iterable[str]) -> str | None:
    """`file:line` of a SyntaxError, else of the innermost frame inside `folders`."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{relative_path(error.filename)}:{error.lineno}"
    roots = [os.path.join(os.path.abspath(folder), "") for folder in folders]
    inside = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if any(os.path.abspath(frame.filename).startswith(root) for root in roots)
    ]
    return f"{relative_path(inside[-1].filename)}:{inside[-1].lineno}" if inside else None


def _one_line(error: Exception) -> str:
    message = error.msg if isinstance(error, SyntaxError) else str(error)
    return f"{type(error).__name__}: {' '.join(message.split())}"


def _resolve_view(view: FeatureView, sources: dict[str, BatchSource]) -> FeatureView:
    """The view with source names replaced by the repository's sources."""
    resolved = []
    for ref in view.sources:
        name = ref if isinstance(ref, str) else ref.name
        source = sources.get(name)
        if source is None:
            raise FeatureViewError(
                view.name,
                view.location,
                f"source {name!r} does not exist (known: {_known(sources)})",
            )
        resolved.append(source)
    return replace(view, sources=tuple(resolved))


def _resolve_selection(
    selection: FeatureSelection,
    views: Mapping[str, FeatureView | OnDemandFeatureView],
    owner: FeatureService | OnDemandFeatureView,
) -> FeatureSelection:
    """The selection pointing at the repository's (resolved) view, or an error of its owner."""
    view = views.get(selection.view_name)
    if view is None:
        error = (
            FeatureServiceError if isinstance(owner, FeatureService) else OnDemandFeatureViewError
        )
        raise error(
            owner.name,
            owner.location,
            f"feature view {selection.view_name!r} does not exist (known: {_known(views)})",
        )
    return FeatureSelection(view, selection.features)


def _resolve_on_demand(
    view: OnDemandFeatureView, views: dict[str, FeatureView]
) -> OnDemandFeatureView:
    """The on-demand view with each feature source pointing at the repository's view."""
    sources = tuple(
        s if isinstance(s, RequestSource) else _resolve_selection(s, views, view)
        for s in view.sources
    )
    return replace(view, sources=sources)


def _resolve_service(
    service: FeatureService, views: dict[str, FeatureView | OnDemandFeatureView]
) -> FeatureService:
    """The service with each selection pointing at the repository's (resolved) view."""
    selections = tuple(_resolve_selection(s, views, service) for s in service.features)
    problem = _typing_problem(selections)
    if problem:
        raise FeatureServiceError(service.name, service.location, problem)
    return replace(service, features=selections)


def _typing_problem(selections: tuple[FeatureSelection, ...]) -> str | None:
    """A join key or request field that two views of a service type differently: a request
    to the service carries one value for it, checked against one type."""
    keys = [
        (key, dtype, view.name)
        for view in stored_views(selections)
        for key, dtype in view.join_key_types.items()
        if dtype is not None
    ]
    fields = [
        (field.name, field.dtype, selection.view_name)
        for selection in selections
        if isinstance(selection.view, OnDemandFeatureView)
        for source in selection.view.sources
        if isinstance(source, RequestSource)
        for field in source.schema
    ]
    for what, typed in (("join key", keys), ("request field", fields)):
        first: dict[str, tuple[DType, str]] = {}
        for name, dtype, view in typed:
            dtype_before, view_before = first.setdefault(name, (dtype, view))
            if dtype_before != dtype:
                return (
                    f"{what} {name!r} is {dtype_before.name} in {view_before!r} but "
                    f"{dtype.name} in {view!r}: a request carries one value for it"
                )
    return None


def _resolve_dataset(
    dataset: TrainingDataset,
    sources: dict[str, BatchSource],
    views: dict[str, FeatureView],
    services: dict[str, FeatureService],
) -> TrainingDataset:
    """The dataset with its spine and service resolved to the repository's objects."""
    spine = sources.get(dataset.spine_name) or views.get(dataset.spine_name)
    if spine is None:
        raise TrainingDatasetError(
            dataset.name,
            dataset.location,
            f"spine {dataset.spine_name!r} is neither a source nor a feature view "
            f"(known: {_known([*sources, *views])})",
        )
    return replace(dataset, spine=spine, features=services[dataset.features.name])


def _check_policy(policy: AccessPolicy, services: Mapping[str, FeatureService]) -> None:
    """A policy reads services of the repository only."""
    unknown = [name for name in policy.read if name != ALL_SERVICES and name not in services]
    if unknown:
        raise AccessPolicyError(
            policy.name,
            policy.location,
            f"reads {unknown}, which are no feature services (known: {_known(services)})",
        )
