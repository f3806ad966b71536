"""Validation of entities, sources and batch feature views: at definition time and at run time.

Every error must name the object, where it was written (`file:line`) and the problem.
"""

import ast
import inspect
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from pyspark.errors import PythonException
from pyspark.sql import functions as F

from featureplane import (
    BatchSource,
    DefinitionError,
    Entity,
    EntityError,
    FeatureViewError,
    Field,
    Int32,
    Int64,
    SourceError,
    String,
    batch_feature_view,
)
from featureplane.compute.transform import run_transformation
from featureplane.compute.window import TimeWindow
from featureplane.feature_view import schedule_cron

THIS_FILE = Path(__file__).name
START = datetime(2026, 1, 1, tzinfo=UTC)
USER = Entity("user", join_keys=["user_id"])
CLICKS = BatchSource("clicks", path="raw/clicks", timestamp_field="ts")
PAGE_VIEWS = BatchSource("page_views", path="raw/page_views", timestamp_field="ts")
VIEW = {
    "sources": [CLICKS],
    "entities": [USER],
    "schema": [Field("clicks_1d", Int64)],
    "timestamp_field": "ts",
    "feature_start_time": START,
}


def per_user(clicks):
    return clicks.groupBy("user_id").agg(F.max("ts").alias("ts"), F.count("*").alias("clicks_1d"))


def clicks_1d(clicks):
    return per_user(clicks)


def define(fn=None, **overrides):
    """A view of `fn` (default: `clicks_1d`) with VIEW's arguments, some overridden."""
    return batch_feature_view(**{**VIEW, **overrides})(fn or clicks_1d)


def check(error: DefinitionError, name: str, line: int, problem: str) -> None:
    """The error names `name`, this file at `line`, and a problem containing `problem`."""
    assert error.name == name
    assert error.location.endswith(f"{THIS_FILE}:{line}"), error.location
    assert problem in error.problem
    assert str(error) == f"{name} ({error.location}): {error.problem}"


def raised_at(raised: pytest.ExceptionInfo) -> int:
    """The line of this test where the raising constructor was called."""
    return raised.traceback[0].lineno + 1


def line_of(text: str) -> int:
    """The first line of this file containing `text`."""
    lines = Path(__file__).read_text().splitlines()
    return next(number for number, content in enumerate(lines, 1) if text in content)


# Entities and sources ----------------------------------------------------------------------------

SNAKE = "must be lower snake case"
OWNER = "must be an email address or 'team:<name>'"
ARITY = (
    "the function must take exactly {} positional parameters, one per source in order, "
    "but its signature is"
)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"name": "User"}, f"name 'User' {SNAKE}"),
        ({"name": "user-account"}, f"name 'user-account' {SNAKE}"),
        ({"join_keys": []}, "needs at least one join key"),
        ({"join_keys": ["user_id", "user_id"]}, "join keys ['user_id', 'user_id'] repeat a name"),
        ({"join_keys": ["UserId"]}, f"name 'UserId' {SNAKE}"),
        ({"owner": "alice"}, f"owner 'alice' {OWNER}"),
    ],
)
def test_entity_rejects(overrides, problem):
    arguments = {"name": "user", "join_keys": ["user_id"], **overrides}
    with pytest.raises(EntityError) as raised:
        Entity(**arguments)
    check(raised.value, arguments["name"], raised_at(raised), problem)


def test_entity_accepts_one_join_key_as_a_string_and_valid_owners():
    assert Entity("user", join_keys="user_id", owner="ml@example.com").join_keys == ("user_id",)
    assert Entity("ad", join_keys=["ad_id", "region"], owner="team:ads").join_keys == (
        "ad_id",
        "region",
    )


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"name": "Clicks"}, f"name 'Clicks' {SNAKE}"),
        ({"table": "raw.clicks"}, "give exactly one of path= (a Delta table) or table="),
        ({"path": None}, "give exactly one of path= (a Delta table) or table="),
        ({"timestamp_field": ""}, "timestamp_field must name the event-time column"),
        ({"timestamp_field": None}, "timestamp_field must name the event-time column"),
        ({"owner": "team:"}, f"owner 'team:' {OWNER}"),
    ],
)
def test_source_rejects(overrides, problem):
    arguments = {"name": "clicks", "path": "raw/clicks", "timestamp_field": "ts", **overrides}
    with pytest.raises(SourceError) as raised:
        BatchSource(**arguments)
    check(raised.value, arguments["name"], raised_at(raised), problem)


def test_source_uri_is_resolved_under_the_data_dir(data_dir):
    assert CLICKS.uri == str(data_dir / "raw/clicks")
    assert BatchSource("a", path="s3://bucket/a", timestamp_field="ts").uri == "s3://bucket/a"
    assert BatchSource("b", path="/abs/b", timestamp_field="ts").uri == "/abs/b"
    assert BatchSource("c", table="db.c", timestamp_field="ts").uri is None


# Feature views at definition time -----------------------------------------------------------------


def two_sources(clicks, page_views):
    return clicks


def no_arguments():
    return None


def any_number(*frames):
    return frames[0]


def ClickStats(clicks):  # a badly named view
    return clicks


OTHER_USER = Entity("buyer", join_keys=["user_id"])
IN_A_DAY = datetime.now(UTC) + timedelta(days=1)


@pytest.mark.parametrize(
    ("fn", "overrides", "problem"),
    [
        (None, {"name": "ClickStats"}, f"name 'ClickStats' {SNAKE}"),
        (ClickStats, {}, f"name 'ClickStats' {SNAKE}"),
        (None, {"owner": "bob"}, f"owner 'bob' {OWNER}"),
        (None, {"owner": "bob@localhost"}, f"owner 'bob@localhost' {OWNER}"),
        (None, {"mode": "scala"}, "mode 'scala' is not one of pyspark, spark_sql, pandas"),
        (two_sources, {}, f"{ARITY.format(1)} (clicks, page_views)"),
        (no_arguments, {}, f"{ARITY.format(1)} ()"),
        (any_number, {}, f"{ARITY.format(1)} (*frames)"),
        (None, {"sources": [CLICKS, PAGE_VIEWS]}, f"{ARITY.format(2)} (clicks)"),
        (None, {"sources": []}, "needs at least one source"),
        (None, {"sources": [42]}, "source 42 is not a BatchSource or the name of one"),
        (None, {"entities": []}, "needs at least one entity"),
        (None, {"entities": ["user"]}, "entity 'user' is not an Entity"),
        (
            None,
            {"entities": [USER, OTHER_USER]},
            "entities share a join key: ['user_id', 'user_id']",
        ),
        (None, {"schema": []}, "schema must declare at least one feature Field"),
        (
            None,
            {"schema": [Field("clicks_1d", Int64), Field("clicks_1d", Int32)]},
            "schema declares 'clicks_1d' twice",
        ),
        (None, {"schema": [Field("user_id", Int64)]}, "schema declares 'user_id', which is a join"),
        (None, {"schema": [Field("ts", Int64)]}, "schema declares 'ts', which is a join key, the"),
        (
            None,
            {"schema": [Field("event_date", String)]},
            "schema declares 'event_date', which is a join key, the timestamp or the reserved "
            "partition column 'event_date'",
        ),
        (None, {"schema": [Field("Clicks", Int64)]}, f"schema name 'Clicks' {SNAKE}"),
        (
            None,
            {"schema": [("clicks_1d", Int64)]},
            "schema entry ('clicks_1d', Int64) is not a Field with a featureplane type",
        ),
        (None, {"schema": [Field("clicks_1d", "bigint")]}, "is not a Field with a featureplane"),
        (None, {"timestamp_field": ""}, "timestamp_field must name the output's event-time column"),
        (
            None,
            {"ttl": timedelta(0)},
            "ttl must be a positive timedelta, got datetime.timedelta(0)",
        ),
        (None, {"ttl": timedelta(days=-1)}, "ttl must be a positive timedelta"),
        (None, {"ttl": 3600}, "ttl must be a positive timedelta, got 3600"),
        (None, {"freshness": timedelta(hours=-2)}, "freshness must be a positive timedelta"),
        (
            None,
            {"batch_schedule": timedelta(hours=5)},
            "batch_schedule 5 hours must divide a day (1h, 2h, 3h, 4h, 6h, 8h, 12h), "
            "or be 1 day or 7 days",
        ),
        (None, {"batch_schedule": timedelta(days=2)}, "batch_schedule 2 days must divide"),
        (
            None,
            {"batch_schedule": timedelta(0)},
            "batch_schedule 0 seconds must be a positive whole number of hours",
        ),
        (
            None,
            {"batch_schedule": timedelta(days=-1)},
            "batch_schedule minus 1 day must be a positive whole number of hours",
        ),
        (None, {"batch_schedule": timedelta(minutes=90)}, "must be a positive whole number of"),
        (None, {"batch_schedule": "1d"}, "batch_schedule must be a timedelta, got '1d'"),
        (
            None,
            {"feature_start_time": IN_A_DAY},
            f"feature_start_time {IN_A_DAY.isoformat()} is in the future",
        ),
        (
            two_sources,
            {"mode": "pandas", "sources": [CLICKS, PAGE_VIEWS]},
            "pandas mode takes exactly one source (run per entity group); join in pyspark",
        ),
        (None, {"tags": {"tier": 1}}, "tags must map strings to strings"),
        (None, {"tags": {1: "gold"}}, "tags must map strings to strings"),
    ],
)
def test_feature_view_rejects(fn, overrides, problem):
    fn = fn or clicks_1d
    with pytest.raises(FeatureViewError) as raised:
        define(fn, **overrides)
    name = overrides.get("name", fn.__name__)
    check(raised.value, name, fn.__code__.co_firstlineno, problem)


def first_decorator_and_def_lines(test, name: str) -> tuple[int, int]:
    """Lines of the first decorator and of the `def` of the function `name` written in `test`."""
    lines, first = inspect.getsourcelines(test)
    tree = ast.parse("".join(lines))
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    return first - 1 + node.decorator_list[0].lineno, first - 1 + node.lineno


def test_a_decorated_view_error_points_at_its_definition():
    with pytest.raises(FeatureViewError) as raised:

        @batch_feature_view(
            **VIEW,
            ttl=timedelta(0),
        )
        def clicks_per_user(clicks):
            return per_user(clicks)

    decorator, definition = first_decorator_and_def_lines(
        test_a_decorated_view_error_points_at_its_definition, "clicks_per_user"
    )
    assert decorator < definition
    # The location is Python's own start of the definition (`co_firstlineno`, as in tracebacks
    # and `inspect.getsourcelines`): the `@batch_feature_view(` line, not the `def` line.
    check(raised.value, "clicks_per_user", decorator, "ttl must be a positive timedelta")


@pytest.mark.parametrize(
    ("schedule", "cron"),
    [
        (timedelta(hours=1), "0 * * * *"),
        (timedelta(hours=6), "0 */6 * * *"),
        (timedelta(hours=12), "0 */12 * * *"),
        (timedelta(days=1), "0 0 * * *"),
        (timedelta(days=7), "0 0 * * 1"),
    ],
)
def test_supported_batch_schedules(schedule, cron):
    assert define(batch_schedule=schedule).batch_schedule == schedule
    assert schedule_cron(schedule) == cron


def test_naive_and_offset_feature_start_times_are_utc():
    naive = define(feature_start_time=datetime(2026, 1, 1))
    shifted = define(
        feature_start_time=datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    )
    for view in (naive, shifted):
        assert view.feature_start_time == START
        assert view.feature_start_time.tzinfo == UTC
        assert view.version == define().version


def test_a_start_date_is_accepted_as_utc_midnight_or_rejected_with_the_view():
    try:
        view = define(feature_start_time=date(2026, 1, 1))
    except FeatureViewError as error:
        check(error, "clicks_1d", clicks_1d.__code__.co_firstlineno, "feature_start_time")
    else:
        assert view.feature_start_time == START


def test_description_defaults_to_the_docstring():
    def documented(clicks):
        """Clicks per user."""
        return clicks

    assert define(documented).description == "Clicks per user."
    assert define(documented, description="Explicit.").description == "Explicit."


# Versions -----------------------------------------------------------------------------------------


def redefine():
    @batch_feature_view(**VIEW)
    def clicks_1d(clicks):
        return per_user(clicks)

    return clicks_1d


def test_version_is_stable_across_identical_definitions():
    version = define().version
    assert len(version) == 12 and int(version, 16) >= 0
    assert redefine().version == redefine().version == version


def test_version_ignores_docstring_comments_and_formatting():
    def clicks_1d(clicks):
        """Clicks per user and day."""
        # one row per user
        return per_user(
            clicks,
        )

    assert define(clicks_1d).version == define().version


@pytest.mark.parametrize(
    "overrides",
    [
        {"description": "Another description."},
        {"owner": "team:ads"},
        {"ttl": timedelta(days=3)},
        {"freshness": timedelta(hours=3)},
        {"tags": {"domain": "ads"}},
        {"online": False},
    ],
    ids=lambda overrides: next(iter(overrides)),
)
def test_version_ignores_what_does_not_change_stored_values(overrides):
    assert define(**overrides).version == define().version


def test_version_changes_with_the_function_body():
    def clicks_1d(clicks):
        return per_user(clicks.dropDuplicates())

    assert define(clicks_1d).version != define().version


@pytest.mark.parametrize(
    "overrides",
    [
        {"schema": [Field("clicks_1d", Int32)]},
        {"sources": [BatchSource("clicks", path="raw/clicks_v2", timestamp_field="ts")]},
        {"sources": [PAGE_VIEWS]},
        {"sources": ["clicks"]},
        {"feature_start_time": START - timedelta(days=1)},
        {"entities": [Entity("customer", join_keys=["customer_id"])]},
        {"mode": "pandas"},
    ],
    ids=["schema type", "source path", "other source", "source by name", "start", "keys", "mode"],
)
def test_version_changes_with_what_determines_stored_values(overrides):
    assert define(**overrides).version != define().version


def test_version_changes_with_the_batch_schedule():
    assert define(batch_schedule=timedelta(hours=1)).version != define().version


# Output checks at run time ------------------------------------------------------------------------

DAY = TimeWindow(datetime(2026, 1, 1), datetime(2026, 1, 2))
CLICK_ROWS = pd.DataFrame(
    {
        "user_id": [1, 1, 2, 2],
        "ts": pd.to_datetime(
            ["2026-01-01 08:00", "2026-01-01 09:00", "2026-01-01 10:00", "2026-01-02 10:00"],
            utc=True,
        ),
        "page": ["a", "b", "a", "c"],
    }
)


def run(spark, view, rows=CLICK_ROWS):
    """Run `view` over DAY on in-memory rows instead of its Delta sources."""
    return run_transformation(spark, view, DAY, read=lambda spark, _: spark.createDataFrame(rows))


def pandas_clicks(clicks):
    return clicks.groupby("user_id", as_index=False).agg(ts=("ts", "max"), clicks_1d=("ts", "size"))


@pytest.mark.parametrize("mode", ["pyspark", "pandas"])
def test_a_valid_view_runs_on_its_window(spark, mode):
    view = define(pandas_clicks if mode == "pandas" else None, mode=mode)
    output = run(spark, view)
    assert output.columns == ["user_id", "ts", "clicks_1d", "event_date"]
    rows = sorted((r.user_id, r.clicks_1d, r.event_date.isoformat()) for r in output.collect())
    assert rows == [(1, 2, "2026-01-01"), (2, 1, "2026-01-01")]


@pytest.mark.parametrize(
    ("fn", "problem"),
    [
        (lambda c: per_user(c).drop("user_id"), "output is missing join key 'user_id'"),
        (lambda c: per_user(c).drop("ts"), "output is missing timestamp column 'ts'"),
        (
            lambda c: per_user(c).drop("clicks_1d"),
            "output is missing schema features ['clicks_1d']",
        ),
        (
            lambda c: per_user(c).withColumn("clicks_1d", F.lit(1)),
            "feature 'clicks_1d' is int, but the schema says Int64 (bigint); cast it in the "
            "transformation",
        ),
        (
            lambda c: per_user(c).withColumn("ts", F.col("ts").cast("string")),
            "timestamp column 'ts' is string, not timestamp",
        ),
        (
            lambda c: per_user(c).withColumn("extra", F.lit(1)),
            "output has columns not in the schema: ['extra']",
        ),
        (
            lambda c: per_user(c).toPandas(),
            "returned a pandas.core.frame.DataFrame, not a Spark DataFrame",
        ),
        (lambda c: None, "returned a builtins.NoneType, not a Spark DataFrame"),
    ],
    ids=["join key", "timestamp", "feature", "type", "timestamp type", "extra", "pandas", "none"],
)
def test_output_is_checked_against_the_schema(spark, fn, problem):
    view = define(fn, name="clicks_1d")
    with pytest.raises(FeatureViewError) as raised:
        run(spark, view)
    check(raised.value, "clicks_1d", fn.__code__.co_firstlineno, problem)


def test_spark_sql_output_is_checked_too(spark):
    def clicks_sql(clicks):
        return f"""
            SELECT user_id, max(ts) AS ts, CAST(count(*) AS INT) AS clicks_1d
            FROM {clicks} GROUP BY user_id
        """

    with pytest.raises(FeatureViewError) as raised:
        run(spark, define(clicks_sql, mode="spark_sql"))
    line = clicks_sql.__code__.co_firstlineno
    check(raised.value, "clicks_sql", line, "feature 'clicks_1d' is int, but the schema says Int64")


def test_pandas_output_is_checked_inside_spark(spark):
    def no_user(clicks):
        return pandas_clicks(clicks).drop(columns="user_id")

    view = define(no_user, mode="pandas")
    output = run(spark, view)  # lazy: the function runs per entity group on the workers
    with pytest.raises(PythonException) as raised:
        output.collect()
    assert f"no_user ({view.location}): output is missing join key 'user_id'" in str(raised.value)
    assert view.location.endswith(f"{THIS_FILE}:{no_user.__code__.co_firstlineno}")


def test_pandas_output_types_are_checked_inside_spark(spark):
    def halves(clicks):
        return pandas_clicks(clicks).assign(clicks_1d=lambda frame: frame.clicks_1d + 0.5)

    output = run(spark, define(halves, mode="pandas"))
    with pytest.raises(PythonException, match="clicks_1d"):
        output.collect()


def test_pandas_mode_needs_the_join_keys_in_its_source(spark):
    with pytest.raises(FeatureViewError) as raised:
        run(spark, define(pandas_clicks, mode="pandas"), CLICK_ROWS.drop(columns="user_id"))
    problem = "pandas mode groups the source by join keys, but it has no 'user_id' column"
    check(raised.value, "pandas_clicks", pandas_clicks.__code__.co_firstlineno, problem)


def test_a_source_without_its_timestamp_column_is_a_source_error(spark):
    with pytest.raises(SourceError) as raised:
        run(spark, define(), CLICK_ROWS.rename(columns={"ts": "event_time"}))
    problem = "timestamp_field 'ts' is not a column (columns: user_id, event_time, page)"
    check(raised.value, "clicks", line_of('CLICKS = BatchSource("clicks"'), problem)
