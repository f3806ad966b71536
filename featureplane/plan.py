"""`featureplane plan`: what applying the repository would change, before anything changes.

`diff(applied, desired)` compares two registries (`featureplane.registry`; the applied one from
`featureplane.registry_store`) object by object and says, for each object added, changed or
removed, what it costs and whom it hurts:
- recompute: a feature view whose version changes must be recomputed over all its partitions
  (a training dataset whose version changes must be rebuilt);
- breaking: a feature removed or retyped that a service, training dataset or on-demand view
  still uses, or a service that stops serving a feature (its online clients lose it);
- online: the online rows to push (a new version has new keys) or to delete.
Registries are compared, not Python objects, so a plan needs neither Spark nor the applied
repository's code. A rename is a remove and an add; when both sides are otherwise the same
(same version for views), the plan says "renamed?".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from featureplane.durations import field_in_words, in_words

Action = Literal["add", "change", "remove"]

KINDS: tuple[tuple[str, str], ...] = (
    ("entity", "entities"),
    ("source", "sources"),
    ("feature_view", "feature_views"),
    ("on_demand_view", "on_demand_views"),
    ("feature_service", "feature_services"),
    ("training_dataset", "training_datasets"),
    ("access_policy", "access_policies"),
)
"""(kind, registry section), in dependency order: the order of a plan."""

SYMBOLS: dict[str, str] = {"add": "+", "change": "~", "remove": "-"}
VIEW_KINDS = ("feature_view", "on_demand_view")


@dataclass(frozen=True)
class Change:
    """One object's change; `recompute`, `online` and `breaking` are empty when none apply."""

    kind: str
    name: str
    action: Action
    details: tuple[str, ...] = ()
    recompute: str | None = None
    online: tuple[str, ...] = ()
    breaking: tuple[str, ...] = ()
    renamed: str | None = None

    def lines(self) -> list[str]:
        flag = "!" if self.breaking else " "
        renamed = f"   ({self.renamed})" if self.renamed else ""
        lines = [f"{flag} {SYMBOLS[self.action]} {self.kind} {self.name}{renamed}"]
        lines += [f"      {detail}" for detail in self.details]
        if self.recompute:
            lines.append(f"      recompute: {self.recompute}")
        lines += [f"      online: {effect}" for effect in self.online]
        lines += [f"    ! breaking: {reason}" for reason in self.breaking]
        return lines


@dataclass(frozen=True)
class Plan:
    """The changes that applying `desired` over applied version `applied_version` makes."""

    applied_version: int | None
    changes: tuple[Change, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def breaking(self) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.breaking)

    def counts(self) -> dict[str, int]:
        counts = {action: 0 for action in SYMBOLS}
        for change in self.changes:
            counts[change.action] += 1
        return {**counts, "breaking": len(self.breaking)}

    def summary(self) -> str:
        counts = self.counts()
        return (
            f"Plan: {counts['add']} to add, {counts['change']} to change, "
            f"{counts['remove']} to remove."
        )

    def change_list(self) -> list[str]:
        """One line per change (`+ feature_view user_stats`), as a registry version records."""
        return [f"{SYMBOLS[c.action]} {c.kind} {c.name}" for c in self.changes]

    def text(self) -> str:
        against = (
            "nothing applied yet"
            if self.applied_version is None
            else f"applied registry version {self.applied_version}"
        )
        if self.empty:
            return f"No changes. The repository matches the registry ({against}).\n"
        lines = [f"Changes to the registry ({against}):", ""]
        for change in self.changes:
            lines += change.lines()
        lines += ["", self.summary()]
        if self.breaking:
            lines.append(
                f"{len(self.breaking)} of them break consumers (marked !): "
                "apply refuses them without --allow-breaking."
            )
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, Any]:
        return {
            "applied_version": self.applied_version,
            "changes": [asdict(change) for change in self.changes],
            "summary": self.counts(),
        }


def _duration_text(seconds: float | None) -> str:
    return "none" if seconds is None else in_words(seconds)


def _show(value: object) -> str:
    return "none" if value is None else str(value)


def _feature_lines(old: list[dict], new: list[dict]) -> list[str]:
    before = {f["name"]: f for f in old}
    after = {f["name"]: f for f in new}
    lines = [f"+ feature {n} ({f['type']})" for n, f in after.items() if n not in before]
    lines += [f"- feature {n} ({f['type']})" for n, f in before.items() if n not in after]
    for name, feature in after.items():
        previous = before.get(name)
        if previous is None or previous == feature:
            continue
        if previous["type"] != feature["type"]:
            lines.append(f"~ feature {name}: {previous['type']} -> {feature['type']}")
        else:
            lines.append(f"~ feature {name}: description changed")
    return lines or ["features reordered"]


def _selected(selections: Iterable[Mapping[str, Any]]) -> list[str]:
    return [f"{s['view']}.{feature}" for s in selections for feature in s["features"]]


def _selection_lines(old: list[dict], new: list[dict]) -> list[str]:
    before, after = _selected(old), _selected(new)
    lines = [f"+ selects {name}" for name in after if name not in before]
    lines += [f"- selects {name}" for name in before if name not in after]
    return lines or ["selections reordered"]


def _details(kind: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two versions of one object, one short line per field."""
    lines: list[str] = []
    for key in sorted(old.keys() | new.keys(), key=lambda key: (key != "version", key)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if key == "features" and kind in VIEW_KINDS:
            lines += _feature_lines(before or [], after or [])
        elif key == "features" and kind == "feature_service":
            lines += _selection_lines(before or [], after or [])
        elif kind == "access_policy" and key in ("members", "read"):
            lines += [f"+ {key}: {name}" for name in after if name not in before]
            lines += [f"- {key}: {name}" for name in before if name not in after]
        elif key == "quality":
            lines += [f"+ quality: {line}" for line in after or [] if line not in (before or [])]
            lines += [f"- quality: {line}" for line in before or [] if line not in (after or [])]
        elif any(isinstance(v, dict | list) or "\n" in str(v) for v in (before, after)):
            lines.append(f"{key} changed")
        else:
            (name, before), (_, after) = field_in_words(key, before), field_in_words(key, after)
            lines.append(f"{name}: {_show(before)} -> {_show(after)}")
    return lines


def _recompute(kind: str, old: Mapping | None, new: Mapping | None) -> str | None:
    """The offline work a change needs: the partitions of a view, or a dataset rebuild."""
    if kind not in ("feature_view", "training_dataset") or new is None:
        return None
    if old is not None and old["version"] == new["version"]:
        return None
    if kind == "training_dataset":
        return f"rebuild the dataset (version {new['version']})"
    start = datetime.fromisoformat(new["feature_start_time"])
    return (
        f"every window from {start:%Y-%m-%d %H:%M} UTC to where its sources end, "
        f"{_duration_text(new['batch_schedule_seconds'])} each (version {new['version']})"
    )


def _online(old: Mapping | None, new: Mapping | None) -> tuple[str, ...]:
    """A feature view's online rows: pushed per (view, version), so a new version is new keys."""
    was = old is not None and old["online"]
    will = new is not None and new["online"]
    effects = []
    if will and (not was or old["version"] != new["version"]):
        effects.append(f"push the latest values of version {new['version']} (new keys)")
    if was and (not will or old["version"] != new["version"]):
        effects.append(f"delete the rows of version {old['version']} once the change serves")
    if was and will and old["ttl_seconds"] != new["ttl_seconds"]:
        effects.append(
            f"rows pushed from now on expire after {_duration_text(new['ttl_seconds'])} "
            f"(was {_duration_text(old['ttl_seconds'])}); stored rows keep theirs until pushed"
        )
    return tuple(effects)


Consumers = dict[tuple[str, str], list[tuple[str, str]]]


def _consumers(registry: Mapping[str, Any]) -> Consumers:
    """(view, feature) -> the (kind, name) of every service, dataset and on-demand view using it."""
    uses: Consumers = defaultdict(list)
    services = {s["name"]: s for s in registry.get("feature_services", [])}
    for service in services.values():
        for selection in service["features"]:
            for feature in selection["features"]:
                uses[selection["view"], feature].append(("feature_service", service["name"]))
    for dataset in registry.get("training_datasets", []):
        for selection in services[dataset["service"]]["features"]:
            for feature in selection["features"]:
                uses[selection["view"], feature].append(("training_dataset", dataset["name"]))
    for view in registry.get("on_demand_views", []):
        for source in view["sources"]:
            for feature in source.get("features", []):
                uses[source["view"], feature].append(("on_demand_view", view["name"]))
    return uses


def _used_by(consumers: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{kind.replace('_', ' ')} {name}" for kind, name in consumers)


def _view_breaks(
    name: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any] | None,
    applied_uses: Consumers,
    desired_uses: Consumers,
    exists: set[tuple[str, str]],
) -> list[str]:
    """Removed features still used by a consumer that stays, retyped features still used."""
    after = {f["name"]: f["type"] for f in (new or {}).get("features", [])}
    reasons = []
    for feature in old["features"]:
        feature_name, dtype = feature["name"], feature["type"]
        if feature_name not in after:
            users = [c for c in applied_uses.get((name, feature_name), []) if c in exists]
            problem = "removed"
        elif after[feature_name] != dtype:
            users = desired_uses.get((name, feature_name), [])
            problem = f"retyped {dtype} -> {after[feature_name]}"
        else:
            continue
        if users:
            reasons.append(f"feature {feature_name} {problem}, used by {_used_by(users)}")
    return reasons


def _service_breaks(old: Mapping[str, Any], new: Mapping[str, Any] | None) -> list[str]:
    """Online clients of a service lose what it stops serving."""
    if new is None:
        return [f"online clients of feature service {old['name']} lose the service"]
    dropped = [
        name for name in _selected(old["features"]) if name not in _selected(new["features"])
    ]
    if not dropped:
        return []
    return [f"online clients of feature service {old['name']} lose {', '.join(dropped)}"]


def _identity(kind: str, obj: Mapping[str, Any]) -> object:
    """What stays equal when only the name changes: a view's version and typed features."""
    if kind in VIEW_KINDS:
        return (obj["version"], [(f["name"], f["type"]) for f in obj["features"]])
    return sorted((k, repr(v)) for k, v in obj.items() if k != "name")


def _renames(kind: str, removed: Mapping[str, Mapping], added: Mapping[str, Mapping]):
    """{old name: new name} for removed and added objects identical but for their name."""
    pairs: dict[str, str] = {}
    for old_name, old in removed.items():
        for new_name, new in added.items():
            if new_name not in pairs.values() and _identity(kind, old) == _identity(kind, new):
                pairs[old_name] = new_name
                break
    return pairs


def _store_change(applied: Mapping[str, Any], desired: Mapping[str, Any]) -> list[Change]:
    """The online store's settings: none to compare before the first apply."""
    before, after = applied.get("online_store"), desired["online_store"]
    if before is None or before == after:
        return []
    return [
        Change(
            "online_store",
            str(after.get("type")),
            "change",
            tuple(_details("online_store", before, after)),
            online=("serving reads another store: push every online view's windows into it",),
        )
    ]


def diff(
    applied: Mapping[str, Any] | None,
    desired: Mapping[str, Any],
    applied_version: int | None = None,
) -> Plan:
    """The plan that turns the `applied` registry (None before the first apply) into `desired`."""
    applied = applied or {}
    applied_uses, desired_uses = _consumers(applied), _consumers(desired)
    exists = {(kind, o["name"]) for kind, section in KINDS for o in desired.get(section, [])}
    changes: list[Change] = []
    for kind, section in KINDS:
        before = {o["name"]: o for o in applied.get(section, [])}
        after = {o["name"]: o for o in desired.get(section, [])}
        removed = {n: o for n, o in before.items() if n not in after}
        added = {n: o for n, o in after.items() if n not in before}
        renames = _renames(kind, removed, added)
        renamed_from = {new: old for old, new in renames.items()}
        for name in sorted(before.keys() | after.keys()):
            old, new = before.get(name), after.get(name)
            if old == new:
                continue
            breaking: list[str] = []
            if kind in VIEW_KINDS and old is not None:
                breaking = _view_breaks(name, old, new, applied_uses, desired_uses, exists)
            elif kind == "feature_service" and old is not None:
                breaking = _service_breaks(old, new)
            renamed = None
            if name in renames:
                renamed = f"renamed to {renames[name]}?"
            elif name in renamed_from:
                renamed = f"renamed from {renamed_from[name]}?"
            changes.append(
                Change(
                    kind,
                    name,
                    "add" if old is None else "remove" if new is None else "change",
                    tuple(_details(kind, old, new)) if old and new else (),
                    _recompute(kind, old, new),
                    _online(old, new) if kind == "feature_view" else (),
                    tuple(breaking),
                    renamed,
                )
            )
    return Plan(applied_version, (*changes, *_store_change(applied, desired)))
