"""The OpenAPI document: `openapi.yaml` (paths and responses, kept as data) with the
request bodies' schemas generated from the request models the gateway validates
with, so the two cannot drift."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import models_json_schema

from tiger_grpc import __version__
from tiger_grpc.api.params import GuideParams, ImportParams, TrainParams

from .openai.objects import RESPONSES
from .openai.protocol import ChatCompletionRequest, CompletionRequest

DOCUMENT = Path(__file__).with_name("openapi.yaml")
REQUESTS = {
    "GenerateRequest": GuideParams,
    "TrainRequest": TrainParams,
    "ImportRequest": ImportParams,
    "ChatCompletionRequest": ChatCompletionRequest,
    "CompletionRequest": CompletionRequest,
}


@functools.cache
def _document() -> dict[str, Any]:
    document = yaml.safe_load(DOCUMENT.read_text())
    document["info"]["version"] = __version__
    _, schemas = models_json_schema(
        [(model, "validation") for model in REQUESTS.values()]  # type: ignore[misc]
        + [(model, "serialization") for model in RESPONSES.values()],
        ref_template="#/components/schemas/{model}",
    )
    defs = schemas["$defs"]
    for name, model in {**REQUESTS, **RESPONSES}.items():
        defs[name] = defs.pop(model.__name__)
    document["components"]["schemas"].update(defs)
    return document


def openapi() -> dict[str, Any]:
    """The document (a copy: callers may change it)."""
    return copy.deepcopy(_document())
