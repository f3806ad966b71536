"""Which work makes an applied registry version servable, and the switch to serving it.

Dagster-free: `featureplane apply` uses it for a version with nothing to recompute, the
rollout sensor (`sensors.rollout`) for the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from featureplane.plan import diff
from featureplane.registry import write_registry
from featureplane.registry_store import AppliedRegistry, RegistryStore, is_store_location
from featureplane.repository import Repository
from featureplane.settings import registry_location


def stale_views(repository: Repository, registry: dict) -> list[str]:
    """The views whose version in this code differs from the registry's (or that only one of
    them has): work for the registry cannot run on this code."""
    applied = {view["name"]: view["version"] for view in registry["feature_views"]}
    loaded = {name: view.version for name, view in repository.feature_views.items()}
    return sorted(
        name for name in applied.keys() | loaded.keys() if applied.get(name) != loaded.get(name)
    )


@dataclass(frozen=True)
class Work:
    """What a version needs before it serves: views to recompute (and push), views to push
    again into another online store, training datasets to rebuild."""

    recompute: tuple[str, ...] = ()
    push: tuple[str, ...] = ()
    rebuild: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.recompute or self.push or self.rebuild)

    def names(self) -> list[str]:
        return [*self.recompute, *self.push, *self.rebuild]


def work(serving: AppliedRegistry | None, latest: AppliedRegistry) -> Work:
    """What `latest` needs to serve instead of `serving` (everything before a first version)."""
    plan = diff(serving.registry if serving else None, latest.registry)
    changed = [c for c in plan.changes if c.recompute]
    recompute = tuple(c.name for c in changed if c.kind == "feature_view")
    push = ()
    if any(c.kind == "online_store" for c in plan.changes):
        online = (v["name"] for v in latest.registry["feature_views"] if v["online"])
        push = tuple(name for name in online if name not in recompute)
    rebuild = tuple(c.name for c in changed if c.kind == "training_dataset")
    return Work(recompute, push, rebuild)


def replaced(serving: AppliedRegistry | None, latest: AppliedRegistry) -> list[tuple[str, str]]:
    """The (view, version) online rows that `serving` holds and `latest` no longer reads."""
    if serving is None:
        return []
    kept = {(v["name"], v["version"]) for v in latest.registry["feature_views"] if v["online"]}
    held = {(v["name"], v["version"]) for v in serving.registry["feature_views"] if v["online"]}
    return sorted(held - kept)


def cut_over(store: RegistryStore, version: int, by: str | None = None) -> None:
    """Serve `version`: move the store's pointer, and rewrite the serving registry file."""
    store.cut_over(version, by)
    write_serving_file(store)


def write_serving_file(store: RegistryStore) -> None:
    """When servers load a registry file (`$FEATUREPLANE_REGISTRY` names no store), write it:
    the serving version with the principals in force, which a file carries itself."""
    location = registry_location()
    serving = store.serving()
    if is_store_location(location) or serving is None:
        return
    access = store.access()
    extra = {} if access is None else {"access": access.principals.to_json()}
    write_registry({**serving.registry, **extra}, location)


def rolled_out(store: RegistryStore, latest: AppliedRegistry | None) -> AppliedRegistry | None:
    """The version last cut over to, whose data is in place, given the store's `latest`. A
    store that never cut over serves its latest version: a first version still to roll out
    (None: everything is work), or a store older than cut-overs, rolled out when applied."""
    in_force = store.cut_over_in_force()
    if in_force is not None:
        return (
            latest if latest and latest.version == in_force.serving else store.get(in_force.serving)
        )
    return latest if latest is not None and latest.meta["parent"] is not None else None
