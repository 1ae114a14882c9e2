"""The OpenAPI description stays true: schemathesis against the live gateway."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.helpers import API_KEY

pytestmark = pytest.mark.e2e


def test_api_conforms_to_its_openapi(base_url: str) -> None:
    """Every operation, with generated valid and invalid inputs: never a 5xx, and every
    status, content type and body is one the document declares."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {
        "POST /v1/generate_response",
        "POST /v1/train",
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "GET /v1/models",
        "GET /v1/models/{model}",
    } <= labels, labels
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            case.call_and_validate(
                base_url=base_url,
                timeout=120,
                headers={"Authorization": f"Bearer {API_KEY}"},
                excluded_checks=_beyond_json_schema(case.body),
            )

        check()


def _beyond_json_schema(body: object) -> list:
    """A rule JSON Schema cannot state makes a request the document allows a 400:
    a named `tool_choice` must be one of `tools`, and tools have unique names.
    Such requests are judged on everything but their acceptance."""
    if not isinstance(body, dict) or not isinstance(body.get("tools"), list):
        return []
    names = [
        (t.get("function") or {}).get("name") if isinstance(t, dict) else None
        for t in body["tools"]
    ]
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        named_elsewhere = False
    else:
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        named_elsewhere = name not in names
    if len(set(names)) < len(names) or named_elsewhere:
        return [positive_data_acceptance]
    return []


def test_openapi_document_lists_every_route(base_url: str) -> None:
    paths = requests.get(f"{base_url}/openapi.json", timeout=10).json()["paths"]
    assert {
        "/v1/generate_response",
        "/v1/train",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/models/import",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/",
    } == set(paths)
