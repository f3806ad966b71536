"""`featureplane package lambda`: the zip answers an API Gateway event from its own files alone
(a fresh interpreter without site-packages or the project), as the handler in the project
does, and what it cannot be built from is one line."""

import json
import re
import subprocess
import sys
import zipfile

from featureplane.cli import main
from featureplane.registry import build_registry, load_registry
from featureplane.registry_store import RegistryStore
from featureplane.serving import FeatureServer
from featureplane.settings import registry_store_location
from tests import serving_repo
from tests.serving_repo import HOUR, NOW, START, ad_stats, user_stats, write_row, write_tiles

INVOKE = """
import json, sys
sys.path.insert(0, ".")
import online.handler
assert online.handler.__file__.startswith(sys.argv[2]), online.handler.__file__
print(json.dumps(online.handler.handler(json.loads(sys.argv[1]))))
"""


def test_the_zip_answers_an_event_from_its_own_files_as_the_project_does(data_dir, capsys):
    db = data_dir / "online.sqlite"
    write_row(db, user_stats, (1,), NOW - HOUR, {"clicks": 4, "country": "FR"})
    write_row(db, ad_stats, ("a1",), NOW - 2 * HOUR, {"ctr": 0.25, "title": "Shoes"})
    write_tiles(db, (1, "a1"), [(NOW - 3 * HOUR, 20.0, "shoes"), (NOW - HOUR, 5.0, "hat")])
    store = RegistryStore(registry_store_location())
    registry = build_registry(serving_repo.repository(), {"type": "sqlite", "path": str(db)})
    store.apply(registry, None, [])
    keys = []

    def create(principals):
        principals, key = principals.create("tester", START)  # the readers policy's
        keys.append(key)
        return principals, "+ tester"

    access = store.change_access(create)
    out = data_dir / "dist" / "fn.zip"
    assert main(["package", "lambda", "--out", str(out), "--cold-starts", "2"]) == 0
    printed = capsys.readouterr().out
    print(printed)
    size = float(re.search(r"fn\.zip: ([\d.]+) MiB", printed).group(1))
    assert abs(size - out.stat().st_size / 2**20) < 0.1 and size < 50  # Lambda's direct upload
    assert re.search(r"first answer \d+ ms, status 200$", printed.strip())
    names = zipfile.ZipFile(out).namelist()
    assert {"online/handler.py", "featureplane/signing.py", "boto3/__init__.py"} <= set(names)
    assert not [n for n in names if n.split("/")[0] in ("pyspark", "dagster", "pandas", "numpy")]
    assert "featureplane/feature_store.py" not in names
    assert {n for n in names if n.startswith("registry/")} == {
        "registry/v000001.json",
        f"registry/access-{access.number:06d}.json",
    }
    assert "botocore/data/dynamodb" in {n.rsplit("/", 2)[0] for n in names}
    assert "botocore/data/ec2" not in {n.rsplit("/", 2)[0] for n in names}

    task = data_dir / "task"
    zipfile.ZipFile(out).extractall(task)
    environment = dict(re.findall(r"^  (FEATUREPLANE_\w+)=(.*)$", printed, re.MULTILINE))
    body = json.dumps({"entities": {"user_id": 1, "ad_id": "a1"}})
    path = "/v1/feature-services/checkout/get-features"
    event = {"httpMethod": "POST", "path": path, "headers": {"x-api-key": keys[0]}, "body": body}
    answered = subprocess.run(
        [sys.executable, "-I", "-S", "-c", INVOKE, json.dumps(event), str(task)],
        cwd=task,
        env={**environment, "FEATUREPLANE_AS_OF": NOW.isoformat()},
        capture_output=True,
        text=True,
    )
    assert answered.returncode == 0, answered.stderr
    response = json.loads(answered.stdout.splitlines()[-1])
    oracle = FeatureServer(load_registry(registry), clock=lambda: NOW).get_features(
        "checkout", {"user_id": 1, "ad_id": "a1"}
    )
    assert response["statusCode"] == 200 and "present" in response["body"]
    assert json.loads(response["body"]) == json.loads(json.dumps(oracle))
    assert "Dockerfile" in {p.name for p in out.parent.iterdir()}


def test_what_a_package_cannot_be_built_from_is_one_line(data_dir, capsys):
    out = str(data_dir / "fn.zip")
    assert main(["package", "lambda", "--out", out]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: PackageError: no registry at ") and error.count("\n") == 1
    RegistryStore(registry_store_location()).apply(
        build_registry(serving_repo.repository(), {"type": "sqlite", "path": "db"}), None, []
    )
    assert main(["package", "lambda", "--out", out, "--follow"]) == 1
    assert "--follow needs an s3:// registry store" in capsys.readouterr().err
    assert not (data_dir / "fn.zip").exists()
