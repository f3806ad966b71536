"""The design's dependency rules, asserted on the code itself."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def python_files(folder: str, exclude: str | None = None) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if exclude is None or exclude not in f.relative_to(ROOT).parts]


@pytest.mark.parametrize(
    "path", python_files("featureplane", exclude="dagster"), ids=lambda p: p.name
)
def test_library_outside_its_dagster_package_never_imports_dagster(path):
    assert not imported_modules(path) & {"dagster", "resources", "sensors"}


@pytest.mark.parametrize("path", python_files("feature_assets"), ids=lambda p: p.name)
def test_feature_repository_holds_definitions_only(path):
    machinery = {"dagster", "resources", "sensors", "online"}
    if path.name != "definitions.py":
        assert not imported_modules(path) & machinery


def modules_loaded_by(statement: str) -> set[str]:
    code = f"{statement}; import sys; print(' '.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return {name.split(".")[0] for name in out.stdout.split()}


def test_definitions_api_imports_neither_spark_nor_dagster():
    assert not modules_loaded_by("import featureplane") & {"dagster", "pyspark"}


def test_loading_the_feature_repository_imports_no_dagster():
    loaded = modules_loaded_by("import featureplane as fp; fp.Repository.load('feature_assets')")
    assert "dagster" not in loaded
    assert "feature_assets" in loaded


def test_online_package_imports_no_spark_and_no_dagster():
    loaded = modules_loaded_by("import online")
    assert not loaded & {"pyspark", "dagster"}


def test_online_store_is_light_and_leaves_boto3_to_its_dynamodb_module():
    """The Lambda handler imports it cold: no Spark, Dagster or pandas, boto3 only for DynamoDB."""
    code = (
        "import time; start = time.perf_counter(); import featureplane.online_store.sqlite; "
        "print(f'cold import of featureplane.online_store: {time.perf_counter() - start:.3f} s')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    print(out.stdout.strip())
    loaded = modules_loaded_by("import featureplane.online_store.sqlite")
    assert not loaded & {"pyspark", "dagster", "pandas", "numpy", "boto3", "botocore"}
    assert "boto3" in modules_loaded_by("import featureplane.online_store.dynamodb")


def test_only_the_aws_backends_import_boto3():
    """The DynamoDB store, and the registry store's S3 files (lazily, in their class)."""
    importers = {
        path.relative_to(ROOT).as_posix()
        for path in python_files("featureplane")
        if imported_modules(path) & {"boto3", "botocore"}
    }
    assert importers <= {
        "featureplane/online_store/dynamodb.py",
        "featureplane/registry_store.py",
    }
    assert not modules_loaded_by("import featureplane.registry_store") & {"boto3", "botocore"}


def test_the_lambda_handler_imports_light_and_fast():
    """The handler's cold import (what a Lambda cold start pays): no Spark, Dagster or pandas."""
    code = (
        "import time; start = time.perf_counter(); import online.handler; "
        "elapsed = time.perf_counter() - start; import sys; "
        "print(f'{elapsed:.4f}', ' '.join(sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-X", "frozen_modules=on", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed, *modules = out.stdout.split()
    print(f"cold import of online.handler: {float(elapsed) * 1000:.0f} ms")
    loaded = {name.split(".")[0] for name in modules}
    assert not loaded & {"pyspark", "dagster", "pandas", "numpy", "pyarrow", "boto3", "uvicorn"}
    assert float(elapsed) < 1.0
