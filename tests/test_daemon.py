"""The platform running itself under a real `dagster dev` (webserver and daemon subprocesses) on
a temporary project: late rows reach the served value through the new-data sensor and
automation; applies roll out through the code location (reloaded, backfilled, cut over) while
a server follows the registry store; a failing rollout keeps the previous version serving and
alerts, and its fix resolves the alert."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from conftest import PROJECT_INSTANCE
from featureplane.online_store import open_store
from featureplane.registry_store import RegistryStore
from online.client import FeatureClient
from online.server import free_port, serving_process

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NOW = datetime.now(UTC)
TODAY = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
START = TODAY - timedelta(days=3)
YESTERDAY = TODAY - timedelta(days=1)

SOURCES = """
from featureplane import BatchSource, Entity

clicks = BatchSource("clicks", path="raw/clicks", timestamp_field="ts")
user = Entity("user", join_keys=["user_id"])
"""
VIEWS = """
from datetime import datetime, timedelta

from featureplane import Aggregation, FeatureService, Field, Float64, Int64, batch_feature_view

from {package}.sources import clicks, user

START = datetime.fromisoformat("{start}")


@batch_feature_view(sources=[clicks], entities=[user], schema=[Field("clicks", {clicks_type})],
                    timestamp_field="ts", feature_start_time=START)
def user_clicks(clicks):
    {body}


@batch_feature_view(
    sources=[clicks], entities=[user], schema=[Field("clicks", Int64)], timestamp_field="ts",
    feature_start_time=START,
    aggregations=[Aggregation("clicks", "sum", timedelta(days=2), name="clicks_2d")],
)
def user_click_totals(clicks):
    return clicks.select("user_id", "ts", "clicks")


checkout = FeatureService("checkout", features=[user_clicks, user_click_totals])
"""
NEW_VIEW = """
from datetime import timedelta

from featureplane import Aggregation, Field, Int64, batch_feature_view

from {package}.sources import clicks, user
from {package}.views import START


@batch_feature_view(
    sources=[clicks], entities=[user], schema=[Field("clicks", Int64)], timestamp_field="ts",
    feature_start_time=START,
    aggregations=[Aggregation("clicks", "count", timedelta(days=1), name="clicks_1d")],
)
def user_click_counts(clicks):
    return clicks.select("user_id", "ts", "clicks")
"""
GOOD = {"clicks_type": "Int64", "body": 'return clicks.select("user_id", "ts", "clicks")'}
BROKEN = {"clicks_type": "Float64", "body": 'raise RuntimeError("the clicks feed changed")'}
FIXED = {
    "clicks_type": "Float64",
    "body": 'return clicks.selectExpr("user_id", "ts", "cast(clicks as double) as clicks")',
}


def clicks(rows: list[tuple[int, datetime, int]]) -> pa.Table:
    users, times, counts = zip(*rows, strict=True)
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "ts": pa.array(times, pa.timestamp("us", "UTC")),
            "clicks": pa.array(counts, pa.int64()),
        }
    )


class Receiver(BaseHTTPRequestHandler):
    """A webhook that keeps every JSON body posted to it."""

    posted: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        Receiver.posted.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.posted = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


class Project:
    """A feature repository package, its data and Dagster instance, in a temporary folder."""

    def __init__(self, root: Path, webhook: str):
        self.root, self.package = root, "daemon_repo"
        self.data = root / "data"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root), str(ROOT)]),
            "DAGSTER_HOME": str(root / "home"),
            "FEATUREPLANE_DATA_DIR": str(self.data),
            "FEATUREPLANE_SENSOR_INTERVAL_SECONDS": "2",
            "FEATUREPLANE_CUTOVER_GRACE_SECONDS": "0",
            "FEATUREPLANE_ALERT_WEBHOOK": webhook,
            "FEATUREPLANE_REGISTRY": str(self.data / "offline" / "registry"),
            "FEATUREPLANE_REGISTRY_REFRESH_SECONDS": "1",
        }
        self.env.pop("FEATUREPLANE_OFFLINE_ROOT", None)
        self.env.pop("FEATUREPLANE_ONLINE_STORE", None)
        (root / "home").mkdir()
        shutil.copy(PROJECT_INSTANCE, root / "home")  # the project's: queue cap, event log
        (root / "workspace.yaml").write_text(
            f"load_from:\n  - python_module:\n      module_name: {self.package}.definitions\n"
            "      working_directory: .\n"
        )
        package = root / self.package
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "sources.py").write_text(textwrap.dedent(SOURCES))
        (package / "definitions.py").write_text(
            "from featureplane import Repository\nfrom featureplane.dagster import "
            f"build_definitions\n\ndefs = build_definitions(Repository.load({self.package!r}))\n"
        )
        self.views(GOOD)
        hours = [START + timedelta(hours=h) for h in range(int((NOW - START) / timedelta(hours=1)))]
        self.source = str(self.data / "raw" / "clicks")
        write_deltalake(self.source, clicks([(u, t, u) for u in (1, 2) for t in hours]))

    def views(self, variant: dict[str, str]) -> None:
        text = VIEWS.format(package=self.package, start=START.isoformat(), **variant)
        (self.root / self.package / "views.py").write_text(text)
        shutil.rmtree(self.root / self.package / "__pycache__", ignore_errors=True)

    def add_view(self) -> None:
        (self.root / self.package / "counts.py").write_text(NEW_VIEW.format(package=self.package))

    def featureplane(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "featureplane.cli", *args]
        return subprocess.run(
            command, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def apply(self, *flags: str) -> subprocess.CompletedProcess:
        return self.featureplane(
            "apply", "--repository", self.package, "--yes", "--wait", "--timeout", "300", *flags
        )


@pytest.fixture
def dagster_dev(tmp_path, receiver) -> Iterator[Project]:
    """`dagster dev` of a fresh project on free ports, stopped after the test."""
    with running_dagster_dev(Project(tmp_path, receiver)) as project:
        yield project


@contextmanager
def running_dagster_dev(project: Project) -> Iterator[Project]:
    """`dagster dev` of a project on a free port (its URL in the project's environment), until
    the block ends."""
    port = free_port()
    project.env["FEATUREPLANE_DAGSTER_URL"] = f"http://127.0.0.1:{port}"
    command = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1"]
    log = open(project.root / "dagster_dev.log", "w")  # noqa: SIM115 (closed after the process)
    process = subprocess.Popen(
        [*command, "-p", str(port)],
        cwd=project.root,
        env=project.env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # its webserver, daemon, code server and runs: one group
    )
    try:
        until(lambda: _answers(port), 120, "the Dagster webserver did not start")
        yield project
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=1.0):
            return True
    except OSError:
        return False


def until(condition, timeout: float, message: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(interval)


def served(client: FeatureClient) -> dict:
    """The values and statuses the `checkout` service serves for user 1 (ages move on)."""
    response = client.get_features("checkout", {"user_id": 1})
    return {"values": response["values"], "status": response["status"]}


def test_the_platform_runs_itself(dagster_dev, receiver):
    project = dagster_dev

    applied = project.apply()
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Reloaded code location" in applied.stdout
    assert "registry version 1 serves" in applied.stdout
    assert "[------------------------]   0%  0/3" in applied.stdout  # three landed days

    unauthenticated = {**project.env, "FEATUREPLANE_NO_AUTH": "1"}  # this test is about automation
    with serving_process(project.env["FEATUREPLANE_REGISTRY"], env=unauthenticated) as url:
        client = FeatureClient(url)
        first = served(client)
        assert first["status"]["user_click_totals__clicks_2d"] == "present"
        total = first["values"]["user_click_totals__clicks_2d"]

        # late rows for yesterday: the sensor, automation and the push change the served sum
        appended = time.monotonic()
        write_deltalake(
            project.source, clicks([(1, YESTERDAY + timedelta(hours=3), 1000)]), mode="append"
        )
        changed = until(
            lambda: served(client)["values"]["user_click_totals__clicks_2d"] == total + 1000,
            240,
            "the late rows never reached the served value",
        )
        delay = time.monotonic() - appended
        print(f"\nlate rows to served value: {delay:.1f}s")
        assert changed

        # a new view while the code location holds the old code: apply reloads it
        project.add_view()
        applied = project.apply()
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert "registry version 2 serves" in applied.stdout

        # a breaking change whose backfill fails: version 2 keeps serving, an alert fires
        before = served(client)
        project.views(BROKEN)
        failed = project.apply("--allow-breaking", "--no-validate")
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "the backfill of version 3 failed" in failed.stderr
        assert served(client) == before
        status = project.featureplane("status")
        assert status.returncode == 1 and "failed" in status.stdout

        alert = until(
            lambda: [p for p in Receiver.posted if "user_clicks" in json.dumps(p)],
            120,
            "no alert reached the webhook",
        )
        assert "the clicks feed changed" in json.dumps(alert)

        # the fix serves, and the alert resolves
        project.views(FIXED)
        fixed = project.apply("--allow-breaking")
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        until(
            lambda: (
                served(client)["values"]["user_clicks__clicks"]
                == 1.0 * before["values"]["user_clicks__clicks"]
            ),
            60,
            "the fixed version does not serve",
        )
        until(
            lambda: any("resolved" in json.dumps(p).lower() for p in Receiver.posted),
            120,
            "the alert never resolved",
        )

        # the grace period over (0 s here), the rows of the replaced version are deleted
        store = RegistryStore(project.env["FEATUREPLANE_REGISTRY"])
        old = {v["name"]: v["version"] for v in store.get(2).registry["feature_views"]}
        online = open_store(store.get(4).registry["online_store"])
        until(
            lambda: online.read("user_clicks", old["user_clicks"], [(1,), (2,)]) == [None, None],
            60,
            "the replaced version's online rows were not deleted",
        )
        kept = online.read("user_click_totals", old["user_click_totals"], [(1,)])
        assert kept != [None], "a version still served keeps its rows"
