"""`featureplane list|describe|history` on applied registries, with materializations reported
to a real (temporary) Dagster instance."""

import re
from datetime import UTC, datetime

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance, MetadataValue

from featureplane.catalog import edges


@pytest.fixture
def applied(cli):
    """Versions 1 (plan_repo_v1) and 2 (clicks retyped), without backfills."""
    for package in ("plan_repo_v1", "plan_repo_v2"):
        code, _, err = cli("apply", "--repository", package, "--yes", "--allow-breaking")
        assert code == 0, err
    return cli


def test_nothing_applied_is_an_error_that_says_what_to_do(cli):
    code, _, err = cli("list")
    assert code == 1 and "run `featureplane apply` first" in err


def test_list_all_or_one_kind(applied):
    code, out, _ = applied("list")
    assert code == 0
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["entity", "user"],
        ["source", "events"],
        ["feature_view", "user_stats"],
        ["feature_service", "checkout"],
    ]
    code, out, _ = applied("list", "feature_services")
    assert (code, out.split()) == (0, ["feature_service", "checkout"])


def test_describe_a_view_with_its_schema_lineage_and_latest_materialization(applied, data_dir):
    with DagsterInstance.from_config(str(data_dir / "dagster_home")) as instance:
        instance.report_runless_asset_event(
            AssetMaterialization(
                AssetKey(["features", "user_stats"]),
                partition="2026-01-02",
                metadata={
                    "dagster/row_count": 42,
                    "event_time_max": MetadataValue.timestamp(datetime(2026, 1, 2, tzinfo=UTC)),
                },
            )
        )
    code, out, _ = applied("describe", "user_stats", "--repository", "plan_repo_v2")
    assert code == 0
    lines = [line.strip() for line in out.splitlines()]
    assert lines[0].startswith("(applied registry version 2; serving: version 1 since ")
    assert lines[1] == "feature_view user_stats"
    fields = dict((*line.split(maxsplit=1), "")[:2] for line in lines[2 : lines.index("schema:")])
    assert fields["owner"] == "None"
    assert len(fields["version"]) == 12
    assert "plan_repo_v2/__init__.py:" in fields["definition"]
    assert fields["upstream"] == "entity user, source events"
    assert fields["downstream"] == "feature_service checkout"
    schema = lines[lines.index("schema:") + 1 :]
    assert [line.split()[:2] for line in schema[:3]] == [
        ["user_id", "?"],
        ["clicks", "String"],
        ["country", "String"],
    ]
    assert "latest materialization of features/user_stats:" in lines
    assert "partition: 2026-01-02" in lines
    assert "dagster/row_count: 42" in lines
    assert "event_time_max: 2026-01-02T00:00:00+00:00" in lines


def test_describe_an_unknown_name_lists_the_known_ones(applied):
    code, _, err = applied("describe", "user_stat")
    assert code == 1
    assert "no object named 'user_stat'" in err and "user_stats" in err


def test_history_of_everything_and_of_one_object(applied):
    code, out, _ = applied("history")
    assert code == 0
    assert "version 1  " in out and "version 2  " in out
    assert "+ feature_service checkout" in out

    code, out, _ = applied("history", "user_stats")
    assert code == 0
    assert len(re.findall(r"^version ", out, re.M)) == 2
    assert "~ feature clicks: Int64 -> String" in out

    code, out, _ = applied("history", "checkout")
    assert len(re.findall(r"^version ", out, re.M)) == 1, "version 2 did not change the service"
    assert applied("history", "nothing")[0] == 1


def test_edges_link_sources_views_services_and_datasets():
    registry = {
        "entities": [{"name": "user"}],
        "sources": [{"name": "events"}],
        "feature_views": [{"name": "stats", "entities": ["user"], "sources": ["events"]}],
        "on_demand_views": [{"name": "ratio", "sources": [{"request": "r"}, {"view": "stats"}]}],
        "feature_services": [{"name": "svc", "features": [{"view": "stats"}, {"view": "ratio"}]}],
        "training_datasets": [{"name": "train", "spine": "events", "service": "svc"}],
    }
    assert edges(registry) == [
        (("entity", "user"), ("feature_view", "stats")),
        (("source", "events"), ("feature_view", "stats")),
        (("feature_view", "stats"), ("on_demand_view", "ratio")),
        (("feature_view", "stats"), ("feature_service", "svc")),
        (("on_demand_view", "ratio"), ("feature_service", "svc")),
        (("source", "events"), ("training_dataset", "train")),
        (("feature_service", "svc"), ("training_dataset", "train")),
    ]
