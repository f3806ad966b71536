"""Alerts: the incidents the platform opens and resolves, and the messages that announce them.

An incident is one thing gone wrong: partitions of an asset a run failed to materialize, a
failing check, a backfill that failed, an asset or its served data past its freshness. Its id
says what it is about, so seeing the same failure again opens nothing new: one message when it
opens (again only if it gets worse, a warning turning into a failure), one when it resolves.

`Alerts` is that bookkeeping plus the outbox of messages not yet delivered to every sink, as
one JSON document: a sensor keeps it as its cursor, so an undelivered message survives the
tick, the daemon's restart and the receiver's outage, and goes out once a sink takes it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

Severity = Literal["warning", "error"]
State = Literal["firing", "resolved"]
RANK: dict[str, int] = {"warning": 0, "error": 1}
TITLES = {
    "materialization": "Materialization failed",
    "run": "Run failed",
    "backfill": "Backfill failed",
    "check": "Check failed",
    "freshness": "Asset not fresh",
    "served_freshness": "Served data stale",
}
"""The kinds of incident, and how a message titles each."""


@dataclass(frozen=True)
class Incident:
    """One thing gone wrong. `subject` names it (an asset key, `asset check`, a backfill),
    `partition` the partitions concerned (a key or a `first...last` range), `cause` says why
    in a line or a few, `link` opens the run (or backfill) in the Dagster UI."""

    kind: str
    subject: str
    cause: str
    partition: str | None = None
    link: str | None = None
    severity: Severity = "error"

    def __post_init__(self) -> None:
        if self.kind not in TITLES:
            raise ValueError(f"incident {self.subject}: unknown kind {self.kind!r}")
        if self.severity not in RANK:
            raise ValueError(f"incident {self.subject}: unknown severity {self.severity!r}")

    @property
    def id(self) -> str:
        """Stable across ticks: the kind, the subject and the partitions."""
        where = f"[{self.partition}]" if self.partition else ""
        return f"{self.kind}:{self.subject}{where}"

    @property
    def title(self) -> str:
        title = TITLES[self.kind]
        return f"{title} (warning)" if self.severity == "warning" else title


@dataclass(frozen=True)
class Message:
    """An incident opening (`firing`) or resolving, at a time; `resolution` says what resolved
    it and `link` (resolved: the succeeding run) where to see it."""

    state: State
    incident: Incident
    at: str
    resolution: str | None = None
    link: str | None = None

    @property
    def text(self) -> str:
        """One plain line: the notification text and the fallback of the blocks."""
        incident = self.incident
        where = f" partition {incident.partition}" if incident.partition else ""
        link = self.link or incident.link
        see = f" ({link})" if link else ""
        if self.state == "resolved":
            return f"Resolved: {incident.title}: {incident.subject}{where}: {self.resolution}{see}"
        return f"{incident.title}: {incident.subject}{where}: {incident.cause.splitlines()[0]}{see}"

    def slack(self) -> dict[str, Any]:
        """Slack-compatible JSON (`text` and Block Kit `blocks`), as incoming webhooks take it."""
        incident = self.incident
        resolved = self.state == "resolved"
        icon = (
            ":white_check_mark:"
            if resolved
            else {"warning": ":warning:", "error": ":red_circle:"}[incident.severity]
        )
        head = f"{icon} *{'Resolved: ' if resolved else ''}{incident.title}*: `{incident.subject}`"
        if incident.partition:
            head += f" partition `{incident.partition}`"
        detail = self.resolution if resolved else incident.cause
        quoted = "\n".join(f">{line}" for line in (detail or "").splitlines())
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{head}\n{quoted}"}}
        ]
        link = self.link or incident.link
        context = [{"type": "mrkdwn", "text": f"{self.at} · incident `{incident.id}`"}]
        if link:
            context.insert(0, {"type": "mrkdwn", "text": f"<{link}|Open in Dagster>"})
        blocks.append({"type": "context", "elements": context})
        return {"text": self.text, "blocks": blocks}

    def record(self) -> dict[str, Any]:
        """The message as data: one line of the JSON lines log, and its form in the cursor."""
        return {**asdict(self), "id": self.incident.id, "text": self.text}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Message:
        incident = Incident(**record["incident"])
        fields = {k: record[k] for k in ("state", "at", "resolution", "link")}
        return cls(incident=incident, **fields)


@dataclass
class Outgoing:
    """A message and the sinks that already took it."""

    message: Message
    delivered: list[str] = field(default_factory=list)


@dataclass
class Alerts:
    """Open incidents by id, what the sensor keeps about each until it resolves (`details`:
    JSON, e.g. the partitions still to succeed), the outbox, and `position`: where the sensor's
    scan of its source (the event log, the backfills) stands, its own JSON."""

    incidents: dict[str, Incident] = field(default_factory=dict)
    outbox: list[Outgoing] = field(default_factory=list)
    position: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def fire(self, incident: Incident, at: datetime, detail: Any = None) -> bool:
        """Open the incident (keeping `detail`), or escalate it to a higher severity; whether
        a message was queued."""
        known = self.incidents.get(incident.id)
        if known is not None and RANK[known.severity] >= RANK[incident.severity]:
            return False
        self.incidents[incident.id] = incident
        if detail is not None:
            self.details[incident.id] = detail
        self.outbox.append(Outgoing(Message("firing", incident, _stamp(at))))
        return True

    def resolve(
        self, incident_id: str, at: datetime, resolution: str, link: str | None = None
    ) -> bool:
        """Close an open incident; whether it was open (and a message queued)."""
        incident = self.incidents.pop(incident_id, None)
        self.details.pop(incident_id, None)
        if incident is None:
            return False
        self.outbox.append(Outgoing(Message("resolved", incident, _stamp(at), resolution, link)))
        return True

    def open_incidents(self, kind: str) -> list[Incident]:
        """The open incidents of a kind."""
        return [incident for incident in self.incidents.values() if incident.kind == kind]

    def to_json(self) -> str:
        return json.dumps(
            {
                "incidents": [asdict(incident) for incident in self.incidents.values()],
                "outbox": [
                    {"message": out.message.record(), "delivered": out.delivered}
                    for out in self.outbox
                ],
                "position": self.position,
                "details": self.details,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | None) -> Alerts:
        """The bookkeeping a cursor holds; none (a sensor's first tick) is an empty one."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            incidents = [Incident(**incident) for incident in data["incidents"]]
            outbox = [
                Outgoing(Message.from_record(out["message"]), list(out["delivered"]))
                for out in data["outbox"]
            ]
            position, details = dict(data["position"]), dict(data["details"])
            return cls({i.id: i for i in incidents}, outbox, position, details)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"alert cursor is not an alerts document: {error}") from error


def _stamp(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def run_link(base_url: str, run_id: str) -> str:
    """A run's page in the Dagster UI."""
    return f"{base_url}/runs/{run_id}"


def backfill_link(base_url: str, backfill_id: str) -> str:
    """A backfill's page in the Dagster UI."""
    return f"{base_url}/runs/b/{backfill_id}"


def asset_link(base_url: str, subject: str) -> str:
    """An asset's page in the Dagster UI, for an asset key written `features/name`."""
    return f"{base_url}/assets/{subject}"
