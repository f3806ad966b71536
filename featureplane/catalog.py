"""`featureplane list|describe|history`: the applied registry as a catalog, and what serves.

Everything here reads registries (`featureplane.registry`), the applied ones of
`featureplane.registry_store`, so it needs neither Spark nor the repository's code; the CLI adds
what only they know (a definition's file and line, the latest materializations in Dagster).
Names are unique across kinds (the repository refuses a reused name), so `describe` and
`history` take a bare name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from featureplane.durations import field_in_words, in_words
from featureplane.errors import RegistryCorrupt, RegistryUntrusted
from featureplane.plan import KINDS, diff
from featureplane.registry_store import CutOver, RegistryStore

SECTIONS = dict(KINDS)
"""Kind -> registry section, e.g. `feature_view` -> `feature_views`."""

Ref = tuple[str, str]
"""(kind, name) of a registry object."""


def _one_line(text: object) -> str:
    """Multi-line descriptions folded onto one line, for tables of objects."""
    return " ".join(str(text).split())


def _objects(registry: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind, section in KINDS:
        for obj in registry.get(section, []):
            yield kind, obj


def find(registry: Mapping[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """The kind and registry entry of `name`; KeyError naming what exists."""
    for kind, obj in _objects(registry):
        if obj["name"] == name:
            return kind, obj
    known = ", ".join(sorted(obj["name"] for _, obj in _objects(registry)))
    raise KeyError(f"no object named {name!r} in the applied registry (it has: {known})")


def edges(registry: Mapping[str, Any]) -> list[tuple[Ref, Ref]]:
    """(upstream, downstream) pairs: what each object reads directly."""
    kinds = {obj["name"]: kind for kind, obj in _objects(registry)}
    pairs: list[tuple[Ref, Ref]] = []
    for kind, obj in _objects(registry):
        me = (kind, obj["name"])
        if kind == "feature_view":
            reads = [*obj["entities"], *obj["sources"]]
        elif kind == "on_demand_view":
            reads = [source["view"] for source in obj["sources"] if "view" in source]
        elif kind == "feature_service":
            reads = [selection["view"] for selection in obj["features"]]
        elif kind == "training_dataset":
            reads = [obj["spine"], obj["service"]]
        elif kind == "access_policy":
            reads = [service for service in obj["read"] if service in kinds]
        else:
            reads = []
        pairs += [((kinds[name], name), me) for name in dict.fromkeys(reads)]
    return pairs


def list_lines(registry: Mapping[str, Any], kind: str | None = None) -> list[str]:
    """One line per object (of one kind, or all): kind, name, version, owner, description."""
    rows = [
        (k, obj["name"], obj.get("version", ""), obj.get("owner") or "", obj["description"])
        for k, obj in _objects(registry)
        if kind is None or k == kind
    ]
    if not rows:
        return []
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    return [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False))
        + f"  {_one_line(row[4])}".rstrip()
        for row in rows
    ]


def _schema_lines(kind: str, obj: Mapping[str, Any]) -> list[str]:
    """Columns with types and descriptions, or what the object selects."""
    if kind == "feature_service":
        return [f"{s['view']}: {', '.join(s['features'])}" for s in obj["features"]]
    columns = [(key["name"], key["type"] or "?", "join key") for key in obj.get("join_keys", [])]
    if kind == "on_demand_view" and obj["request"]:
        columns += [
            (f["name"], f["type"], f"request {obj['request']['name']}: {f['description']}")
            for f in obj["request"]["fields"]
        ]
    columns += [(f["name"], f["type"], f["description"]) for f in obj.get("features", [])]
    columns += [
        (
            a["name"],
            "aggregate",
            f"{a['function']} of {a['column']} over {in_words(a['time_window_seconds'])}",
        )
        for a in obj.get("aggregations", [])
    ]
    if not columns:
        return []
    width = max(len(name) for name, _, _ in columns)
    return [f"{name:<{width}}  {dtype:<10}  {text}".rstrip() for name, dtype, text in columns]


def _related(pairs: list[tuple[Ref, Ref]], me: Ref, upstream: bool) -> str:
    found = [up if upstream else down for up, down in pairs if (down if upstream else up) == me]
    return ", ".join(f"{kind} {name}" for kind, name in found) or "none"


@dataclass(frozen=True)
class Materialization:
    """The latest materialization of one asset: its key and metadata values by name."""

    asset: str
    values: Mapping[str, Any]


def describe_lines(
    registry: Mapping[str, Any],
    name: str,
    definition: str | None = None,
    materializations: Sequence[Materialization] = (),
) -> list[str]:
    """`name`'s definition, fields, schema, upstream and downstream, latest materializations."""
    kind, obj = find(registry, name)
    lines = [f"{kind} {name}"]
    scalars = dict(
        field_in_words(k, v) for k, v in sorted(obj.items()) if not isinstance(v, list | dict)
    )
    scalars.pop("name")
    scalars.pop("function_source", None)
    if obj.get("tags"):
        scalars["tags"] = ", ".join(f"{k}={v}" for k, v in sorted(obj["tags"].items()))
    if definition:
        scalars["definition"] = definition
    width = max(len(key) for key in [*scalars, "downstream"])
    lines += [f"  {key:<{width}}  {_one_line(value)}" for key, value in scalars.items()]
    pairs = edges(registry)
    lines.append(f"  {'upstream':<{width}}  {_related(pairs, (kind, name), upstream=True)}")
    lines.append(f"  {'downstream':<{width}}  {_related(pairs, (kind, name), upstream=False)}")
    schema = _schema_lines(kind, obj)
    if schema:
        lines += ["  schema:", *(f"    {line}" for line in schema)]
    for materialization in materializations:
        lines.append(f"  latest materialization of {materialization.asset}:")
        for key, value in materialization.values.items():
            if isinstance(value, list):
                lines.append(f"    {key}:")
                lines += [f"      {row}" for row in value]
            else:
                lines.append(f"    {key}: {value}")
    return lines


def cut_over_line(cut_over: CutOver) -> str:
    """When a version began to serve, by whom, and in place of which."""
    if cut_over.previous is None:
        return f"serving since {cut_over.at} (by {cut_over.by})"
    return f"cut over from version {cut_over.previous} at {cut_over.at} (by {cut_over.by})"


def serving_line(store: RegistryStore) -> str:
    """Which version serves, and since when if a cut-over made it: servers load it, not
    necessarily the latest. RegistryCorrupt for a corrupt pointer."""
    version = store.serving_version()
    moves = [cut_over for cut_over in store.cut_overs() if cut_over.serving == version]
    if not moves:
        return f"serving: version {version}, the latest (no cut-over yet)"
    cut_over = moves[-1]
    source = "" if cut_over.previous is None else f", cut over from version {cut_over.previous}"
    return f"serving: version {version} since {cut_over.at}{source} (by {cut_over.by})"


@dataclass(frozen=True)
class HistoryEntry:
    """One applied version (that changed `name`, when asked about one), what it changed and
    the cut-overs that made it serve, or one that cannot be read or is not trusted
    (`corrupt`: what it changed is unknown)."""

    version: int
    meta: Mapping[str, Any] = field(default_factory=dict)
    changes: tuple[str, ...] = ()
    corrupt: RegistryCorrupt | RegistryUntrusted | None = None
    cut_overs: tuple[CutOver, ...] = ()

    def lines(self) -> list[str]:
        served = [f"  {cut_over_line(cut_over)}" for cut_over in self.cut_overs]
        if self.corrupt is not None:
            state = "untrusted" if isinstance(self.corrupt, RegistryUntrusted) else "unreadable"
            return [f"version {self.version}  {state}: {self.corrupt.path}", *served]
        meta = self.meta
        head = f"version {meta['version']}  {meta['applied_at']}  by {meta['applied_by']}"
        return [head, *(f"  {change}" for change in self.changes), *served]


def history(store: RegistryStore, name: str | None = None) -> list[HistoryEntry]:
    """Every applied version, oldest first, or those that changed `name`, with the plan lines
    of the change (its details when asked about one object) and its cut-overs. Unreadable
    or untrusted versions are always listed; a version after one is compared with the last
    readable version before it. RegistryCorrupt for a corrupt serving pointer."""
    entries = []
    parent = None
    moves = store.cut_overs()
    for version in store.versions():
        cut_overs = tuple(cut_over for cut_over in moves if cut_over.serving == version)
        try:
            applied = store.get(version)
        except (RegistryCorrupt, RegistryUntrusted) as corrupt:
            entries.append(HistoryEntry(version, corrupt=corrupt, cut_overs=cut_overs))
            continue
        if name is None:
            changes = tuple(applied.meta["changes"])
        else:
            plan = diff(parent.registry if parent else None, applied.registry)
            changes = tuple(
                line for change in plan.changes if change.name == name for line in change.lines()
            )
            if changes and parent and parent.version != applied.meta["parent"]:
                note = f"(compared with version {parent.version}, the last readable one)"
                changes = (note, *changes)
        if changes:
            entries.append(HistoryEntry(version, applied.meta, changes, cut_overs=cut_overs))
        parent = applied
    return entries
