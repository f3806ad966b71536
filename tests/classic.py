"""Run compute functions on classic JVM PySpark in a subprocess, and bring the results back.

Spark Connect (Sail, which the rest of the suite uses) and classic PySpark cannot share a
process: opening a Connect session switches pyspark to Connect process-wide. So a test names a
producer, `module:function` taking a Spark session and returning {name: DataFrame}; this module
runs it on classic PySpark (local[2]) in a process session of its own, returns each output's
fields ([name, type, nullable]) and rows (Arrow), and checks that nothing is left running.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
CONNECT_ENV = ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE", "SPARK_API_MODE")
CLASSIC_CONF = {
    "spark.master": "local[2]",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    "spark.driver.memory": "512m",
    "spark.driver.extraJavaOptions": "-XX:+UseSerialGC -XX:TieredStopAtLevel=1",
    "spark.databricks.delta.snapshotPartitions": "2",  # 50 tasks per table read otherwise
}
Results = dict[str, tuple[list, pa.Table]]


def results(outputs: dict) -> Results:
    """Each DataFrame's fields ([name, Spark type, nullable]) and rows as Arrow."""
    return {
        name: (
            [[f.name, f.dataType.simpleString(), f.nullable] for f in df.schema.fields],
            df.toArrow(),
        )
        for name, df in outputs.items()
    }


def _producer(path: str):
    module, function = path.split(":")
    return getattr(importlib.import_module(module), function)


def _session_processes(sid: int) -> list[str]:
    """Live processes (zombies aside) of session `sid`: what a subprocess run left behind."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _ppid, _pgrp, session = text.rsplit(")", 1)[1].split()[:4]
        if int(session) == sid and state != "Z":
            found.append(text.split(" ", 1)[0] + " " + text[text.index("(") : text.rindex(")") + 1])
    return found


def _kill(entries: list[str]) -> None:
    for entry in entries:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(entry.split()[0]), signal.SIGKILL)


def run_on_classic(producer: str, out: Path, timeout: float = 300, delta: bool = False) -> Results:
    """The producer's outputs computed on classic PySpark, in a subprocess (with Delta Lake's
    jars from the project's cache when `delta`, as `featureplane.cluster.delta_conf` gives: with
    S3A too where `FEATUREPLANE_OFFLINE_ROOT` is an `s3://` URI).

    Raises AssertionError with the subprocess's log if it fails, times out or leaves processes.
    """
    env = {k: v for k, v in os.environ.items() if k not in CONNECT_ENV}
    env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    tests = str(Path(__file__).parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), tests, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), producer, str(out), "delta" * delta],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its JVM and Python workers share its session id
    )
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(_session_processes(proc.pid))
        proc.kill()
        log, _ = proc.communicate()
        raise AssertionError(f"classic PySpark run timed out:\n{log[-4000:]}") from None
    left: list[str] = []
    for _ in range(50):  # the Python workers exit shortly after the JVM
        left = _session_processes(proc.pid)
        if not left:
            break
        time.sleep(0.2)
    _kill(left)
    assert proc.returncode == 0, f"classic PySpark run failed:\n{log[-4000:]}"
    assert not left, f"the classic PySpark run left processes behind: {left}"
    info = json.loads((out / "info.json").read_text())
    assert info["session"] == "pyspark.sql.session", info  # classic, not Spark Connect
    assert info["jvm_exit_code"] == 0, info
    return {
        name: (
            json.loads((out / f"{name}.schema.json").read_text()),
            pq.read_table(out / f"{name}.parquet"),
        )
        for name in info["outputs"]
    }


def main(producer: str, out_dir: str, delta: str = "") -> None:
    from pyspark import SparkContext

    from featureplane.cluster import delta_conf, jars_dir
    from featureplane.spark_session import spark_session

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conf = {**CLASSIC_CONF, **(delta_conf(jars_dir()) if delta else {})}
    with spark_session("classic", conf=conf) as spark:
        spark.sparkContext.setLogLevel("ERROR")
        computed = results(_producer(producer)(spark))
        info = {"spark": spark.version, "session": type(spark).__module__}
    # Stop the JVM now rather than at interpreter exit: it exits when its stdin closes.
    gateway = SparkContext._gateway
    gateway.shutdown()
    gateway.proc.stdin.close()
    info["jvm_exit_code"] = gateway.proc.wait(timeout=60)
    info["outputs"] = list(computed)
    for name, (fields, table) in computed.items():
        pq.write_table(table, out / f"{name}.parquet")
        (out / f"{name}.schema.json").write_text(json.dumps(fields))
    (out / "info.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(*sys.argv[1:])
    sys.exit(0)
