"""Quality rules: pandera expectations and the defaults, counted on Spark as pandas counts them."""

from datetime import UTC, datetime, timedelta

import hypothesis.strategies as st
import pandas as pd
import pandera.pyspark as pa
import pyspark.sql.types as T
import pytest
from hypothesis import given, settings

from featureplane import BatchSource, Entity, Field, Float64, Int64, String, batch_feature_view
from featureplane.compute.window import TimeWindow
from featureplane.errors import FeatureViewError, SourceError
from featureplane.quality import VolumeGuard, row_check, row_count
from featureplane.quality.evaluation import evaluate
from featureplane.quality.expectations import compile_rules
from featureplane.quality.rules import default_rules
from featureplane.quality.volume import drop_message, drops

START = datetime(2026, 10, 1, tzinfo=UTC)
WINDOW = TimeWindow(START, START + timedelta(days=1))
SCHEMA = "user_id bigint, ts timestamp, x double, y double, c string"
CATEGORIES = ["news", "sports", "tech"]

user = Entity("user", join_keys=["user_id"])
events = BatchSource("events", path="raw/events", timestamp_field="ts")


def view(**quality):
    @batch_feature_view(
        sources=[events],
        entities=[user],
        schema=[Field("x", Float64), Field("y", Float64), Field("c", String)],
        timestamp_field="ts",
        feature_start_time=START,
        **quality,
    )
    def stats(events):
        return events

    return stats


EXPECTATIONS = pa.DataFrameSchema(
    {
        "x": pa.Column(T.DoubleType(), checks=[pa.Check.in_range(0, 10)], nullable=True),
        "y": pa.Column(checks=[pa.Check.ge(0, raise_warning=True)]),
        "c": pa.Column(
            nullable=True,
            checks=[pa.Check.isin(CATEGORIES), pa.Check.str_matches(r"[a-z]+s")],
        ),
    },
    checks=[row_count(min=3), row_check("x <= y", name="x at most y")],
    unique=["user_id"],
)

values = st.one_of(st.none(), st.sampled_from([-1.0, 0.0, 2.5, 10.0, 11.0]))
rows = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(1, 4)),
        st.one_of(st.none(), st.integers(-2, 26)),  # hours from START: some outside the day
        values,
        values,
        st.one_of(st.none(), st.sampled_from([*CATEGORIES, "autos", "Sports"])),
    ),
    max_size=30,
)


def frame(spark, data):
    stamped = [
        (u, None if h is None else START + timedelta(hours=h), x, y, c) for u, h, x, y, c in data
    ]
    return spark.createDataFrame(stamped, SCHEMA)


def pandas_counts(data) -> dict[str, int]:
    """The brute-force oracle: each rule's failing rows, as pandera's semantics define them."""
    df = pd.DataFrame(data, columns=["user_id", "h", "x", "y", "c"])
    df = df.astype({"user_id": "float64", "h": "float64", "x": "float64", "y": "float64"})
    has = df.notna()
    users = df["user_id"].dropna()
    return {
        "x in_range(0, 10)": int((has.x & ~df.x.between(0, 10)).sum()),
        "y not null": int((~has.y).sum()),
        "y greater_than_or_equal_to(0)": int((has.y & (df.y < 0)).sum()),
        f"c isin({CATEGORIES})": int((has.c & ~df.c.isin(CATEGORIES)).sum()),
        "c str_matches('[a-z]+s')": int((has.c & ~df.c.fillna("").str.match(r"(?:[a-z]+s)")).sum()),
        "unique (user_id)": len(df) - df.drop_duplicates(["user_id"]).shape[0] if len(df) else 0,
        "x at most y": int((has.x & has.y & (df.x > df.y)).sum()),
        "user_id not null": int(df.user_id.isna().sum()),
        "ts not null": int(df.h.isna().sum()),
        "ts inside the window": int((has.h & ((df.h < 0) | (df.h >= 24))).sum()),
        "unique (user_id, ts)": len(df) - len(df.drop_duplicates(["user_id", "h"])),
    } | {"_users": users.nunique()}


@settings(max_examples=25)
@given(rows)
def test_rules_count_what_pandas_counts(spark, data):
    rules = [*default_rules(view(), WINDOW), *compile_rules(EXPECTATIONS)]
    report = evaluate(frame(spark, data), rules)
    expected = pandas_counts(data)
    counted = {r.rule: r.failing for r in report.results if r.failing is not None}
    assert counted == {name: count for name, count in expected.items() if name in counted}
    assert set(counted) == set(expected) - {"_users"}
    assert report.rows == len(data)
    by_rule = {r.rule: r for r in report.results}
    assert by_rule["row_count(min=3, max=None)"].passed == (len(data) >= 3)
    assert by_rule["y greater_than_or_equal_to(0)"].severity == "warn"
    for result in report.results:
        if result.failing is not None and result.rule != "unique (user_id, ts)":
            allowed = 0.01 * len(data) if result.drops else 0
            assert result.passed == (result.failing <= allowed)
        if not result.passed and result.failing:
            assert 0 < len(result.examples) <= 5
    assert report.passed == all(r.passed for r in report.results if r.severity == "error")


def test_examples_are_the_failing_rows(spark):
    data = [(1, 1, 11.0, 12.0, "news"), (2, 2, 3.0, 1.0, "autos"), (2, 3, 1.0, 2.0, None)]
    report = evaluate(frame(spark, data), compile_rules(EXPECTATIONS))
    by_rule = {r.rule: r for r in report.results}
    assert [e["x"] for e in by_rule["x in_range(0, 10)"].examples] == [11.0]
    assert by_rule["x at most y"].examples[0]["user_id"] == 2
    assert by_rule["unique (user_id)"].examples == [{"user_id": 2, "count": 2}]
    assert by_rule["c isin(['news', 'sports', 'tech'])"].examples[0]["c"] == "autos"
    line = by_rule["x in_range(0, 10)"].line("stats 2026-10-01")
    assert line == "stats 2026-10-01: x in_range(0, 10): 1 of 3 rows (33.33%)"
    assert not report.passed


def test_a_custom_pandera_check_runs_on_pandera(spark):
    def below(data, limit: float) -> bool:  # pandera's PySpark contract: a column object
        return data.dataframe.where(f"{data.column_name} >= {limit}").limit(1).count() == 0

    check = pa.Check(below, name="below_twenty", limit=20)
    custom = pa.DataFrameSchema({"x": pa.Column(nullable=True, checks=check)})
    [rule] = [r for r in compile_rules(custom) if r.check is not None]
    ok = evaluate(frame(spark, [(1, 1, 3.0, 1.0, "news")]), [rule])
    bad = evaluate(frame(spark, [(1, 1, 30.0, 1.0, "news")]), [rule])
    assert ok.results[0].passed and ok.results[0].failing is None
    assert not bad.results[0].passed
    assert bad.results[0].line("stats") == "stats: x below_twenty failed (1 rows)"


def test_a_dataframe_model_is_a_schema(spark):
    class Stats(pa.DataFrameModel):
        x: T.DoubleType() = pa.Field(ge=0, nullable=True)

    report = evaluate(frame(spark, [(1, 1, -1.0, 1.0, "news")]), compile_rules(Stats))
    assert [(r.rule, r.failing) for r in report.results] == [("x greater_than_or_equal_to(0)", 1)]


def test_the_invalid_share_sets_when_dropped_rows_fail(spark):
    data = [(None, 1, 1.0, 1.0, "news"), *[(u, 1, 1.0, 1.0, "news") for u in range(1, 10)]]
    lenient = evaluate(frame(spark, data), default_rules(view(max_invalid_share=0.1), WINDOW))
    strict = evaluate(frame(spark, data), default_rules(view(max_invalid_share=0.0), WINDOW))
    assert lenient.dropped == {"user_id not null": 1, "ts not null": 0, "ts inside the window": 0}
    assert lenient.passed and not strict.passed
    [error] = strict.errors
    assert error.line("stats") == "stats: user_id not null: 1 of 10 rows (10.00%)"


@pytest.mark.parametrize(
    ("quality", "problem"),
    [
        (
            {"expectations": pa.DataFrameSchema({"z": pa.Column()})},
            "expectations name column 'z', which the output lacks (it has: user_id, ts, x, y, c)",
        ),
        (
            {"expectations": pa.DataFrameSchema({"x": pa.Column(T.LongType())})},
            "expectations type column 'x' as bigint, but it is double",
        ),
        (
            {"expectations": pa.DataFrameSchema({"x": pa.Column(checks=row_count(min=1))})},
            "row_count is a table check: put it in checks=[...], not on 'x'",
        ),
        (
            {"expectations": {"x": "positive"}},
            "expectations must be a pandera.pyspark DataFrameSchema or DataFrameModel, not dict",
        ),
        ({"max_invalid_share": 2}, "max_invalid_share must be a share between 0 and 1, got 2"),
        (
            {"volume_guard": VolumeGuard(min_share=1.5)},
            "volume_guard min_share must be between 0 and 1, got 1.5",
        ),
    ],
)
def test_quality_definition_errors_name_the_view_and_line(quality, problem):
    with pytest.raises(FeatureViewError) as raised:
        view(**quality)
    assert str(raised.value) == f"stats ({__file__.split('/')[-2]}/test_quality.py:31): {problem}"


def test_a_source_expectations_error_names_the_source():
    with pytest.raises(SourceError, match=r"^clicks \(.*test_quality.py:\d+\): expectations must"):
        BatchSource("clicks", path="raw/clicks", timestamp_field="ts", expectations=[1])


def test_declared_int_columns_accept_integer_checks():
    @batch_feature_view(
        sources=[events],
        entities=[user],
        schema=[Field("n", Int64)],
        timestamp_field="ts",
        feature_start_time=START,
        expectations=pa.DataFrameSchema({"n": pa.Column(T.LongType(), pa.Check.ge(0))}),
    )
    def counts(events):
        return events

    assert counts.expectations is not None


DAY = timedelta(days=1)
DAYS = [START + i * DAY for i in range(4)]


def test_the_volume_guard_compares_with_what_each_partition_held():
    guard = VolumeGuard(min_share=0.5)
    stored = {DAYS[0]: 100, DAYS[1]: 100, DAYS[2]: 100}
    new = {DAYS[0]: 100, DAYS[1]: 49, DAYS[2]: 50}
    [drop] = drops(guard, DAYS[:3], stored, new)
    assert (drop.start, drop.stored, drop.new) == (DAYS[1], 100, 49)
    assert drops(guard, DAYS[:3], {}, {}) == []  # nothing stored: nothing to lose
    assert drops(VolumeGuard(min_share=0), DAYS[:1], {DAYS[0]: 5}, {}) != []  # empty: always
    assert drops(VolumeGuard(min_share=0), DAYS[:1], {DAYS[0]: 5}, {DAYS[0]: 1}) == []


def test_the_volume_guard_holds_new_partitions_to_the_trailing_mean():
    guard = VolumeGuard(min_share=0.5, trailing=2)
    stored = {DAYS[0]: 80, DAYS[1]: 120}
    [drop] = drops(guard, DAYS[2:], stored, {DAYS[2]: 49, DAYS[3]: 60})
    assert (drop.start, drop.baseline, drop.trailing) == (DAYS[2], 100.0, True)
    message = drop_message("stats", drop, guard, more=0)
    assert message == (
        "stats: partition 2026-10-03 00:00 would hold 49 rows against the mean 100 rows of the "
        "2 partitions before it, below the volume guard (50%): nothing written. If the drop is "
        "real, rerun with the run tag featureplane/allow_volume_drop=true "
        "(featureplane materialize --allow-volume-drop)"
    )
    assert drops(VolumeGuard(min_share=0.5), DAYS[2:], stored, {DAYS[2]: 1}) == []
