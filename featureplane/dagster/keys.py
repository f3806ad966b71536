"""The asset keys of a repository's objects: `sources/`, `features/`, `online/`, `services/`,
`training/` and the name."""

from dagster import AssetKey

from featureplane.feature_service import FeatureService
from featureplane.feature_view import FeatureView
from featureplane.source import BatchSource
from featureplane.training_dataset import TrainingDataset


def source_key(source: BatchSource) -> AssetKey:
    return AssetKey(["sources", source.name])


def feature_key(view: FeatureView) -> AssetKey:
    return AssetKey(["features", view.name])


def online_key(view: FeatureView) -> AssetKey:
    return AssetKey(["online", view.name])


def training_key(dataset: TrainingDataset) -> AssetKey:
    return AssetKey(["training", dataset.name])


def service_key(service: FeatureService) -> AssetKey:
    return AssetKey(["services", service.name])
