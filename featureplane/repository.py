"""The feature repository: every definition found in a package such as `feature_assets/`.

Loading imports each module of the package (except `definitions`, which turns the repository into
Dagster objects), collects the entities, sources and feature views it defines (and those they
reference), and checks the whole: names unique across kinds, every source named by a view defined.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, replace
from types import ModuleType

from featureplane.entity import Entity
from featureplane.errors import FeatureViewError, RepositoryError
from featureplane.feature_view import FeatureView
from featureplane.source import BatchSource

DEFINITION_TYPES = (Entity, BatchSource, FeatureView)
SKIPPED_MODULES = frozenset({"definitions"})


@dataclass(frozen=True)
class Repository:
    """The validated definitions of one feature repository, by name."""

    entities: dict[str, Entity]
    sources: dict[str, BatchSource]
    feature_views: dict[str, FeatureView]

    @classmethod
    def from_objects(cls, objects: list[object]) -> Repository:
        """Build and check a repository from definition objects (in definition order)."""
        by_kind: dict[type, dict[str, object]] = {kind: {} for kind in DEFINITION_TYPES}
        owners: dict[str, object] = {}
        referenced = [
            ref
            for view in objects
            if isinstance(view, FeatureView)
            for ref in (*view.sources, *view.entities)
            if not isinstance(ref, str)
        ]
        for obj in [*objects, *referenced]:
            if not isinstance(obj, DEFINITION_TYPES):
                continue
            named = by_kind[type(obj)]
            if named.get(obj.name) is obj:
                continue
            other = owners.get(obj.name)
            if other is not None:
                raise RepositoryError(
                    obj.name,
                    obj.location,
                    f"name already used by the {type(other).__name__} at {other.location}",
                )
            owners[obj.name] = obj
            named[obj.name] = obj
        sources: dict[str, BatchSource] = by_kind[BatchSource]  # type: ignore[assignment]
        views = {
            name: _resolve(view, sources)
            for name, view in by_kind[FeatureView].items()  # type: ignore[union-attr]
        }
        return cls(entities=by_kind[Entity], sources=sources, feature_views=views)  # type: ignore[arg-type]

    @classmethod
    def load(cls, package: str | ModuleType = "feature_assets") -> Repository:
        """Import every module of `package` and collect its definitions."""
        root = importlib.import_module(package) if isinstance(package, str) else package
        modules = [root]
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{root.__name__}."):
            if info.name.rsplit(".", 1)[-1] not in SKIPPED_MODULES:
                modules.append(importlib.import_module(info.name))
        return cls.from_objects([obj for module in modules for obj in vars(module).values()])

    def feature_view(self, name: str) -> FeatureView:
        try:
            return self.feature_views[name]
        except KeyError:
            known = ", ".join(sorted(self.feature_views)) or "none"
            raise KeyError(f"no feature view named {name!r} (known: {known})") from None

    def source(self, name: str) -> BatchSource:
        return self.sources[name]


def _resolve(view: FeatureView, sources: dict[str, BatchSource]) -> FeatureView:
    """The view with source names replaced by the repository's sources."""
    resolved = []
    for ref in view.sources:
        name = ref if isinstance(ref, str) else ref.name
        source = sources.get(name)
        if source is None:
            known = ", ".join(sorted(sources)) or "none"
            raise FeatureViewError(
                view.name, view.location, f"source {name!r} does not exist (known: {known})"
            )
        resolved.append(source)
    return replace(view, sources=tuple(resolved))
