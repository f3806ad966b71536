"""The Dagster code location of this feature repository (see workspace.yaml)."""

from featureplane import Repository
from featureplane.dagster import build_definitions

defs = build_definitions(Repository.load("feature_assets"))
