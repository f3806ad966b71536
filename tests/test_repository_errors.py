"""Repository mistakes as one actionable line: a module that fails to import names its file and
line (the traceback only under `--verbose`); an unknown aggregation function is the view's
error; a bad selection is the error of the service or on-demand view holding it; plan and apply
check every view's output on Spark before anything is written, and `validate` runs pandas
functions on a sample of their source."""

import textwrap
from pathlib import Path

import pytest

import featureplane
from featureplane import Repository
from featureplane.compute.validation import validate_view
from featureplane.registry_store import RegistryStore

IMPORTS = """\
from datetime import UTC, datetime, timedelta
from featureplane import (Aggregation, BatchSource, Entity, FeatureService, Field, Int64,
                          RequestSource, String, batch_feature_view, on_demand_feature_view)
"""
SHARED = """\
events = BatchSource("events", path="raw/events", timestamp_field="ts")
user = Entity("user", join_keys=["user_id"])
START = datetime(2026, 1, 1, tzinfo=UTC)
"""


def package(root: Path, name: str, **modules: str) -> Path:
    """A repository package `name` under `root` whose `__init__` defines the `events` source,
    the `user` entity and START, which each module (`__init__` included) uses."""
    folder = root / name
    folder.mkdir()
    for module, text in {"__init__": "", **modules}.items():
        shared = SHARED if module == "__init__" else "from . import START, events, user\n"
        (folder / f"{module}.py").write_text(IMPORTS + shared + textwrap.dedent(text))
    return folder


def line_of(path: Path, marker: str) -> int:
    """The 1-based line of `path` holding `marker`."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if marker in line)


@pytest.fixture
def project(cli, data_dir, monkeypatch) -> Path:
    """The data directory as the project folder commands run from: errors name paths relative
    to it, as they do from a checkout of the feature repository."""
    monkeypatch.chdir(data_dir)
    return data_dir


def error_of(cli, *args: str) -> str:
    """What a command that fails writes to stderr; it exits 1 and writes nothing else."""
    code, out, err = cli(*args)
    assert (code, out) == (1, ""), (code, out, err)
    return err


VIEW = """
@batch_feature_view(sources=[events], entities=[user], schema=[Field("clicks", Int64)],
                    timestamp_field="ts", feature_start_time=START)
def user_clicks(events):
    return events.select("user_id", "ts", "clicks")
"""


# ---- modules that fail to import --------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [("plan",), ("apply", "--yes"), ("validate",), ("registry",)],
    ids=lambda c: c[0],
)
def test_a_name_error_is_one_line_with_file_and_line(cli, project, command):
    name = f"repo_typo_{command[0]}"
    folder = package(project, name, user=VIEW + 'typo = Fielde("x", Int64)\n')
    line = line_of(folder / "user.py", "Fielde")
    assert error_of(cli, *command, "--repository", name) == (
        f"error: RepositoryError: {name}/user.py:{line}: NameError: name 'Fielde' is not defined\n"
    )
    assert not (project / "offline" / "registry").exists(), "nothing applied"


def test_the_traceback_is_printed_only_with_verbose(cli, project):
    folder = package(project, "repo_verbose", user=VIEW + 'typo = Fielde("x", Int64)\n')
    line = line_of(folder / "user.py", "Fielde")
    err = error_of(cli, "--verbose", "plan", "--repository", "repo_verbose")
    assert err.startswith("Traceback (most recent call last):")
    assert f'repo_verbose/user.py", line {line}, in <module>' in err
    assert err.splitlines()[-1] == (
        f"error: RepositoryError: repo_verbose/user.py:{line}: NameError: "
        "name 'Fielde' is not defined"
    )


@pytest.mark.parametrize(
    ("name", "text", "marker", "problem"),
    [
        ("unclosed", "total = (1 +\n", "total", "SyntaxError: '(' was never closed"),
        ("syntax", "def broken(:\n    pass\n", "def broken", "SyntaxError: invalid syntax"),
        ("indent", "flat = 1\n  deeper = 2\n", "deeper", "IndentationError: unexpected indent"),
        (
            "import_name",
            "from featureplane import Fieldz\n",
            "Fieldz",
            "ImportError: cannot import name 'Fieldz' from 'featureplane' "
            f"({featureplane.__file__})",
        ),
        (
            "no_module",
            "import no_such_module\n",
            "no_such",
            "ModuleNotFoundError: No module named 'no_such_module'",
        ),
        ("runtime", "ratio = 1 / 0\n", "ratio", "ZeroDivisionError: division by zero"),
    ],
)
def test_any_import_failure_of_a_module_is_one_line(cli, project, name, text, marker, problem):
    folder = package(project, f"repo_{name}", stats=text)
    line = line_of(folder / "stats.py", marker)
    assert error_of(cli, "plan", "--repository", f"repo_{name}") == (
        f"error: RepositoryError: repo_{name}/stats.py:{line}: {problem}\n"
    )


def test_an_unknown_repository_package_is_one_line(cli):
    assert error_of(cli, "plan", "--repository", "no_such_repository") == (
        "error: RepositoryError: ModuleNotFoundError: No module named 'no_such_repository'\n"
    )


# ---- definitions whose mistake is found before they exist -------------------------------


def test_an_unknown_aggregation_function_is_the_views_error(cli, project):
    folder = package(
        project,
        "repo_cnt",
        clicks="""
        @batch_feature_view(sources=[events], entities=[user], schema=[Field("clicks", Int64)],
                            timestamp_field="ts", feature_start_time=START,
                            aggregations=[Aggregation("clicks", "cnt", timedelta(days=1))])
        def user_clicks(events):
            return events.select("user_id", "ts", "clicks")
        """,
    )
    line = line_of(folder / "clicks.py", "@batch_feature_view")
    assert error_of(cli, "plan", "--repository", "repo_cnt") == (
        f"error: FeatureViewError: user_clicks (repo_cnt/clicks.py:{line}): aggregation "
        "'clicks_cnt_1d': function 'cnt' is not one of count, sum, mean, min, max, stddev, var, "
        "first, last, approx_count_distinct, last_n(n), approx_count_distinct(precision)\n"
    )


@pytest.mark.parametrize(
    ("name", "service"),
    [
        ("one_line", 'checkout = FeatureService("checkout", features=[user_clicks[["no_such"]]])'),
        (  # the selection on another line than the service
            "lines",
            'checkout = FeatureService(\n    "checkout",\n'
            '    features=[user_clicks["no_such"]],\n)',
        ),
    ],
)
def test_a_bad_selection_names_the_services_file_and_line(cli, project, name, service):
    views = "from .views import user_clicks\n"
    folder = package(project, f"repo_{name}", views=VIEW, services=views + service + "\n")
    line = line_of(folder / "services.py", "checkout = ")
    assert error_of(cli, "plan", "--repository", f"repo_{name}") == (
        f"error: FeatureServiceError: checkout (repo_{name}/services.py:{line}): selects "
        "['no_such'] of 'user_clicks', which has the features clicks\n"
    )


def test_a_bad_selection_of_an_on_demand_view_is_its_error(cli, project):
    doubled = """
    @on_demand_feature_view(sources=[user_clicks[["clics"]]], schema=[Field("n", Int64)])
    def doubled(clicks):
        return {"n": 2 * clicks["clicks"]}
    """
    folder = package(project, "repo_odfv", __init__=VIEW + textwrap.dedent(doubled))
    line = line_of(folder / "__init__.py", "@on_demand_feature_view")
    assert error_of(cli, "plan", "--repository", "repo_odfv") == (
        f"error: OnDemandFeatureViewError: doubled (repo_odfv/__init__.py:{line}): selects "
        "['clics'] of 'user_clicks', which has the features clicks\n"
    )


# ---- plan and apply validate outputs on Spark -------------------------------------------


def versions(data_dir: Path) -> list[int]:
    return RegistryStore(str(data_dir / "offline" / "registry")).versions()


def test_plan_and_apply_refuse_an_output_of_the_wrong_type(cli, project):
    view = VIEW.replace('Field("clicks", Int64)', 'Field("clicks", String)')
    folder = package(project, "repo_type", __init__=view)
    line = line_of(folder / "__init__.py", "@batch_feature_view")
    error = (
        f"error: FeatureViewError: user_clicks (repo_type/__init__.py:{line}): feature 'clicks' "
        "is bigint, but the schema says String (string); cast it in the transformation\n"
    )
    assert error_of(cli, "plan", "--repository", "repo_type", "--detailed-exitcode") == error
    assert error_of(cli, "apply", "--repository", "repo_type", "--yes") == error
    assert versions(project) == [], "a refused apply writes no version"
    code, out, _ = cli("plan", "--repository", "repo_type", "--no-validate", "--detailed-exitcode")
    assert code == 2 and out.startswith("Changes to the registry (nothing applied yet):")


def test_plan_output_is_unchanged_by_validation(cli):
    validated = cli("plan", "--repository", "plan_repo_v1")
    assert validated == cli("plan", "--repository", "plan_repo_v1", "--no-validate")
    assert validated[0] == 0 and validated[2] == ""


def test_plan_refuses_a_transformation_spark_cannot_resolve(cli, project):
    view = VIEW.replace('"clicks")', 'events["clickz"].alias("clicks"))')
    folder = package(project, "repo_column", __init__=view)
    line = line_of(folder / "__init__.py", "@batch_feature_view")
    err = error_of(cli, "plan", "--repository", "repo_column")
    prefix = (
        f"error: FeatureViewError: user_clicks (repo_column/__init__.py:{line}): the "
        "transformation raised AnalysisException: "
    )
    assert err.startswith(prefix) and "clickz" in err and err.count("\n") == 1, err


def test_plan_refuses_a_source_it_cannot_read(cli, project):
    missing = 'missing = BatchSource("missing", path="raw/missing", timestamp_field="ts")\n'
    view = VIEW.replace("sources=[events]", "sources=[missing]")
    folder = package(project, "repo_source", __init__=missing + view)
    line = line_of(folder / "__init__.py", "missing = BatchSource")
    err = error_of(cli, "plan", "--repository", "repo_source")
    prefix = (
        f"error: SourceError: missing (repo_source/__init__.py:{line}): cannot read "
        f"{project / 'raw' / 'missing'}: "
    )
    assert err.startswith(prefix) and err.count("\n") == 1, err


# ---- validate runs pandas functions -----------------------------------------------------


def pandas_view(body: str) -> str:
    return f"""
@batch_feature_view(sources=[events], entities=[user], schema=[Field("clicks", Int64)],
                    mode="pandas", timestamp_field="ts", feature_start_time=START)
def user_pandas(events):
    {body}
"""


@pytest.mark.parametrize(
    ("name", "body", "problem"),
    [
        ("int", "return len(events)", "returned int, not a DataFrame"),
        (
            "column",
            'return events[["user_id", "ts"]]',
            "output is missing schema features ['clicks']",
        ),
        (
            "float",
            'return events[["user_id", "ts", "clicks"]].astype({"clicks": "float64"})',
            "feature 'clicks' is float64, but the schema says Int64; cast it in the transformation",
        ),
        (
            "raises",
            'return events.assign(clicks=events["clickz"])',
            "the transformation raised KeyError: 'clickz' at {path}:{line} on 1 row of user_id=1",
        ),
    ],
)
def test_validate_runs_pandas_functions_on_a_sample_of_the_first_window(
    cli, project, name, body, problem
):
    folder = package(project, f"repo_pandas_{name}", __init__=pandas_view(body))
    path = f"repo_pandas_{name}/__init__.py"
    problem = problem.format(path=path, line=line_of(folder / "__init__.py", "return "))
    line = line_of(folder / "__init__.py", "@batch_feature_view")
    error = f"error: FeatureViewError: user_pandas ({path}:{line}): {problem}\n"
    assert error_of(cli, "validate", "--repository", f"repo_pandas_{name}") == error
    assert error_of(cli, "plan", "--repository", f"repo_pandas_{name}") == error


def test_validate_says_what_it_ran_a_pandas_function_on(cli, project):
    body = 'return events[["user_id", "ts", "clicks"]]'
    package(project, "repo_pandas_ok", __init__=pandas_view(body))
    code, out, err = cli("validate", "--repository", "repo_pandas_ok")
    assert (code, err) == (0, "")
    [line] = out.splitlines()
    assert line.startswith("ok  user_pandas ")
    assert line.endswith("  (pandas function run on 1 row of user_id=1)")


def test_every_demo_view_validates_and_its_pandas_functions_run(spark, demo_data):
    repository = Repository.load("feature_assets")
    ran = {name: validate_view(spark, view) for name, view in repository.feature_views.items()}
    pandas = {name for name, view in repository.feature_views.items() if view.mode == "pandas"}
    assert pandas == {"user_profile", "user_click_sessions"}
    for name in pandas:
        assert ran[name].startswith("pandas function run on "), ran[name]
    assert {ran[name] for name in ran.keys() - pandas} == {""}
