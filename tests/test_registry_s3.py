"""The applied registry store on S3, moto's server over HTTP: apply, versions, the serving
pointer and a `featureplane serve` process following it, and a tampered version refused."""

import json
import time

import boto3
import pytest

import online.handler
from featureplane.errors import RegistryUntrusted
from featureplane.registry import build_registry, registry_text
from featureplane.registry_store import RegistryConflict, RegistryStore
from online.client import FeatureClient
from online.server import serving_process
from tests import serving_repo
from tests.test_registry_store import narrower


def test_a_registry_store_on_s3_serves_what_is_cut_over_to_and_refuses_a_tampered_version(
    s3, tmp_path, monkeypatch
):
    location = f"s3://{s3.bucket('registry-lake')}/offline/registry"
    store = RegistryStore(location)
    online_store = {"type": "sqlite", "path": str(tmp_path / "db")}
    store.apply(build_registry(serving_repo.repository(), online_store), None, ["+ all"], "ana")
    with pytest.raises(RegistryConflict, match="version 1 was applied concurrently by ana"):
        RegistryStore(location).apply(narrower(tmp_path), None, [], "bo")
    refresh = {"FEATUREPLANE_REGISTRY_REFRESH_SECONDS": "0.1"}
    with serving_process(location, env=refresh, timeout=30) as url, FeatureClient(url) as client:
        assert client.health()["feature_services"] == 3
        store.apply(narrower(tmp_path), 1, ["- checkout", "- context"], "bo")
        assert store.versions() == [1, 2] and store.serving_version() == 1
        time.sleep(0.5)
        assert client.health()["feature_services"] == 3, "applied, not cut over to"
        store.cut_over(2, by="sensor")
        wait_for(lambda: client.health()["feature_services"] == 1)

        third = store.apply(build_registry(serving_repo.repository(), online_store), 2, [])
        key = f"offline/registry/v{third.version:06d}.json"
        objects = boto3.client("s3")
        document = json.loads(read(objects, key))
        document["meta"]["applied_by"] = "mallory"
        objects.put_object(Bucket="registry-lake", Key=key, Body=registry_text(document))
        with pytest.raises(RegistryUntrusted, match=f"s3://registry-lake/{key}: signature"):
            store.cut_over(third.version)
        assert store.serving_version() == 2
        pointer = json.loads(read(objects, "offline/registry/serving-000002.json"))
        forged = {**pointer, "number": 3, "serving": third.version, "previous": 2}
        objects.put_object(  # a pointer to the tampered version, bypassing the store
            Bucket="registry-lake",
            Key="offline/registry/serving-000003.json",
            Body=registry_text(forged),
        )
        time.sleep(0.5)
        assert client.health()["feature_services"] == 1, "the tampered version never serves"

    for name in ("_server", "_store", "_version", "_access"):
        monkeypatch.setattr(online.handler, name, None)
    monkeypatch.setenv("FEATUREPLANE_REGISTRY", location)
    with pytest.raises(RegistryUntrusted, match="serving-000003.json: signature does not match"):
        online.handler.server()  # a cold Lambda
    assert [store.get(version).meta["applied_by"] for version in (1, 2)] == ["ana", "bo"]


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server did not pick up the cut-over"
        time.sleep(0.05)


def read(objects, key: str) -> bytes:
    return objects.get_object(Bucket="registry-lake", Key=key)["Body"].read()
