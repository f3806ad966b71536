"""What every benchmark here shares: engines run in fresh processes, and how they are measured.

Each engine runs in a fresh Python process (`python -m bench.<name> --worker JOB`), so its peak
memory and CPU time are its own and the engines cannot warm each other's caches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from online.processes import stop
from online.server import free_port

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2  # DuckDB threads; Sail uses every core, and the machine this was written for has 2


def peak_rss_mib() -> float:
    """This process's peak resident set size (all threads, so Sail's server too), in MiB.

    `VmHWM` from /proc/self/status, which starts afresh at exec. `ru_maxrss` does not: Linux
    carries the pre-exec (forked parent's) peak into it, so a child of a parent that once held
    1 GiB reports at least 1 GiB. `ru_maxrss` is the fallback where /proc is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    """User and system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def base_parser(
    prog: str, description: str, engines: dict, default_out: Path
) -> argparse.ArgumentParser:
    """The command line every benchmark takes; each adds the sizes of its own data."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke size (seconds)")
    parser.add_argument("--repeats", type=int, help="timed runs per engine and case (3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (1)")
    parser.add_argument("--out", type=Path, default=default_out, help="JSON report path")
    parser.add_argument("--data-dir", type=Path, help="data/results dir (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and results")
    parser.add_argument("--engines", nargs="+", choices=list(engines), default=list(engines))
    parser.add_argument("--explain", action="store_true", help="print the plans before timing")
    parser.add_argument(
        "--engine",
        choices=["sail", "cluster", "both"],
        default="sail",
        help="where ours runs: Sail in-process, the local JVM Spark cluster, or both (sail)",
    )
    return parser


OURS_ON = {"sail": ["sail"], "cluster": ["cluster"], "both": ["sail", "cluster"]}
"""The Spark engines that `--engine` runs ours on."""


@contextmanager
def spark_engines(choice: str, data: Path) -> Iterator[dict[str, str | None]]:
    """{engine: Connect URL (None for Sail in-process)} for `--engine`, with the local JVM
    cluster (`featureplane.cluster`, jars from the project's `.jars/`) running when chosen."""
    from featureplane import cluster

    engines = OURS_ON[choice]
    if "cluster" not in engines:
        yield {"sail": None}
        return
    began = time.perf_counter()
    with cluster.running(data / "cluster", ROOT / ".jars", connect_port=0) as started:
        print(f"local Spark cluster started in {time.perf_counter() - began:.1f}s")
        yield {engine: started.connect_url if engine == "cluster" else None for engine in engines}


def ours_key(engine: str) -> str:
    """The report key of ours on an engine: `ours` on Sail (as before), `ours_cluster`."""
    return "ours" if engine == "sail" else f"ours_{engine}"


@contextmanager
def ours_session(job: dict):
    """The Spark session of a job: the Connect server at `job["remote"]`, else Sail."""
    from featureplane.spark_session import spark_session

    remote = job.get("remote")
    with spark_session("connect", remote) if remote else spark_session("local") as spark:
        yield spark


def time_writes(label: str, runs: range, result: Callable, out: Path) -> tuple[list[dict], str]:
    """Time `result()` (a lazy Spark DataFrame) written to a new Delta table, once per run.

    Returns the timings (total, CPU, planning call, write) and the last run's table, which is
    kept for the comparison; earlier runs' tables are deleted.
    """
    timings = []
    for run in runs:
        target = out / f"run{run}"
        cpu, started = cpu_seconds(), time.perf_counter()
        frame = result()
        planned = time.perf_counter()
        frame.write.format("delta").mode("overwrite").save(str(target))
        finished = time.perf_counter()
        timings.append(
            {
                "seconds": finished - started,
                "cpu_seconds": cpu_seconds() - cpu,
                "call": planned - started,
                "write": finished - planned,
            }
        )
        print(f"  {label} run {run}: {finished - started:7.2f}s")
        if run < runs[-1]:
            shutil.rmtree(target)
    return timings, str(target)


def scaling(cases: list[dict], size: str, engines) -> dict:
    """Per engine: seconds per million `size` units, and how time grew from the smallest case."""
    result = {}
    for engine in engines:
        timed = [(c[size], c[engine]["median_s"]) for c in cases if c.get(engine)]
        if len(timed) < 2:
            continue
        (small, t_small), (large, t_large) = min(timed), max(timed)
        result[engine] = {
            "seconds": {str(n): s for n, s in timed},
            "seconds_per_million": {str(n): round(s / n * 1e6, 3) for n, s in timed},
            "time_ratio": round(t_large / t_small, 2),
            "size_ratio": round(large / small, 2),
        }
    return result


def run_engine(module: str, engine: str, job: dict) -> dict:
    """Run one engine of `module` on one case in a fresh Python process; return its report."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({**job, "engine": engine}, handle)
        job_path = handle.name
    try:
        subprocess.run([sys.executable, "-m", module, "--worker", job_path], cwd=ROOT, check=True)
        return json.loads(Path(job_path).read_text())["report"]
    finally:
        os.unlink(job_path)


def worker(job_path: str, engines: dict[str, Callable[[dict], dict]]) -> None:
    """The worker side of `run_engine`: run the job's engine and write its report back."""
    job = json.loads(Path(job_path).read_text())
    job["report"] = engines[job["engine"]](job)
    Path(job_path).write_text(json.dumps(job))


def machine_info() -> dict:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            name: version(name)
            for name in ("pysail", "duckdb", "pyspark", "deltalake", "pyarrow", "numpy")
        },
        "duckdb_threads": THREADS,
    }


@contextmanager
def moto_server(timeout: float = 30.0, module: str = "moto.server") -> Iterator[str]:
    """A moto_server process (DynamoDB over real HTTP) on a free 127.0.0.1 port, run by
    `module` (the benchmark's is `bench.moto_dynamodb_server`); yields its endpoint URL and
    always stops it."""
    port = free_port()
    command = [sys.executable, "-m", module, "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)
