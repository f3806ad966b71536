"""The demo repository driven through a real pipeline's bad inputs, one after another, with
DynamoDB (moto_server behind a faulty proxy) as the online store: a throttled store, a corrupt
registry version, an empty source day, null join keys and a deleted Delta log. After each, the
offline tables hold the same rows, the online store the same records, and the handler serves
the same vector as before, and the user is told what happened.
"""

import json
import shutil
import uuid
from datetime import timedelta

import pytest
from dagster import DagsterInstance
from deltalake import DeltaTable
from faulty_dynamodb import Faults, FaultyDynamoDB
from test_data_safety import append_impressions_without_user

import online.handler as lambda_handler
from bench.harness import moto_server
from conftest import TINY, read_delta, view_table
from featureplane import Repository
from featureplane.access import Principals
from featureplane.dagster import build_definitions
from featureplane.dagster.definitions import resources_for
from featureplane.dagster.materialize import materialize_range
from featureplane.errors import MaterializationFailed, RegistryCorrupt
from featureplane.registry import build_registry
from featureplane.registry_store import RegistryStore
from featureplane.synthetic import generate
from resources import OfflineStoreResource, OnlineStoreResource, SparkResource

DAY = timedelta(days=1)
END = TINY.start + TINY.days * DAY
PRINCIPALS, KEY = Principals.none().create("demo-client", TINY.start)
"""The demo's client, which its policies let read every service."""
REQUEST = {"entities": {"user_id": 17, "ad_id": 4}, "request_data": {"request_ts": END.isoformat()}}


@pytest.fixture
def demo(tmp_path, monkeypatch, aws_credentials):
    """Fresh demo sources, the whole repository materialized and pushed to DynamoDB through
    the proxy, two applied registry versions, and a handler following them."""
    generate(tmp_path / "raw", TINY)
    monkeypatch.setenv("FEATUREPLANE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FEATUREPLANE_OFFLINE_ROOT", raising=False)
    repo = Repository.load("feature_assets")
    root = tmp_path / "offline"
    with (
        moto_server(module="bench.moto_dynamodb_server") as upstream,
        FaultyDynamoDB(upstream) as faulty,
        DagsterInstance.ephemeral() as instance,
    ):
        online = OnlineStoreResource(
            type="dynamodb",
            table=f"bad_inputs_{uuid.uuid4().hex[:8]}",
            region="us-east-1",
            endpoint_url=faulty.endpoint,
        )
        defs = build_definitions(
            repo, resources_for(SparkResource(), OfflineStoreResource(root=str(root)), online)
        )

        def run(start=TINY.start, end=END, views=None):
            return materialize_range(defs, instance, start, end, views, online=True)

        run()
        registry = RegistryStore(str(root / "registry"))
        registry.apply(build_registry(repo, online.settings()), None, ["first"])
        registry.apply(build_registry(repo, online.settings()), 1, ["second"])
        registry.change_access(lambda _: (PRINCIPALS, "demo-client created"))
        monkeypatch.setenv("FEATUREPLANE_REGISTRY", str(root / "registry"))
        monkeypatch.setenv("FEATUREPLANE_AS_OF", END.isoformat())
        cold_start(monkeypatch)
        yield repo, root, online, faulty, run
        lambda_handler.server().close()


def cold_start(monkeypatch) -> None:
    """The next request finds a process with no registry or store loaded (a new instance)."""
    for name in ("_server", "_store", "_version", "_access"):
        monkeypatch.setattr(lambda_handler, name, None)
    monkeypatch.setattr(lambda_handler, "_skipped", {})


def served() -> dict:
    event = {
        "requestContext": {
            "http": {"method": "POST", "path": "/v1/feature-services/ctr/get-features"}
        },
        "rawPath": "/v1/feature-services/ctr/get-features",
        "headers": {"x-api-key": KEY},
        "body": json.dumps(REQUEST),
    }
    response = lambda_handler.handler(event)
    assert response["statusCode"] == 200, response["body"]
    body = json.loads(response["body"])
    return {"features": body["features"], "results": body["results"]}


def state(repo, root, online: OnlineStoreResource) -> dict:
    """Every view's stored rows and the online records of every entity they hold."""
    store = online.store()
    held = {}
    for view in repo.feature_views.values():
        rows = read_delta(view_table(root, view.name)).drop(columns="event_date")
        flat = [c for c in rows.columns if not rows[c].map(lambda v: isinstance(v, dict)).any()]
        rows = rows.sort_values(flat).reset_index(drop=True)
        records = None
        if view.online:
            keys = sorted({tuple(k) for k in rows[list(view.join_keys)].itertuples(index=False)})
            records = store.read(view.name, view.version, keys)
        held[view.name] = (rows.to_json(), records)
    return held


def test_bad_inputs_leave_the_offline_tables_the_online_store_and_serving_as_they_were(
    demo, monkeypatch
):
    repo, root, online, faulty, run = demo
    before, vector = state(repo, root, online), served()
    assert any(status == "present" for r in vector["results"] for status in r["status"])

    # 1. A throttled store: half the writes refused; a full re-push still lands every row.
    faulty.set(Faults(refuse=0.5))
    run()
    assert faulty.refused["TransactWriteItems"] > 0
    faulty.set(Faults())
    assert state(repo, root, online) == before

    # 2. The newest registry version truncated: plan refuses it, servers serve version 1.
    newest = root / "registry" / "v000002.json"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(RegistryCorrupt, match=r"v000002\.json: not valid JSON"):
        RegistryStore(str(root / "registry")).latest()
    cold_start(monkeypatch)
    assert served() == vector

    # 3. An empty source day: the volume guard keeps the stored window.
    DeltaTable(str(root.parent / "raw" / "page_views")).delete("event_date = '2026-10-02'")
    with pytest.raises(MaterializationFailed, match="VolumeDropError: user_daily_page_views"):
        run(TINY.start + DAY, TINY.start + 2 * DAY, ["user_daily_page_views"])

    # 4. Null join keys above the view's share: dropped, and the push of the window blocked.
    impressions = len(read_delta(root.parent / "raw" / "ad_impressions")) // TINY.days
    append_impressions_without_user(root, impressions // 20, batch=1)
    with pytest.raises(MaterializationFailed, match="user_ad_activity: blocking quality check"):
        run(TINY.start, TINY.start + DAY, ["user_ad_activity"])

    # 5. A deleted Delta log: refused, the files kept; restoring the log restores the table.
    table = view_table(root, "ad_daily_performance")
    shutil.move(table / "_delta_log", root.parent / "log_aside")
    with pytest.raises(MaterializationFailed, match="TableLogMissing: .* no readable Delta log"):
        run(views=["ad_daily_performance"])
    shutil.move(root.parent / "log_aside", table / "_delta_log")

    assert state(repo, root, online) == before
    cold_start(monkeypatch)
    assert served() == vector
