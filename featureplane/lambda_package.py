"""`featureplane package lambda`: the deployable AWS Lambda artifact of the serving handler.

The zip's root is the function's `/var/task` (its working directory, on `sys.path`):

- `online/handler.py` and the modules of featureplane it imports as it runs (the handler, the
  online store backends, the registry store, signing): the Spark-, Dagster- and pandas-free
  serving core, found by importing it in a fresh interpreter. Anything heavier among them is
  an error, since it would land in every cold start.
- The pinned distributions those modules import (`requirements.lock`), as wheels for Lambda's
  CPython 3.11 on x86_64 (`pip install --platform manylinux2014_x86_64 --only-binary=:all:`),
  boto3 included: the runtime's own is older than the conditional writes the registry store
  uses. botocore keeps the API models of the services featureplane calls only.
- `registry/`: the files that serve in the applied registry store (the serving version, the
  pointer and access document in force), verbatim: they are signed, so the package needs no
  private key, and the function verifies them as any server does. With `--follow` nothing is
  embedded and the function follows an `s3://` store instead.
- Byte code for every module (`.pyc`, checked by hash, not mtime): `/var/task` is read-only, so
  an uncompiled module would be compiled again on every cold start.

The function needs `FEATUREPLANE_REGISTRY` and `FEATUREPLANE_VERIFY_KEYS` in its environment
(`Package.environment`); a Dockerfile for a container image setting them is written alongside.
"""

from __future__ import annotations

import compileall
import json
import os
import py_compile
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from featureplane.registry import ServingRegistry, load_registry
from featureplane.registry_store import RegistryStore, is_store_location
from featureplane.settings import signing_key, verify_keys
from featureplane.signing import signer

PROJECT = Path(__file__).resolve().parents[1]
RUNTIME = (
    "online.handler",
    "featureplane.online_store.sqlite",
    "featureplane.online_store.dynamodb",
    "featureplane.registry_store",
    "boto3",  # the registry store's S3 files import it on first use
    "cryptography.hazmat.primitives.asymmetric.ed25519",  # signing, on first verification
)
"""What the handler imports while it serves, lazily imported parts included."""
HEAVY = ("pyspark", "dagster", "pandas", "numpy", "pyarrow", "deltalake", "pysail")
AWS_SERVICES = ("s3", "dynamodb", "sts", "sso", "sso-oidc")
"""botocore API models kept: the stores' services, and those credential providers call."""
PLATFORM = ("--platform", "manylinux2014_x86_64", "--implementation", "cp")
PYTHON = "3.11"
REGISTRY_DIR = "registry"


class PackageError(RuntimeError):
    """The package cannot be built as asked: what is missing, in one line."""


@dataclass(frozen=True)
class Package:
    """A built Lambda zip, the environment its function needs and the registry it serves."""

    path: Path
    environment: dict[str, str]
    registry: ServingRegistry

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass(frozen=True)
class ColdStart:
    """One cold start in a fresh interpreter: the handler's import, then its first answer."""

    import_seconds: float
    answer_seconds: float
    status: int


def runtime_modules() -> tuple[list[Path], list[str]]:
    """The project files the handler runs (relative to the project) and the top-level names
    of the other packages it imports, from a fresh interpreter importing RUNTIME."""
    code = (
        "import importlib, json, sys\n"
        "started = set(sys.modules)\n"  # what the interpreter and site loaded: not the handler's
        f"for name in {RUNTIME!r}: importlib.import_module(name)\n"
        "loaded = {n: getattr(m, '__file__', None) for n, m in sys.modules.items()}\n"
        "print(json.dumps({n: f for n, f in loaded.items() if n not in started}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    modules: dict[str, str | None] = json.loads(found.stdout)
    heavy = sorted({name.split(".")[0] for name in modules} & set(HEAVY))
    if heavy:
        raise PackageError(f"the handler's modules import {', '.join(heavy)}: keep it out")
    files, others = set(), set()
    for name, file in modules.items():
        top = name.split(".")[0]
        if top in ("featureplane", "online") and file is not None:
            files.add(Path(file).resolve().relative_to(PROJECT))
        elif top not in sys.stdlib_module_names:
            others.add(top)
    return sorted(files), sorted(others)


def pinned(top_level: list[str], lock: Path = PROJECT / "requirements.lock") -> list[str]:
    """`name==version` of the distributions providing `top_level`, as the lock pins them."""
    if not lock.is_file():
        raise PackageError(f"{lock} is missing: the package installs the pinned versions")
    pins = {}
    for line in lock.read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[_normal(name)] = f"{name}=={version.strip()}"
    providers = metadata.packages_distributions()
    requirements = set()
    for name in top_level:
        for distribution in providers.get(name, []):
            if _normal(distribution) not in pins:
                raise PackageError(f"{distribution} (module {name}) is not pinned in {lock}")
            requirements.add(pins[_normal(distribution)])
    return sorted(requirements)


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def install(requirements: list[str], target: Path, lock: Path) -> None:
    """Lambda's wheels of `requirements` and their dependencies, pinned by `lock`, into
    `target`; botocore trimmed to AWS_SERVICES."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile"]
    command += [*PLATFORM, "--python-version", PYTHON, "--only-binary=:all:"]
    command += ["--target", str(target), "-c", str(lock), *requirements]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        problem = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise PackageError(f"installing {', '.join(requirements)} failed: {problem}")
    models = target / "botocore" / "data"
    for service in models.iterdir() if models.is_dir() else ():
        if service.is_dir() and service.name not in AWS_SERVICES:
            shutil.rmtree(service)
    for leftover in target.glob("bin"):
        shutil.rmtree(leftover)


def serving_registry(location: str) -> ServingRegistry:
    """What serves at `location` (a registry store or file), verified; PackageError if
    nothing does, RegistryCorrupt or RegistryUntrusted as a server would raise."""
    if is_store_location(location):
        served = RegistryStore(location).serving()
        if served is None:
            raise PackageError(f"no registry applied at {location}: run `featureplane apply`")
        return load_registry(served.registry, location)
    if not Path(location).is_file():
        raise PackageError(
            f"no registry at {location}: run `featureplane apply` (or `featureplane registry`), "
            "or pass --registry"
        )
    return load_registry(location)


def embed_registry(location: str, target: Path) -> str:
    """Copy the files that serve at `location` into `target`; returns the function's
    FEATUREPLANE_REGISTRY, relative to its working directory."""
    if not is_store_location(location):
        shutil.copyfile(location, target / "registry.json")
        return "registry.json"
    (target / REGISTRY_DIR).mkdir()
    for name, data in RegistryStore(location).serving_files().items():
        (target / REGISTRY_DIR / name).write_bytes(data)
    return REGISTRY_DIR


def build(out: Path, registry: str, follow: bool = False) -> Package:
    """Build the zip at `out` (see the module docstring), and a Dockerfile beside it."""
    if follow and not registry.startswith("s3://"):
        raise PackageError(f"--follow needs an s3:// registry store, not {registry!r}")
    served = serving_registry(registry)
    files, others = runtime_modules()
    lock = PROJECT / "requirements.lock"
    requirements = pinned(others, lock)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        location = registry if follow else embed_registry(registry, root)
        for file in files:
            (root / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PROJECT / file, root / file)
        install(requirements, root, lock)
        compileall.compile_dir(
            root,
            quiet=2,
            workers=0,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        _zip(root, out)
    environment = {"FEATUREPLANE_REGISTRY": location, "FEATUREPLANE_VERIFY_KEYS": _trusted()}
    out.with_name("Dockerfile").write_text(dockerfile(out.name, environment))
    return Package(out, environment, served)


def _zip(root: Path, out: Path) -> None:
    """`root`'s files, in a fixed order, written to a temporary name and moved into place."""
    partial = out.with_name(f".{out.name}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(root).as_posix())
    os.replace(partial, out)


def _trusted() -> str:
    """The public keys the function must trust: those this machine verifies with."""
    keys = verify_keys()
    if signing_key() or not keys:
        keys = [*keys, signer().public_key_text]
    return ",".join(dict.fromkeys(keys))


def dockerfile(zip_name: str, environment: dict[str, str]) -> str:
    """A container image of the same package on AWS's Python 3.11 Lambda base image."""
    env = "".join(f'ENV {name}="{value}"\n' for name, value in environment.items())
    return (
        "ARG BASE=amazon/aws-lambda-python:3.11\n"
        "FROM ${BASE}\n"
        f"COPY {zip_name} /tmp/\n"
        f"RUN python -m zipfile -e /tmp/{zip_name} ${{LAMBDA_TASK_ROOT}} && rm /tmp/{zip_name}\n"
        f"{env}"
        'CMD ["online.handler.handler"]\n'
    )


def sample_event(registry: ServingRegistry) -> dict:
    """An API Gateway (REST) event asking for one feature vector of the first service whose
    features are all stored (no request data), with 1 (or "1") for each join key."""
    for service in registry.services.values():
        views = [registry.views.get(name) for name, _ in service.selections]
        if all(views):
            keys = {
                key: "1" if kind == "String" else 1
                for view in views
                for key, kind in zip(view.join_keys, view.join_key_types, strict=True)
            }
            path = f"/v1/feature-services/{service.name}/get-features"
            body = json.dumps({"entities": keys})
            return {"httpMethod": "POST", "path": path, "headers": {}, "body": body}
    raise PackageError("the registry has no feature service of stored views to ask for")


PROBE = """
import json, sys, time
started = time.perf_counter()
sys.path.insert(0, ".")
import online.handler
imported = time.perf_counter()
response = online.handler.handler(json.loads(sys.argv[1]))
answered = time.perf_counter()
print(json.dumps([imported - started, answered - imported, response["statusCode"]]))
"""


def cold_starts(
    package: Package, event: dict, runs: int = 5, environment: dict[str, str] | None = None
) -> list[ColdStart]:
    """Unzip the package, then start a fresh interpreter `runs` times in it that imports the
    handler and answers `event`, with only the standard library and the package on its path
    (`-I -S`: no site-packages, no project), timing both."""
    env = {"PATH": os.environ.get("PATH", ""), **package.environment, **(environment or {})}
    env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    results = []
    with tempfile.TemporaryDirectory() as task_root:
        with zipfile.ZipFile(package.path) as archive:
            archive.extractall(task_root)
        for _ in range(runs):
            done = subprocess.run(
                [sys.executable, "-I", "-S", "-c", PROBE, json.dumps(event)],
                cwd=task_root,
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode:
                lines = done.stderr.strip().splitlines() or ["no output"]
                raise PackageError(f"the unzipped handler failed: {lines[-1]}")
            imported, answered, status = json.loads(done.stdout.splitlines()[-1])
            results.append(ColdStart(imported, answered, status))
    return results


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000
