"""`featureplane`: the command line of the feature platform.

- `featureplane demo`: generate the synthetic data up to the current hour, materialize every
  demo feature partition through Dagster and push the online views, print a summary, then serve
  the registry over HTTP and print one feature vector of the `ctr` service; `--live` then keeps
  appending the events logged since, late ones included (`--append-only`: only that).
- `featureplane materialize`: compute feature views for a date range through Dagster.
- `featureplane validate`: load the repository and check every view's output on Spark (pandas
  functions run on a sample of rows).
- `featureplane registry`: write the serving registry of the repository (what `serve` reads).
- `featureplane plan`: what applying the repository would change in the applied registry, once
  every view's output checks out as in `validate` (`--no-validate` skips that).
- `featureplane apply`: write the repository as the next applied registry version, provision
  the online store and roll it out: the feature views whose version changed are backfilled
  through Dagster, and the version serves once they are (`--wait` shows it).
- `featureplane status`: the latest applied version's rollout, its backfill's progress.
- `featureplane list|describe|history`: the applied registry as a catalog.
- `featureplane serve`: serve feature services over HTTP with the Lambda handler's dispatch.
- `featureplane package lambda`: the AWS Lambda zip of the serving handler, with the serving
  registry and the pinned wheels it needs (`featureplane.lambda_package`); prints its size and
  times its cold start.
- `featureplane cluster start|stop|status`: a local Spark standalone cluster (a master, two
  workers) with a Spark Connect server and Delta Lake (`featureplane.cluster`); commands compute
  on it with `FEATUREPLANE_SPARK_REMOTE` set to the URL that `start` prints.
- `featureplane keys`: the public key that servers verify registry files with
  (`featureplane.signing`); `--generate` makes a new private key to sign them with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from contextlib import closing
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featureplane.access import Principals
    from featureplane.feature_view import FeatureView
    from featureplane.repository import Repository
    from featureplane.synthetic import DemoScale

DEFAULT_REPOSITORY = "feature_assets"


def _day(text: str) -> datetime:
    return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)


def _materialize(
    repository: str,
    start: datetime | None,
    end: datetime,
    views: list[str] | None,
    training: bool = False,
    allow_volume_drop: bool = False,
):
    from featureplane.dagster.materialize import materialize_repository
    from featureplane.quality.volume import FORCE_TAG

    tags = {FORCE_TAG: "true"} if allow_volume_drop else None
    return materialize_repository(repository, start, end, views, training, tags)


def _print_materialized(results, elapsed: float) -> None:
    width = max((len(r.asset_key.to_user_string()) for r in results), default=10)
    print(f"\n{'asset':<{width}}  {'partitions':>10}  {'rows':>10}  {'pushed rows/s':>13}")
    for r in sorted(results, key=lambda r: r.asset_key.to_user_string()):
        speed = f"{r.rows_per_second:>13,.0f}" if r.rows_per_second is not None else ""
        print(
            f"{r.asset_key.to_user_string():<{width}}  {r.partitions:>10}  {r.rows:>10,}  {speed}"
        )
    total = sum(r.partitions for r in results)
    print(f"{len(results)} assets, {total} partitions materialized in {elapsed:.1f}s")


def cmd_demo(args: argparse.Namespace) -> int:
    from featureplane import synthetic
    from featureplane.settings import data_dir

    began = time.perf_counter()
    scale = synthetic.SCALES[args.scale]
    raw = data_dir() / "raw"
    if args.days and (args.live or args.append_only):
        raise SystemExit("error: --days generates fixed past data, which nothing appends to")
    if args.interval <= 0:
        raise SystemExit(
            f"error: --interval must be a positive number of seconds, got {args.interval:g}"
        )
    if args.append_only:
        return _append_live(raw, scale, args.interval)
    until = None if args.days else datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    scale = replace(scale, days=args.days) if args.days else scale.through(until)
    counts = synthetic.generate(raw, scale, until)
    generated = time.perf_counter()
    print(f"generated {sum(counts.values()):,} rows into {raw} in {generated - began:.1f}s")
    end = until or scale.start + timedelta(days=scale.days)
    results = _materialize(DEFAULT_REPOSITORY, None, end, None, training=True)
    _print_materialized(results, time.perf_counter() - generated)
    latest = _print_training_preview("ctr_training")
    _print_served_vector("ctr", latest, as_of=None if until else end)
    print(f"demo finished in {time.perf_counter() - began:.1f}s")
    print(
        "\nOpen the Dagster UI:  make ui   "
        f"(DAGSTER_HOME={os.environ['DAGSTER_HOME']} dagster dev -w workspace.yaml, "
        "then http://127.0.0.1:3000)"
    )
    return _append_live(raw, scale, args.interval) if args.live else 0


def _append_live(raw: Path, scale: DemoScale, interval: float) -> int:
    """Every `interval` seconds, append to the demo's sources the events logged since the last
    write (late ones of earlier hours included), one line per append, until interrupted."""
    from featureplane import synthetic

    since = synthetic.logged_until(raw)
    if since is None:
        raise SystemExit(f"error: {raw} holds no live demo data: run `featureplane demo` first")
    print(f"appending synthetic events to {raw} every {interval:g} s (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(interval)
            until = datetime.now(UTC)
            tables = synthetic.append(raw, scale, since, until)
            rows = ", ".join(f"{t.num_rows:,} {name}" for name, t in tables.items())
            late = [synthetic.late_events(t) for t in tables.values()]
            oldest = min((t["ts"][0].as_py() for t in late if t.num_rows), default=None)
            late_text = f", the oldest of {oldest:%Y-%m-%d %H:%M}" if oldest else ""
            print(
                f"{until:%Y-%m-%d %H:%M:%S} appended {rows} logged since {since:%H:%M:%S} "
                f"({sum(t.num_rows for t in late):,} late{late_text})",
                flush=True,
            )
            since = until
    except KeyboardInterrupt:
        return 0


def _print_training_preview(name: str, rows: int = 3) -> dict:
    """Print the dataset's size and its last impressions; return the latest one's row."""
    from pyspark.sql import functions as F

    from featureplane.feature_store import FeatureStore

    with FeatureStore.from_repo(DEFAULT_REPOSITORY) as store:
        dataset = store.get_training_dataset(name)
        total = dataset.count()
        last_day = dataset.agg(F.max(F.to_date("ts"))).first()[0]
        latest = dataset.where(F.to_date("ts") == F.lit(last_day)).orderBy("ts").limit(rows)
        frame = latest.toPandas()
    print(f"\n{name}: {total:,} rows; {rows} impressions of {last_day}, one per column:")
    print(frame.T.to_string(header=False))
    return frame.iloc[-1].to_dict()


def _print_served_vector(
    service: str, row: dict, as_of: datetime | None, timeout: float = 60.0
) -> None:
    """Write the registry, serve it (with `as_of`, on a request clock set to then: the end of
    fixed demo data in the past) on a free local port, fetch the service's features for the
    entity of `row` over HTTP with the Python client and print them; the server always stops."""
    from featureplane.registry import build_registry, write_registry
    from featureplane.repository import Repository
    from featureplane.settings import data_dir, online_store_settings, registry_path
    from online.client import FeatureClient
    from online.server import serving_process

    key, principals = _demo_key()
    repository = Repository.load(DEFAULT_REPOSITORY)
    registry = build_registry(repository, online_store_settings(), principals)
    path = write_registry(registry, registry_path())
    env = {"FEATUREPLANE_AS_OF": as_of.isoformat()} if as_of else None
    asked = as_of or datetime.now(UTC)
    with (
        serving_process(path, env=env, timeout=timeout) as url,
        FeatureClient(url, timeout, api_key=key) as client,
    ):
        [spec] = [s for s in client.services() if s["name"] == service]
        entities = {key["name"]: int(row[key["name"]]) for key in spec["join_keys"]}
        # the demo's one request field, request_ts, is the time of the request: the serving time
        request_data = {field["name"]: asked.isoformat() for field in spec["request_data"]}
        result = client.get_features(service, entities, request_data)
    when = f"as of {as_of}" if as_of else f"at {asked:%Y-%m-%d %H:%M:%S} UTC"
    print(
        f"\n{service} served over HTTP at {url} {when} for {entities} (registry {path}; "
        f"as {DEMO_CLIENT}, whose key is in {data_dir() / f'{DEMO_CLIENT}.key'}):"
    )
    width = max(map(len, result["values"]))
    for feature, value in result["values"].items():
        age = result["age_seconds"][feature]
        shown = f"{value:.4g}" if isinstance(value, float) else repr(value)
        age_text = "" if age is None else f"age {age / 3600:,.1f} h"
        print(f"  {feature:<{width}}  {shown:>12}  {result['status'][feature]:<8} {age_text}")


DEMO_CLIENT = "demo-client"


def _demo_key() -> tuple[str, Principals]:
    """A fresh API key of the demo's principal (made on the first run), also written to
    `<data dir>/demo-client.key` (readable by its owner only) for clients started by hand,
    and the principals in force with it."""
    from featureplane.access.admin import change_keys
    from featureplane.settings import data_dir

    def edit(principals):
        now = datetime.now(UTC)
        if DEMO_CLIENT in principals.by_name:
            changed, key = principals.rotate(DEMO_CLIENT, now, timedelta(0))
        else:
            changed, key = principals.create(DEMO_CLIENT, now, groups=["demo"])
        return changed, key, f"key {changed.by_name[DEMO_CLIENT].keys[-1].id} of {DEMO_CLIENT} made"

    change, key = change_keys(_store(), edit)
    path = data_dir() / f"{DEMO_CLIENT}.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(f"{key}\n")
    return key, change.principals  # type: ignore[return-value]


def cmd_materialize(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    results = _materialize(
        args.repository,
        _day(args.start),
        _day(args.end),
        args.views or None,
        allow_volume_drop=args.allow_volume_drop,
    )
    _print_materialized(results, time.perf_counter() - began)
    return 0


def _validated(repository: Repository) -> list[tuple[FeatureView, str]]:
    """(view, what was run beyond the schema check) for every feature view, once each output
    checks out on Spark; the first that does not raises its one-line error
    (`featureplane.compute.validation`)."""
    from featureplane.compute.validation import validate_view
    from featureplane.spark_session import spark_session

    with spark_session() as spark:
        return [(view, validate_view(spark, view)) for view in repository.feature_views.values()]


def cmd_validate(args: argparse.Namespace) -> int:
    for view, ran in _validated(_load(args.repository)):
        note = f"  ({ran})" if ran else ""
        print(f"ok  {view.name:<32} {view.mode:<10} version {view.version}{note}")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from featureplane.registry import build_registry, write_registry
    from featureplane.repository import Repository
    from featureplane.settings import online_store_settings, registry_path

    registry = build_registry(Repository.load(args.repository), online_store_settings())
    path = write_registry(registry, args.out or registry_path())
    views, services = len(registry["feature_views"]), len(registry["feature_services"])
    print(f"wrote the registry of {services} services and {views} views to {path}")
    return 0


def _store():
    """The applied registry's versions, at `<offline root>/registry`."""
    from featureplane.registry_store import RegistryStore
    from featureplane.settings import registry_store_location

    return RegistryStore(registry_store_location())


def _plan(repository: Repository):
    """(plan, desired registry, store): the repository against the latest applied registry."""
    from featureplane.plan import diff
    from featureplane.registry import build_registry
    from featureplane.settings import online_store_settings

    desired = build_registry(repository, online_store_settings())
    store = _store()
    applied = store.latest()
    if applied is None:
        return diff(None, desired), desired, store
    return diff(applied.registry, desired, applied.version), desired, store


def _load(package: str) -> Repository:
    from featureplane.repository import Repository

    return Repository.load(package)


def _checked_plan(args: argparse.Namespace):
    """(repository, plan, desired registry, store) of the `--repository`; a view whose output
    fails validation on Spark raises its one-line error first, unless --no-validate."""
    repository = _load(args.repository)
    planned = _plan(repository)
    if not args.no_validate:
        _validated(repository)
    return repository, *planned


def cmd_plan(args: argparse.Namespace) -> int:
    _, plan, _, _ = _checked_plan(args)
    print(json.dumps(plan.as_json(), indent=2) + "\n" if args.json else plan.text(), end="")
    return 2 if args.detailed_exitcode and not plan.empty else 0


def _confirmed(yes: bool) -> bool:
    """--yes, or a `yes` typed at the terminal; never a guess when nobody can answer."""
    if yes:
        return True
    if not sys.stdin.isatty():
        print(
            "error: nothing applied; stdin is not a terminal to confirm on: "
            "review the plan, then apply with --yes",
            file=sys.stderr,
        )
        return False
    answer = input("Apply these changes? Only 'yes' is accepted: ").strip()
    if answer != "yes":
        print("Apply cancelled: nothing applied.", file=sys.stderr)
        return False
    return True


def cmd_apply(args: argparse.Namespace) -> int:
    """Plan, confirm, write the next registry version, provision the online store, and roll
    the version out: at once when nothing needs recomputing, else through the control plane
    (the code location reloads; its rollout sensor backfills, then serves the version)."""
    from featureplane.access.admin import acting_principal
    from featureplane.online_store import open_store
    from featureplane.rollout import cut_over, rolled_out, work

    repository, plan, desired, store = _checked_plan(args)
    print(plan.text())
    if plan.empty:
        return 0
    if plan.breaking and not args.allow_breaking:
        print("error: the plan breaks consumers; apply it with --allow-breaking", file=sys.stderr)
        return 1
    by = acting_principal(store, os.environ.get("FEATUREPLANE_API_KEY"))
    if not _confirmed(args.yes):
        return 1
    serving = rolled_out(store, store.latest())  # what the rollout sensor compares with
    applied = store.apply(desired, plan.applied_version, plan.change_list(), applied_by=by)
    print(f"Applied registry version {applied.version} to {store.location}.")
    with closing(open_store(desired["online_store"])) as online:
        online.ensure_table()
    print(f"Online store ready: {desired['online_store']['type']}.")
    needed = work(serving, applied)
    if args.no_backfill or not needed:
        if needed:
            print(f"Not recomputing {', '.join(needed.names())} (--no-backfill).")
        cut_over(store, applied.version, by)
        print(f"Registry version {applied.version} serves.")
        return 0
    print(
        f"Registry version {applied.version} serves once the backfill of "
        f"{', '.join(needed.names())} succeeds; until then "
        f"{f'version {serving.version}' if serving else 'nothing'} serves."
    )
    _reload_code_location()
    return _wait(applied.version, args.timeout) if args.wait else 0


def _reload_code_location() -> None:
    """Make the Dagster webserver's code locations load the applied code, or say why not."""
    from featureplane.dagster.lifecycle import reload_code_locations
    from featureplane.settings import dagster_url

    url = dagster_url()
    names = reload_code_locations(url)
    if names is None:
        print(
            f"No Dagster webserver at {url}: the backfill launches once a code location "
            "with this code runs the rollout sensor (make ui)."
        )
        return
    print(f"Reloaded code location {', '.join(names)} at {url}: its rollout sensor backfills.")


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'-' * (width - filled)}] {100 * done // max(total, 1):>3}%"


def _rollout_lines(version: int) -> tuple[list[str], str]:
    """What the rollout of a registry version got to, as lines, and its state: `serves`,
    `running` (until the version serves), `failed` or `canceled`."""
    from featureplane.dagster.lifecycle import applied_backfill, outcome, progress, project_instance
    from featureplane.rollout import rolled_out

    store = _store()
    serving = rolled_out(store, store.latest())
    if serving is not None and serving.version >= version:
        return [f"registry version {serving.version} serves"], "serves"
    with project_instance() as instance:
        backfill = applied_backfill(instance, version)
    waiting = f"{f'version {serving.version}' if serving else 'nothing'} serves"
    if backfill is None:
        return [
            f"registry version {version} waits for its backfill ({waiting}): the rollout "
            "sensor launches it once the Dagster daemon runs this code (make ui)"
        ], "running"
    result = outcome(backfill)
    lines = [f"backfill {backfill.backfill_id} of version {version}: {result or 'running'}"]
    width = max(len(p.asset) for p in progress(backfill))
    for p in progress(backfill):
        failed = f", {p.failed} failed" if p.failed else ""
        lines.append(f"  {p.asset:<{width}}  {_bar(p.done, p.total)}  {p.done}/{p.total}{failed}")
    if result in (None, "succeeded"):
        lines.append(f"  {waiting}; version {version} serves once the rollout sensor sees it done")
        return lines, "running"
    lines.append(f"  {waiting}: fix the failure, then apply again (or rerun the backfill)")
    return lines, result


def _wait(version: int, timeout: float) -> int:
    """Print the rollout's progress until the version serves (0) or its backfill ends
    otherwise (1); 1 after `timeout` seconds too."""
    deadline = time.monotonic() + timeout
    shown: list[str] = []
    while True:
        lines, state = _rollout_lines(version)
        if lines != shown:
            print("\n".join(lines), flush=True)
            shown = lines
        if state == "serves":
            return 0
        if state != "running":
            print(f"error: the backfill of version {version} {state}", file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            print(f"error: version {version} does not serve after {timeout:.0f}s", file=sys.stderr)
            return 1
        time.sleep(2)


def cmd_status(args: argparse.Namespace) -> int:
    """The latest applied version's rollout: its backfill's progress and outcome."""
    applied, _ = _applied()
    if applied is None:
        return 1
    lines, state = _rollout_lines(applied.version)
    print("\n".join(lines))
    return 0 if state in ("serves", "running") else 1


def _applied():
    """The latest applied registry version and its store; None before the first apply."""
    store = _store()
    applied = store.latest()
    if applied is None:
        print("error: nothing applied yet; run `featureplane apply` first", file=sys.stderr)
    return applied, store


def cmd_list(args: argparse.Namespace) -> int:
    from featureplane.catalog import SECTIONS, list_lines

    applied, _ = _applied()
    if applied is None:
        return 1
    kinds = {section: kind for kind, section in SECTIONS.items()}
    for line in list_lines(applied.registry, kinds.get(args.kind)):
        print(line)
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from featureplane.catalog import SECTIONS, describe_lines, find, serving_line

    applied, store = _applied()
    if applied is None:
        return 1
    try:
        kind, _ = find(applied.registry, args.name)
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 1
    repository = _load(args.repository)
    defined = (getattr(repository, section).get(args.name) for section in SECTIONS.values())
    definition = next((obj.location for obj in defined if obj is not None), None)
    from featureplane.dagster.lifecycle import materializations_of

    lines = describe_lines(
        applied.registry, args.name, definition, materializations_of(kind, args.name)
    )
    print(f"(applied registry version {applied.version}; {serving_line(store)})")
    print("\n".join(lines))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """The versions, oldest first, then the access changes; a corrupt version is a line in
    place and its one-line error at the end (exit 1), so the readable history is still
    shown."""
    from featureplane.access.admin import history_lines
    from featureplane.catalog import history, serving_line

    store = _store()
    access = history_lines(store, args.name)
    if not store.versions() and not access:
        print("error: nothing applied yet; run `featureplane apply` first", file=sys.stderr)
        return 1
    entries = history(store, args.name) if store.versions() else []
    if not entries and not access:
        print(f"error: no applied version or access change named {args.name!r}", file=sys.stderr)
        return 1
    for entry in entries:
        print("\n".join(entry.lines()))
    if store.versions():
        print(serving_line(store))
    for lines in access:
        print(lines)
    unreadable = [entry.corrupt for entry in entries if entry.corrupt]
    for corrupt in unreadable:
        print(f"error: {type(corrupt).__name__}: {corrupt}", file=sys.stderr)
    return 1 if unreadable else 0


def cmd_access(args: argparse.Namespace) -> int:
    """`featureplane access create|list|rotate|revoke`: a change is a new access document of
    the registry store, which servers following it take up on their next look."""
    from featureplane.access.admin import acting_principal, change_keys, listing
    from featureplane.durations import in_words
    from featureplane.rollout import write_serving_file

    store = _store()
    if args.action == "list":
        print("\n".join(listing(store)))
        return 0
    by = acting_principal(store, os.environ.get("FEATUREPLANE_API_KEY"))
    now = datetime.now(UTC)

    def edit(principals):
        if args.action == "create":
            kind = "user" if args.user else "service_account"
            limits = (args.requests_per_second, args.rows_per_second)
            changed, key = principals.create(
                args.name, now, kind, args.group, args.identity, *limits
            )
            first = changed.by_name[args.name].keys[-1].id
            return changed, key, f"principal {args.name} created with key {first}"
        if args.action == "rotate":
            changed, key = principals.rotate(args.name, now, args.grace)
            new = changed.by_name[args.name].keys[-1].id
            ends = in_words(args.grace) if args.grace else "now"
            return changed, key, f"key {new} of {args.name} made; its other keys end in {ends}"
        keys = f"key {args.key}" if args.key else "every key"
        return principals.revoke(args.name, now, args.key), None, f"{keys} of {args.name} revoked"

    change, key = change_keys(store, edit, by)
    write_serving_file(store)
    print(f"{change.meta['change']} (access change {change.number} at {store.location}).")
    if key:
        print(f"API key (shown only now; servers take it up within their refresh):\n{key}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from featureplane.registry_store import is_store_location
    from featureplane.serving.server import AUTH_OFF
    from featureplane.settings import registry_location

    registry = args.registry or registry_location()
    if not (is_store_location(registry) or os.path.exists(registry)):
        print(f"error: no registry at {registry}; run `featureplane apply` first", file=sys.stderr)
        return 1
    from online.server import serve

    if args.as_of:
        os.environ["FEATUREPLANE_AS_OF"] = args.as_of
    if args.no_auth:
        os.environ["FEATUREPLANE_NO_AUTH"] = "1"
        print(f"WARNING: {AUTH_OFF}", file=sys.stderr)
    serve(registry, args.host, args.port, args.workers, args.compute_workers)
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    """Build the Lambda zip, print its size and environment, then time its cold start."""
    from featureplane import lambda_package as package
    from featureplane.registry_store import is_store_location
    from featureplane.settings import registry_location, registry_store_location

    store = registry_store_location()
    registry = args.registry or (store if is_store_location(store) else registry_location())
    began = time.perf_counter()
    built = package.build(args.out, registry, follow=args.follow)
    size = built.size / 2**20
    print(f"wrote {built.path}: {size:.1f} MiB in {time.perf_counter() - began:.0f}s")
    print(f"  serving {registry}" + (" (followed)" if args.follow else " (embedded)"))
    print(f"  and {built.path.with_name('Dockerfile')}: the same package as a container image")
    print("handler online.handler.handler, runtime python3.11 on x86_64, environment:")
    for name, value in built.environment.items():
        print(f"  {name}={value}")
    if args.cold_starts:
        event = package.sample_event(built.registry)
        starts = package.cold_starts(built, event, args.cold_starts, {"FEATUREPLANE_NO_AUTH": "1"})
        print(
            f"cold start, median of {len(starts)} fresh interpreters on the unzipped package "
            f"({event['httpMethod']} {event['path']}, without auth): "
            f"import {package.median_ms([s.import_seconds for s in starts]):.0f} ms, "
            f"first answer {package.median_ms([s.answer_seconds for s in starts]):.0f} ms, "
            f"status {', '.join(sorted({str(s.status) for s in starts}))}"
        )
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    """Start, stop or describe the local Spark cluster (`featureplane.cluster`)."""
    from featureplane import cluster
    from featureplane.settings import cluster_dir

    home = cluster_dir()
    if args.action == "start":
        print(f"starting a Spark master, {args.workers} workers and a Connect server ...")
        started = cluster.start(home, workers=args.workers, connect_port=args.port)
        print(f"started in {started.started_seconds:.1f}s; logs in {home / 'logs'}")
        print(f"master UI {started.master_ui}")
        print(f"export FEATUREPLANE_SPARK_REMOTE={started.connect_url}")
        return 0
    if args.action == "stop":
        print("stopped" if cluster.stop(home) else f"no cluster was started from {home}")
        return 0
    running = cluster.Cluster.load(home)
    if running is None:
        print(f"no cluster was started from {home}")
        return 1
    alive = running.alive()
    for name, pid in running.pids.items():
        print(f"{name:<10} pid {pid:<8} {'running' if alive[name] else 'gone'}")
    print(f"workers registered: {running.workers()}; Connect {running.connect_url}")
    return 0 if all(alive.values()) else 1


def cmd_keys(args: argparse.Namespace) -> int:
    """Print the public key to give servers (stdout: nothing else, to pipe), or a new private
    key and its public key with --generate."""
    from featureplane.settings import signing_key
    from featureplane.signing import (
        Ed25519Signer,
        decode_key,
        generate_key,
        local_key_path,
        signer,
    )

    if args.generate:
        key = generate_key()
        public = Ed25519Signer(decode_key(key, "the new key")).public_key_text
        print(key)
        print(
            f"the private key for FEATUREPLANE_SIGNING_KEY; its public key: {public}",
            file=sys.stderr,
        )
        return 0
    current = signer()
    source = "FEATUREPLANE_SIGNING_KEY" if signing_key() else str(local_key_path())
    print(current.public_key_text)
    print(
        f"key {current.key_id} ({source}): give servers FEATUREPLANE_VERIFY_KEYS with it",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from featureplane.plan import KINDS

    parser = argparse.ArgumentParser(prog="featureplane", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--verbose", action="store_true", help="print an error's traceback, not only its line"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate demo data and materialize all features")
    demo.add_argument("--scale", choices=["demo", "bench"], default="demo")
    demo.add_argument("--days", type=int, help="days of events from the start (default: to now)")
    live = demo.add_mutually_exclusive_group()
    live.add_argument("--live", action="store_true", help="then keep appending events")
    live.add_argument("--append-only", action="store_true", help="only append (as `make ui` does)")
    demo.add_argument("--interval", type=float, default=180.0, help="seconds between appends")
    demo.set_defaults(run=cmd_demo)

    materialize = commands.add_parser("materialize", help="compute feature views for a range")
    materialize.add_argument("views", nargs="*", help="feature view names (default: all)")
    materialize.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    materialize.add_argument("--end", required=True, help="day after the last, YYYY-MM-DD")
    materialize.add_argument("--repository", default=DEFAULT_REPOSITORY)
    materialize.add_argument(
        "--allow-volume-drop",
        action="store_true",
        help="replace windows even with far fewer rows than they hold (the volume guard)",
    )
    materialize.set_defaults(run=cmd_materialize)

    validate = commands.add_parser("validate", help="load the repository and check outputs")
    validate.add_argument("--repository", default=DEFAULT_REPOSITORY)
    validate.set_defaults(run=cmd_validate)

    registry = commands.add_parser("registry", help="write the serving registry")
    registry.add_argument("--repository", default=DEFAULT_REPOSITORY)
    registry.add_argument("--out", help="file to write (default: <data dir>/registry.json)")
    registry.set_defaults(run=cmd_registry)

    plan = commands.add_parser("plan", help="show what apply would change")
    plan.add_argument("--repository", default=DEFAULT_REPOSITORY)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 without changes, 2 with changes, 1 on error",
    )
    plan.add_argument(
        "--no-validate",
        action="store_true",
        help="do not check the views' outputs on Spark (which reads the sources' schemas)",
    )
    plan.set_defaults(run=cmd_plan)

    apply = commands.add_parser("apply", help="write the next applied registry version")
    apply.add_argument("--repository", default=DEFAULT_REPOSITORY)
    apply.add_argument("--yes", action="store_true", help="apply without asking")
    apply.add_argument(
        "--allow-breaking", action="store_true", help="apply changes that break consumers"
    )
    apply.add_argument(
        "--no-backfill",
        action="store_true",
        help="serve the new version at once, without recomputing changed feature views",
    )
    apply.add_argument(
        "--wait", action="store_true", help="show the rollout until the new version serves"
    )
    apply.add_argument(
        "--timeout", type=float, default=3600, help="seconds --wait waits (default 3600)"
    )
    apply.add_argument(
        "--no-validate",
        action="store_true",
        help="do not check the views' outputs on Spark (which reads the sources' schemas)",
    )
    apply.set_defaults(run=cmd_apply)

    status = commands.add_parser("status", help="the latest applied version's rollout")
    status.set_defaults(run=cmd_status)

    list_ = commands.add_parser("list", help="list the applied objects, of one kind or all")
    list_.add_argument("kind", nargs="?", choices=[section for _, section in KINDS])
    list_.set_defaults(run=cmd_list)

    describe = commands.add_parser("describe", help="one applied object in full")
    describe.add_argument("name")
    describe.add_argument("--repository", default=DEFAULT_REPOSITORY)
    describe.set_defaults(run=cmd_describe)

    history = commands.add_parser("history", help="the applied versions (that changed name)")
    history.add_argument("name", nargs="?")
    history.set_defaults(run=cmd_history)

    serve = commands.add_parser("serve", help="serve feature services over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--registry", help="registry file or store (default: $FEATUREPLANE_REGISTRY)"
    )
    serve.add_argument(
        "--workers", type=int, help="server processes, sharing the port (default: one per core)"
    )
    serve.add_argument(
        "--compute-workers",
        type=int,
        help="processes per server process that compute requests of more than "
        "$FEATUREPLANE_INLINE_ROWS rows, in fair order by principal (default: the cores shared "
        "out, at least 1; 0: compute every request on the event loop)",
    )
    serve.add_argument(
        "--as-of",
        help="serve as of this fixed ISO 8601 time, e.g. to replay history "
        "(default: now; sets $FEATUREPLANE_AS_OF)",
    )
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="serve every request without an API key (local work only; logged loudly)",
    )
    serve.set_defaults(run=cmd_serve)

    package = commands.add_parser("package", help="build a deployable artifact")
    artifacts = package.add_subparsers(dest="artifact", required=True)
    lambda_ = artifacts.add_parser("lambda", help="the AWS Lambda zip of the serving handler")
    lambda_.add_argument(
        "--out", type=Path, default=Path("dist/featureplane-lambda.zip"), help="the zip to write"
    )
    lambda_.add_argument(
        "--registry",
        help="the registry store or file whose serving version is embedded (default: the "
        "applied registry, <offline root>/registry)",
    )
    lambda_.add_argument(
        "--follow",
        action="store_true",
        help="embed nothing: the function follows the --registry store (s3://) as it changes",
    )
    lambda_.add_argument(
        "--cold-starts", type=int, default=5, help="cold starts to time (0: none; default 5)"
    )
    package.set_defaults(run=cmd_package)

    access = commands.add_parser("access", help="principals, their API keys and what they read")
    actions = access.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every principal, its keys and what it may read")
    create = actions.add_parser("create", help="a new principal, and its first API key")
    create.add_argument("name")
    create.add_argument("--user", action="store_true", help="a person, not a service account")
    create.add_argument("--group", action="append", default=[], help="a group (repeatable)")
    create.add_argument(
        "--identity",
        action="append",
        default=[],
        help="a caller API Gateway or IAM establishes that stands for it: an IAM ARN, a JWT "
        "subject, a Lambda authorizer's principal id (repeatable)",
    )
    create.add_argument("--requests-per-second", type=float, help="its request budget")
    create.add_argument("--rows-per-second", type=float, help="its budget of entity rows")
    rotate = actions.add_parser("rotate", help="a new API key; the old ones end after --grace")
    rotate.add_argument("name")
    rotate.add_argument(
        "--grace",
        type=_duration,
        default=timedelta(hours=24),
        help="how long the old keys stay valid, e.g. 24h, 30m, 0 (default 24h)",
    )
    revoke = actions.add_parser("revoke", help="end a principal's keys now")
    revoke.add_argument("name")
    revoke.add_argument("--key", help="only this key (its id); default every key")
    access.set_defaults(run=cmd_access)

    spark_cluster = commands.add_parser(
        "cluster", help="a local Spark standalone cluster with Spark Connect and Delta"
    )
    spark_cluster.add_argument("action", choices=["start", "stop", "status"])
    spark_cluster.add_argument("--workers", type=int, default=2, help="workers of one core each")
    spark_cluster.add_argument(
        "--port", type=int, default=15002, help="the Connect server's port (0: a free one)"
    )
    spark_cluster.set_defaults(run=cmd_cluster)

    keys = commands.add_parser("keys", help="the public key servers verify the registry with")
    keys.add_argument(
        "--generate",
        action="store_true",
        help="print a new private key for FEATUREPLANE_SIGNING_KEY instead",
    )
    keys.set_defaults(run=cmd_keys)
    return parser


def _duration(text: str) -> timedelta:
    """`24h`, `30m`, `45s`, `2d` or `0`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 24h or 30m") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return timedelta(seconds=seconds)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, os.getcwd())
    from featureplane.errors import (
        AccessError,
        ClusterError,
        DefinitionError,
        InstanceError,
        MaterializationFailed,
        RegistryCorrupt,
        RegistryUntrusted,
        SettingError,
        SigningKeyError,
    )
    from featureplane.lambda_package import PackageError
    from featureplane.registry_store import CutOverRefused, RegistryConflict

    try:
        return args.run(args)
    except (
        AccessError,
        ClusterError,
        DefinitionError,
        InstanceError,
        RegistryConflict,
        RegistryCorrupt,
        RegistryUntrusted,
        SettingError,
        SigningKeyError,
        MaterializationFailed,
        CutOverRefused,
        PackageError,
    ) as exc:
        if args.verbose:
            traceback.print_exception(exc, file=sys.stderr)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
