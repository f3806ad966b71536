"""The notifier: where alerts go. A webhook taking Slack-compatible JSON, a JSON lines file, and
always the Python log of whoever delivers (the sensor's log in Dagster).

Delivery keeps order per sink and loses nothing: a receiver that is down, answers 5xx or 429,
or times out is retried with backoff; still failing, the message and every later one stay in
the outbox for the next tick, and the error is returned for the sensor's log. A 4xx is not
retried within the tick (the same payload would be refused again) but kept all the same.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from dagster import ConfigurableResource
from pydantic import field_validator

from featureplane.alerts import Message, Outgoing
from featureplane.settings import alert_log, alert_webhook, dagster_url

WEBHOOK, LOG = "webhook", "log"


class DeliveryError(Exception):
    """A sink did not take a message; `retry` says whether trying again soon may help."""

    def __init__(self, message: str, retry: bool):
        super().__init__(message)
        self.retry = retry


@dataclass
class Delivery:
    """What one delivery did: messages fully delivered, those kept, and why each sink failed."""

    sent: int = 0
    kept: list[Outgoing] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class NotifierResource(ConfigurableResource):
    """Alert sinks. `webhook`: URL posted `{"text", "blocks"}`; `log_path`: JSON lines file;
    `dagster_url`: the UI alerts link to. `from_settings()` reads them from the environment."""

    webhook: str | None = None
    log_path: str | None = None
    dagster_url: str = "http://127.0.0.1:3000"
    timeout_seconds: float = 5.0
    attempts: int = 3
    backoff_seconds: float = 0.5

    @field_validator("webhook")
    @classmethod
    def _http(cls, webhook: str | None) -> str | None:
        if webhook is not None and urlparse(webhook).scheme not in ("http", "https"):
            raise ValueError(f"alert webhook {webhook!r} is not an http(s) URL")
        return webhook

    @classmethod
    def from_settings(cls) -> NotifierResource:
        """`$FEATUREPLANE_ALERT_WEBHOOK`, `$FEATUREPLANE_ALERT_LOG`, `$FEATUREPLANE_DAGSTER_URL`."""
        return cls(webhook=alert_webhook(), log_path=alert_log(), dagster_url=dagster_url())

    @property
    def sinks(self) -> list[str]:
        return [name for name, on in ((WEBHOOK, self.webhook), (LOG, self.log_path)) if on]

    def deliver(self, outbox: list[Outgoing], log: logging.Logger) -> Delivery:
        """Send each message to the sinks that have not taken it, in order; a sink that fails
        takes nothing more this time, so later messages never overtake an earlier one."""
        delivery, down = Delivery(), set[str]()
        for out in outbox:
            if not out.delivered:
                log.log(_LEVEL[out.message.state, out.message.incident.severity], out.message.text)
            for sink in self.sinks:
                if sink in out.delivered or sink in down:
                    continue
                try:
                    self._send(sink, out.message)
                except DeliveryError as error:
                    down.add(sink)
                    delivery.errors.append(
                        f"alert {out.message.incident.id} ({out.message.state}) not delivered "
                        f"to {sink}: {error}; kept with every later message for the next tick"
                    )
                    continue
                out.delivered.append(sink)
            if all(sink in out.delivered for sink in self.sinks):
                delivery.sent += 1
            else:
                delivery.kept.append(out)
        return delivery

    def _send(self, sink: str, message: Message) -> None:
        if sink == LOG:
            try:
                with Path(self.log_path).open("a", encoding="utf-8") as file:
                    file.write(json.dumps(message.record(), sort_keys=True) + "\n")
            except OSError as error:
                raise DeliveryError(f"cannot append to {self.log_path}: {error}", False) from error
            return
        for attempt in range(1, self.attempts + 1):
            try:
                return self._post(message)
            except DeliveryError as error:
                if not error.retry or attempt == self.attempts:
                    raise DeliveryError(
                        f"{error} (attempt {attempt} of {self.attempts})", False
                    ) from error
            time.sleep(self.backoff_seconds * 2 ** (attempt - 1))

    def _post(self, message: Message) -> None:
        request = urllib.request.Request(
            self.webhook,
            data=json.dumps(message.slack()).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                response.read()
        except urllib.error.HTTPError as error:
            retry = error.code >= 500 or error.code == 429
            raise DeliveryError(f"{self.webhook} answered HTTP {error.code}", retry) from error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise DeliveryError(f"{self.webhook} unreachable: {reason}", retry=True) from error


_LEVEL = {
    ("firing", "error"): logging.ERROR,
    ("firing", "warning"): logging.WARNING,
    ("resolved", "error"): logging.INFO,
    ("resolved", "warning"): logging.INFO,
}
