"""Errors users can act on: each names the object, where it was defined, and the problem.

Printed by Python as e.g. ``FeatureViewError: user_click_stats (feature_assets/clicks.py:12):
output is missing join key 'user_id'``; a module of the repository that fails to import has no
object to name: ``RepositoryError: feature_assets/user.py:14: NameError: name 'Fielde' is not
defined``.
"""

from __future__ import annotations


class DefinitionError(ValueError):
    """A definition in the feature repository is invalid."""

    def __init__(self, name: str | None, location: str | None, problem: str):
        self.name, self.location, self.problem = name, location, problem
        if name is None:
            super().__init__(f"{location}: {problem}" if location else problem)
            return
        where = f" ({location})" if location else ""
        super().__init__(f"{name}{where}: {problem}")


class EntityError(DefinitionError):
    """An entity definition is invalid."""


class SourceError(DefinitionError):
    """A source definition is invalid or its data cannot be read."""


class FeatureViewError(DefinitionError):
    """A feature view's definition or output is invalid."""


class OnDemandFeatureViewError(DefinitionError):
    """An on-demand feature view's definition, or what its function returned, is invalid."""


class FeatureServiceError(DefinitionError):
    """A feature service, or a reference to features, is invalid."""


class TrainingDatasetError(DefinitionError):
    """A training dataset definition is invalid."""


class RepositoryError(DefinitionError):
    """The feature repository as a whole is inconsistent (duplicate or unknown names), or one
    of its modules fails to import (no name then: the file and line of the failure)."""


class RetrievalError(ValueError):
    """A request for feature data cannot be served as asked (spine, references, names)."""


class MaterializationFailed(RuntimeError):
    """A run failed; the message has one line per failed step: the asset and what stopped it
    (the volume guard, a source not landed, a blocked quality check, a damaged table)."""


class RegistryCorrupt(ValueError):
    """A registry file (serving registry or applied version) that is not a readable registry:
    truncated, not JSON, of another format, or missing or mistyping a part. Names the file,
    the part and, where the reader knows one, how to repair it."""

    def __init__(self, path: str, problem: str, remedy: str | None = None):
        self.path, self.problem, self.remedy = path, problem, remedy
        super().__init__(f"{path}: {problem}" + (f"; {remedy}" if remedy else ""))


class SettingError(ValueError):
    """A setting of the environment (`featureplane.settings`) that cannot be; names the
    variable and what it must be."""


class InstanceError(RuntimeError):
    """The Dagster instance of $DAGSTER_HOME cannot open its storage (Postgres down, wrong
    credentials); names the folder and the cause."""


class SigningKeyError(ValueError):
    """A signing or verify key in the environment that is not one (`featureplane.signing`);
    names the variable."""


class RegistryUntrusted(ValueError):
    """A registry file servers would trust (a version, serving pointer, access document or
    served registry) that is not signed by a trusted key: it carries code and API key digests,
    so it is refused. Names the file and why: not signed, the signature does not match, or
    signed by a key the reader does not trust (`featureplane.signing`)."""

    def __init__(self, path: str, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


class ManifestCorrupt(ValueError):
    """A training dataset manifest that is not readable: maintenance then deletes nothing, since
    it cannot know which versions the dataset needs."""


class AccessPolicyError(DefinitionError):
    """An access policy definition is invalid."""


class AccessError(ValueError):
    """An access change that cannot be made as asked: an unknown or existing principal, an
    unknown key, a principal name or limit that is not valid."""


class ClusterError(RuntimeError):
    """The local Spark cluster did not start (the log to read is named), or cannot be."""
