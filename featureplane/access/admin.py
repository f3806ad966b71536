"""Managing access from the command line (`featureplane access …`): the principals and keys
of a registry store, and who may change them.

Applying and changing access are one permission: once a policy of the serving registry grants
`apply=True`, `featureplane apply` and `featureplane access` act only for a member of such a
policy, identified by `$FEATUREPLANE_API_KEY`, and record that principal as who made the
change. Before any policy grants it (a new project), anyone who can write the store may, as
their operating system user: the first principal and key are made that way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from featureplane.access.gate import AccessDenied, Gate, PolicySpec
from featureplane.access.principals import Principals
from featureplane.errors import AccessError
from featureplane.registry_store import AccessVersion, RegistryStore


def gate_of(store: RegistryStore) -> Gate:
    """The door of the store's serving registry: its policies and the principals in force."""
    serving = store.serving()
    policies = [] if serving is None else serving.registry.get("access_policies", [])
    access = store.access()
    return Gate(
        Principals.none() if access is None else access.principals,
        [PolicySpec.from_json(policy) for policy in policies],
    )


def acting_principal(store: RegistryStore, api_key: str | None) -> str | None:
    """Who applies or changes access: None when no policy guards applying (anyone may), else
    the principal of `api_key`; AccessError naming what is missing when it may not."""
    gate = gate_of(store)
    if not gate.guards_apply:
        return None
    granting = ", ".join(policy.name for policy in gate.policies if policy.apply)
    if not api_key:
        raise AccessError(
            f"applying is limited by the policies {granting}: set $FEATUREPLANE_API_KEY to "
            "the key of one of their members"
        )
    try:
        principal = gate.authenticate({"x-api-key": api_key})
    except AccessDenied:
        raise AccessError(
            "$FEATUREPLANE_API_KEY is not a valid key (unknown, revoked or expired)"
        ) from None
    if not gate.may_apply(principal):
        raise AccessError(
            f"principal {principal.name!r} may not apply: only members of {granting} may"
        )
    return principal.name


def change_keys(
    store: RegistryStore,
    edit: Callable[[Principals], tuple[Principals, str | None, str]],
    by: str | None = None,
) -> tuple[AccessVersion, str | None]:
    """Make the access change `edit` returns (principals, the key it made if any, what it
    did), and return it with the key: keys are seen only when made."""
    made: list[str | None] = [None]

    def change(principals: Principals) -> tuple[Principals, str]:
        changed, made[0], description = edit(principals)
        return changed, description

    return store.change_access(change, by), made[0]


def listing(store: RegistryStore, moment: datetime | None = None) -> Iterator[str]:
    """One block per principal: kind, groups, identities, limits, what it may read, keys."""
    moment = moment or datetime.now(UTC)
    gate = gate_of(store)
    serving = store.serving()
    services = [] if serving is None else [s["name"] for s in serving.registry["feature_services"]]
    if not gate.principals.by_name:
        yield "no principals yet: make one with `featureplane access create NAME`"
    for name, principal in sorted(gate.principals.by_name.items()):
        reads = gate.readable(principal, services)
        limits = [
            f"{value:g} {unit}/s"
            for value, unit in (
                (principal.requests_per_second, "requests"),
                (principal.rows_per_second, "rows"),
            )
            if value is not None
        ]
        yield f"{name}  ({principal.kind.replace('_', ' ')})"
        yield f"  groups: {', '.join(principal.groups) or '-'}"
        if principal.identities:
            yield f"  identities: {', '.join(principal.identities)}"
        applies = "; may apply" if gate.may_apply(principal) else ""
        yield f"  reads: {', '.join(reads) or 'nothing'}{applies}"
        yield f"  limits: {', '.join(limits) or 'the server defaults'}"
        for key in principal.keys:
            yield f"  key {key.id}: {key.state(moment)} (made {key.created_at:%Y-%m-%d %H:%M} UTC)"


def history_lines(store: RegistryStore, name: str | None = None) -> list[str]:
    """Every access change, oldest first (those naming principal `name`, when asked)."""
    lines = []
    for meta in store.access_history():
        if name is None or name in meta["change"].split():
            lines.append(
                f"access {meta['number']}  {meta['changed_at']}  by {meta['changed_by']}\n"
                f"  {meta['change']}"
            )
    return lines
