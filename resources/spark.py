"""The Spark session as a Dagster resource, usable outside Dagster as well."""

from contextlib import AbstractContextManager, ExitStack

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr
from pyspark.sql import SparkSession

from featureplane.spark_session import SparkMode, configured_mode, spark_session


class SparkResource(ConfigurableResource):
    """A Spark session for one run: Sail in-process (`local`), `connect` to a URL, or `classic`.

    In Dagster the session opens when a step starts and closes when it ends. In a notebook:
    `with SparkResource().open() as spark: ...`.
    """

    mode: SparkMode = "local"
    url: str | None = None
    conf: dict[str, str] = {}

    _stack: ExitStack | None = PrivateAttr(default=None)
    _session: SparkSession | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls) -> "SparkResource":
        """The session the settings choose: `$FEATUREPLANE_SPARK_REMOTE`, else Sail."""
        mode, url = configured_mode()
        return cls(mode=mode, url=url)

    def open(self) -> AbstractContextManager[SparkSession]:
        """A context manager yielding a session configured like this resource."""
        return spark_session(self.mode, self.url, self.conf)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._stack = ExitStack()
        self._session = self._stack.enter_context(self.open())

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = self._session = None

    @property
    def session(self) -> SparkSession:
        if self._session is None:
            raise RuntimeError("SparkResource is not set up: use it in a Dagster run or open()")
        return self._session
