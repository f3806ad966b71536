"""The online store as a Dagster resource: SQLite (embedded default) or DynamoDB."""

from functools import cache
from typing import Literal

from dagster import ConfigurableResource

from featureplane.online_store import OnlineStore, open_store
from featureplane.settings import online_store_path


@cache
def _opened(settings: tuple[tuple[str, str], ...]) -> OnlineStore:
    """One store per process and settings, its table ensured once: a SQLite store pools its
    connections and a DynamoDB store its client and threads, so steps share them."""
    store = open_store(dict(settings))
    store.ensure_table()
    return store


class OnlineStoreResource(ConfigurableResource):
    """Where online values live. SQLite: `path` (default `<data dir>/online_store.sqlite`);
    DynamoDB: `table`, `region` and, for moto or DynamoDB Local, `endpoint_url`."""

    type: Literal["sqlite", "dynamodb"] = "sqlite"
    path: str | None = None
    table: str | None = None
    region: str | None = None
    endpoint_url: str | None = None

    def settings(self) -> dict[str, str]:
        """The `open_store` settings of this resource: its type and the options it sets."""
        if self.type == "sqlite":
            return {"type": "sqlite", "path": self.path or str(online_store_path())}
        options = {
            "table": self.table,
            "region": self.region,
            "endpoint_url": self.endpoint_url,
        }
        return {"type": "dynamodb"} | {k: v for k, v in options.items() if v is not None}

    def store(self) -> OnlineStore:
        """The process's store for these settings, with its table created."""
        return _opened(tuple(sorted(self.settings().items())))
