"""On-demand feature views: validation at load, the checked runner, the source shipped online,
and offline application equal to calling the function on the point-in-time joined rows."""

import math
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyspark.sql import functions as F

from featureplane import (
    Array,
    BatchSource,
    Bool,
    Date,
    Entity,
    FeatureService,
    Field,
    Float32,
    Float64,
    Int32,
    Int64,
    OnDemandFeatureView,
    OnDemandFeatureViewError,
    Repository,
    RepositoryError,
    RequestSource,
    RetrievalError,
    String,
    Timestamp,
    batch_feature_view,
    on_demand_feature_view,
)
from featureplane.compute.window import TimeWindow
from featureplane.errors import FeatureServiceError
from featureplane.feature_store import FeatureStore
from featureplane.offline_store import OfflineStore
from featureplane.on_demand import compute_features, function_from_source, stored_views

THIS_FILE = Path(__file__).name
D0 = datetime(2026, 3, 1, tzinfo=UTC)
H, DAY = timedelta(hours=1), timedelta(days=1)
USER = Entity("user", join_keys=["user_id"])
CLICKS = BatchSource("clicks", path="raw/clicks", timestamp_field="ts")
SCALE = 2.0


@batch_feature_view(
    sources=[CLICKS],
    entities=[USER],
    schema=[Field("clicks", Int64), Field("impressions", Int64), Field("country", String)],
    timestamp_field="ts",
    feature_start_time=D0 - 10 * DAY,
    ttl=DAY,
)
def user_stats(clicks):
    return clicks


REQUEST = RequestSource([Field("request_ts", Timestamp), Field("amount", Float64)])
OUTPUTS = [
    Field("ctr", Float64),
    Field("log_amount", Float64),
    Field("hour", Int32),
    Field("day", Date),
    Field("next_hour", Timestamp),
    Field("missing", Array(Bool)),
    Field("label", String),
]


@on_demand_feature_view(sources=[REQUEST, user_stats[["clicks", "impressions"]]], schema=OUTPUTS)
def user_ctr(request, stats):
    """Exercises every type, None inputs and the names the handler provides."""
    clicks, impressions, ts = stats["clicks"], stats["impressions"], request["request_ts"]
    amount = request["amount"]
    return {
        "ctr": clicks / impressions if clicks is not None and impressions else None,
        "log_amount": math.log1p(amount) if amount is not None and amount > -1 else None,
        "hour": ts.hour if ts is not None else None,
        "day": ts.date() if ts is not None else None,
        "next_hour": ts + timedelta(hours=1) if ts is not None else None,
        "missing": [clicks is None, impressions is None],
        "label": f"{clicks}/{impressions}",
    }


# ---- definitions ---------------------------------------------------------------------------------


def two(request, stats):
    return {"y": 1}


def uses_module_constant(request):
    return {"y": SCALE}


def valid_one(request):
    return {"y": 1}


@pytest.mark.parametrize(
    ("fn", "overrides", "problem"),
    [
        (two, {"name": "Bad Name"}, "name 'Bad Name' must be lower snake case"),
        (two, {"sources": []}, "needs at least one source"),
        (two, {"sources": [REQUEST, REQUEST]}, "at most one RequestSource"),
        (two, {"sources": [REQUEST, "user_stats"]}, "is not a RequestSource, a feature view"),
        (two, {"sources": [REQUEST, user_ctr]}, "on-demand views cannot be chained"),
        (two, {"sources": [REQUEST]}, "must take exactly 1 positional parameters"),
        (two, {"schema": [Field("y", Int64), Field("y", Int64)]}, "declares 'y' twice"),
        (two, {"schema": []}, "schema must declare at least one Field"),
        (two, {"schema": [Field("Y", Int64)]}, "schema name 'Y' must be lower snake case"),
        (
            two,
            {"sources": [RequestSource([Field("bad-field", Int64)]), user_stats]},
            "request source name 'bad-field'",
        ),
        (
            two,
            {"sources": [RequestSource([Field("x", Int64)], name="Req"), user_stats]},
            "request source name 'Req'",
        ),
        (two, {"schema": [Field("clicks", Int64)]}, "schema names ['clicks'] are also inputs"),
        (two, {"schema": [Field("amount", Float64)]}, "schema names ['amount'] are also inputs"),
        (two, {"owner": "nobody"}, "owner 'nobody' must be an email"),
        (uses_module_constant, {"sources": [REQUEST]}, "uses ['SCALE'], which the online"),
    ],
)
def test_on_demand_view_rejects(fn, overrides, problem):
    arguments = {"sources": [REQUEST, user_stats], "schema": [Field("y", Int64)], **overrides}
    with pytest.raises(OnDemandFeatureViewError, match=problem.replace("[", r"\[")) as error:
        on_demand_feature_view(**arguments)(fn)
    assert f"{THIS_FILE}:{fn.__code__.co_firstlineno}" in str(error.value)


def test_functions_that_cannot_run_from_their_source_alone_are_rejected():
    factor = 3

    def closure(request):
        return {"y": request["x"] * factor}

    with pytest.raises(OnDemandFeatureViewError, match=r"closes over \['factor'\]"):
        on_demand_feature_view(sources=[REQUEST], schema=[Field("y", Int64)])(closure)
    with pytest.raises(OnDemandFeatureViewError, match="must be a `def` in a source file"):
        OnDemandFeatureView("inline", (REQUEST,), (Field("y", Int64),), lambda request: {})


def test_a_selection_of_an_unknown_feature_fails_in_the_definition_holding_it():
    with pytest.raises(OnDemandFeatureViewError) as raised:
        on_demand_feature_view(sources=[user_stats[["nope"]]], schema=[Field("y", Int64)])(
            valid_one
        )
    assert raised.value.name == "valid_one"
    assert raised.value.problem.startswith("selects ['nope'] of 'user_stats', which has")
    with pytest.raises(FeatureServiceError, match=r"^s \(.*test_on_demand.py:\d+\): selects"):
        FeatureService("s", features=[user_ctr[["nope"]]])
    assert user_ctr[["ctr"]].features == ("ctr",)


def test_a_whole_view_source_selects_all_its_features_and_defaults_come_from_the_function():
    view = on_demand_feature_view(sources=[user_stats], schema=[Field("y", Int64)])(valid_one)
    assert view.name == "valid_one"
    assert view.feature_sources[0].features == ("clicks", "impressions", "country")
    assert view.request_source is None
    assert user_ctr.description.startswith("Exercises every type")
    assert stored_views([user_ctr[["ctr"]], user_stats[["clicks"]]]) == (user_stats,)


def test_version_follows_the_function_sources_and_schema_not_the_metadata():
    def build(fn=user_ctr.function, **overrides):
        arguments = {"sources": user_ctr.sources, "schema": OUTPUTS, **overrides}
        return on_demand_feature_view(**arguments)(fn)

    assert build().version == user_ctr.version
    assert build(owner="team:x", description="other", tags={"a": "b"}).version == user_ctr.version
    assert build(sources=[REQUEST, user_stats]).version != user_ctr.version
    assert build(schema=[*OUTPUTS[:-1], Field("label", Int64)]).version != user_ctr.version
    assert (
        build(fn=two, schema=[Field("y", Int64)]).version
        != build(fn=valid_two, schema=[Field("y", Int64)]).version
    )


def valid_two(request, stats):
    return {"y": 2}


# ---- the runner ----------------------------------------------------------------------------------

INPUTS = [{"request_ts": D0 + 13 * H, "amount": 1.0}, {"clicks": 1, "impressions": 4}]


def output(**values):
    def returning(request):
        return dict(values)

    return returning


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({}, r"output lacks features \['y'\]"),
        ({"y": 1, "z": 2}, r"has keys \['z'\] that are not in the schema"),
        ({"y": "1"}, "feature 'y' is str '1', not Int32"),
        ({"y": True}, "feature 'y' is bool True, not Int32"),
        ({"y": 2**31}, "feature 'y' is int 2147483648, not Int32"),
        ({"y": 1.5}, "feature 'y' is float 1.5, not Int32"),
    ],
)
def test_compute_checks_names_and_types(values, problem):
    with pytest.raises(OnDemandFeatureViewError, match=f"^checked: .*{problem}"):
        compute_features(output(**values), "checked", [Field("y", Int32)], [{}])


def test_compute_widens_ints_to_float_and_normalises_datetimes_to_utc():
    schema = [Field("f", Float64), Field("t", Timestamp), Field("a", Array(Float64))]
    naive = datetime(2026, 1, 1, 12)
    values = compute_features(output(f=1, t=naive, a=[1, None]), "v", schema, [{}])
    assert values == {"f": 1.0, "t": naive.replace(tzinfo=UTC), "a": [1.0, None]}
    assert isinstance(values["f"], float)
    with pytest.raises(OnDemandFeatureViewError, match=r"'a' is list \['x'\], not Array"):
        compute_features(output(f=None, t=None, a=["x"]), "v", schema, [{}])
    with pytest.raises(OnDemandFeatureViewError, match="not Date"):
        compute_features(output(d=naive), "v", [Field("d", Date)], [{}])
    singles = [Field("g", Float32), Field("h", Float32)]
    rounded = compute_features(output(g=0.1, h=3), "v", singles, [{}])
    assert rounded == {"g": float(np.float32(0.1)), "h": 3.0}
    assert compute_features(output(g=-1e39), "v", singles[:1], [{}]) == {"g": -math.inf}
    before_year_1 = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))  # in UTC
    with pytest.raises(OnDemandFeatureViewError, match="'t' is datetime .*, not Timestamp"):
        compute_features(output(t=before_year_1), "v", [Field("t", Timestamp)], [{}])


def test_compute_names_the_view_when_the_function_fails_or_inputs_do_not_match():
    with pytest.raises(OnDemandFeatureViewError, match=r"^user_ctr .*takes 2 inputs.* got 1"):
        user_ctr.compute(INPUTS[:1])
    with pytest.raises(OnDemandFeatureViewError, match="user_ctr: the function raised KeyError"):
        user_ctr.compute([{}, {}])
    assert user_ctr.compute(INPUTS)["ctr"] == 0.25
    assert user_ctr.compute(INPUTS)["day"] == date(2026, 3, 1)


# ---- the source shipped online -------------------------------------------------------------------


def test_function_source_has_no_decorator_and_the_view_name():
    source = user_ctr.function_source
    assert source.startswith("def user_ctr(request, stats):")
    assert "@" not in source
    with pytest.raises(ValueError, match="does not define a function named 'other'"):
        function_from_source(source, "other")


MAYBE_INT = st.none() | st.integers(-(2**40), 2**40)
MOMENT = st.none() | st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(
    request=st.fixed_dictionaries(
        {"request_ts": MOMENT, "amount": st.none() | st.floats(allow_nan=False)}
    ),
    stats=st.fixed_dictionaries({"clicks": MAYBE_INT, "impressions": MAYBE_INT}),
)
def test_the_rebuilt_function_gives_identical_results(request, stats):
    rebuilt = function_from_source(user_ctr.function_source, user_ctr.name)
    expected = user_ctr.compute([request, stats])
    assert compute_features(rebuilt, user_ctr.name, user_ctr.schema, [request, stats]) == expected


# ---- offline -------------------------------------------------------------------------------------

STATS_ROWS = [  # user_id, ts, clicks, impressions, country
    (1, D0, 1, 4, "fr"),
    (1, D0 + 6 * H, 3, 10, "fr"),
    (2, D0, None, 5, "de"),
    (3, D0, 4, 0, None),
]
SPINE = pd.DataFrame(
    [  # rid, user_id, ts, request_ts, amount
        (0, 1, D0 + 2 * H, D0 + 2 * H + 30 * timedelta(minutes=1), 9.0),
        (1, 1, D0 + 7 * H, D0 + 23 * H, -3.0),
        (2, 2, D0 + 3 * H, None, None),
        (3, 3, D0 + 4 * H, D0, 0.0),
        (4, 4, D0 + 5 * H, D0 + 5 * H, 1.5),  # an unknown user
        (5, 1, D0 + 3 * DAY, D0, 2.0),  # user_stats is past its ttl
    ],
    columns=["rid", "user_id", "ts", "request_ts", "amount"],
).astype({"ts": "datetime64[us, UTC]", "request_ts": "datetime64[us, UTC]"})
SERVICE = FeatureService("scoring", features=[user_ctr[["ctr", "hour"]], user_stats[["country"]]])


@pytest.fixture(scope="module")
def store(spark, tmp_path_factory) -> FeatureStore:
    """A FeatureStore whose offline store holds user_stats."""
    root = str(tmp_path_factory.mktemp("offline"))
    offline = OfflineStore(root)
    ddl = "user_id bigint, ts timestamp, clicks bigint, impressions bigint, country string"
    table = spark.createDataFrame(STATS_ROWS, schema=ddl)
    uri = offline.view_table_uri(user_stats.name, user_stats.version)
    table = table.withColumn("event_date", F.to_date("ts"))
    offline.write_window(table, uri, TimeWindow(D0 - DAY, D0 + DAY), "ts")
    repository = Repository.from_objects([SERVICE])
    return FeatureStore(repository, spark, offline_root_uri=root)


def records(df) -> list[dict]:
    return sorted((row.asDict(recursive=True) for row in df.collect()), key=lambda r: r["rid"])


def test_offline_values_equal_the_function_on_the_joined_rows(store):
    joined = records(store.get_historical_features(SPINE, [user_stats[["clicks", "impressions"]]]))
    result = store.get_historical_features(SPINE, [user_ctr], full_feature_names=False)
    assert result.columns == [*SPINE.columns, *user_ctr.feature_names]
    assert [dict(result.dtypes)[f.name] for f in OUTPUTS] == [f.dtype.spark for f in OUTPUTS]
    expected = []
    for row in joined:
        request = {"request_ts": row["request_ts"], "amount": row["amount"]}
        stats = {f: row[f"user_stats__{f}"] for f in ("clicks", "impressions")}
        expected.append(user_ctr.function(request, stats))
    actual = [{f: row[f] for f in user_ctr.feature_names} for row in records(result)]
    assert actual == expected
    assert actual[2]["hour"] is None and actual[3]["ctr"] is None
    assert actual[4]["missing"] == actual[5]["missing"] == [True, True]


def test_a_service_with_an_on_demand_view(store):
    result = records(store.get_historical_features(SPINE, SERVICE))
    assert list(result[0]) == [
        *SPINE.columns,
        "user_stats__country",
        "user_ctr__ctr",
        "user_ctr__hour",
    ]
    assert [(r["user_ctr__ctr"], r["user_ctr__hour"]) for r in result][:2] == [(0.25, 2), (0.3, 23)]


def test_a_request_field_missing_from_the_spine_is_a_retrieval_error(store):
    with pytest.raises(RetrievalError, match="spine lacks request field 'amount' needed by on-dem"):
        store.get_historical_features(SPINE.drop(columns="amount"), "user_ctr:ctr")


def test_the_repository_collects_on_demand_views_and_keeps_names_unique():
    repository = Repository.from_objects([SERVICE])
    assert repository.on_demand_views == {"user_ctr": user_ctr}
    resolved = repository.on_demand_views["user_ctr"]
    assert repository.feature_services["scoring"].features[0].view is resolved
    assert resolved.feature_sources[0].view is repository.feature_views["user_stats"]
    clash = OnDemandFeatureView(
        "user_stats", (REQUEST,), (Field("y", Int64),), valid_one, location="x.py:1"
    )
    with pytest.raises(RepositoryError, match="user_stats .*name already used by the"):
        Repository.from_objects([SERVICE, clash])
