"""The feature server's OpenAPI document as the tests read it: which documented operation a
request reaches, and whether an answer is one the document allows (status and body schema,
by `jsonschema`)."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from featureplane.serving.openapi import COMMON

MAX_ERROR_BYTES = 2048
DOOR = set(COMMON) - {405}
"""What a request to no documented path may get besides 404: the answers given before routing."""


class ApiDocument:
    """An OpenAPI document of the feature server, with a validator per schema it names."""

    def __init__(self, document: dict):
        self.document = document
        self._validators: dict[str, Draft202012Validator] = {}

    def operation(self, method: str, path: str) -> tuple[str | None, dict | None]:
        """(the documented path a request's path reaches, its operation for `method`): a
        concrete path before a templated one, leading and trailing slashes ignored, as the
        server routes."""
        parts = path.strip("/").split("/")
        matched = [
            template
            for template in self.document["paths"]
            if _matches(template.strip("/").split("/"), parts)
        ]
        if not matched:
            return None, None
        template = min(matched, key=lambda t: "{" in t)
        return template, self.document["paths"][template].get(method.lower())

    def statuses(self, method: str, path: str) -> set[int]:
        """What the document lets the server answer a request."""
        template, found = self.operation(method, path)
        if template is None:
            return DOOR | {404}
        if found is None:
            return set(COMMON)
        return {int(status) for status in found["responses"]}

    def errors(self, pointer: str, value: Any) -> list[str]:
        validator = self._validators.get(pointer)
        if validator is None:
            schema = {"$ref": pointer, "components": self.document["components"]}
            validator = self._validators[pointer] = Draft202012Validator(schema)
        return [error.message[:300] for error in validator.iter_errors(value)]

    def check(self, method: str, path: str, status: int, body: bytes) -> Any:
        """The answer's JSON, asserted to be a status the document gives for the request and a
        body valid against that status's schema (errors bounded in size)."""
        assert status in self.statuses(method, path), (status, method, path[:100], body[:300])
        answer = json.loads(body)
        if status == 200:
            _, found = self.operation(method, path)
            pointer = found["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        else:
            assert len(body) <= MAX_ERROR_BYTES, body[:200]
            pointer = "#/components/schemas/Error"
        errors = self.errors(pointer, answer)
        assert not errors, (status, path[:100], errors[:3])
        return answer


def _matches(template: list[str], parts: list[str]) -> bool:
    return len(template) == len(parts) and all(
        t == p or (t.startswith("{") and bool(p)) for t, p in zip(template, parts, strict=True)
    )
