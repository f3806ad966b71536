"""The Delta offline store's location as a Dagster resource."""

from dagster import ConfigurableResource

from featureplane.offline_store import OfflineStore


class OfflineStoreResource(ConfigurableResource):
    """Where feature, tile and training tables live: a local path or an `s3://` URI."""

    root: str

    def store(self) -> OfflineStore:
        return OfflineStore(self.root)
