"""Reading a request's JSON body into its request model: strict JSON (no NaN or
Infinity), and a `Reject` (400) that names the field when the model refuses it."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web

from tiger_grpc.api.errors import InvalidArgumentError, Status
from tiger_grpc.api.params import validated

from .auth import Reject

P = TypeVar("P")


async def read_body(request: web.Request, cls: type[P]) -> P:
    """The request's JSON body, validated as `cls`; raises `Reject` (400)."""
    try:
        body = await request.json(loads=_strict_loads)
    except ValueError as exc:
        message = f"the request body is not valid JSON: {exc}"
        raise Reject(Status.INVALID_ARGUMENT, message) from None
    try:
        return validated(cls, body)  # type: ignore[type-var]
    except InvalidArgumentError as exc:
        raise Reject(exc.status, exc.message) from None


def _strict_loads(text: str) -> Any:
    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(text, parse_constant=reject_constant)
