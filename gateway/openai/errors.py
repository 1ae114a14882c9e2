"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with
the HTTP status of Tiger's one status table (and `Retry-After` on a 429), so each
of the official SDKs' error classes comes out right."""

from __future__ import annotations

import re
from typing import Any

import grpc
from aiohttp import web

from tiger_grpc.api.errors import Status

from ..chunks import error_message, retry_after
from ..responses import RETRY_AFTER_S
from .objects import ErrorBody, ErrorDetail

_FIELD = re.compile(r"^`([^`]+)`")
_TYPES = {401: "authentication_error", 429: "rate_limit_error"}
_CODES = {
    Status.NOT_FOUND: "model_not_found",
    Status.UNAUTHENTICATED: "invalid_api_key",
    Status.RESOURCE_EXHAUSTED: "rate_limit_exceeded",
}


def error_object(status: Status, message: str) -> dict[str, Any]:
    """The error object: `param` is the field the message starts by naming."""
    http = status.http_status
    field = _FIELD.match(message)
    kind = _TYPES.get(http, "server_error" if http >= 500 else "invalid_request_error")
    detail = ErrorDetail(
        message=message,
        type=kind,
        param=field.group(1) if field else None,
        code=_CODES.get(status),
    )
    return ErrorBody(error=detail).dump()


def error_response(
    status: Status, message: str, http: int | None = None, wait: str = RETRY_AFTER_S
) -> web.Response:
    headers = {"Retry-After": wait} if status is Status.RESOURCE_EXHAUSTED else None
    return web.json_response(
        error_object(status, message),
        status=http or status.http_status,
        headers=headers,
    )


def rpc_error_response(exc: grpc.aio.AioRpcError) -> web.Response:
    status = Status.of_grpc(exc.code())
    return error_response(status, error_message(exc), wait=retry_after(exc))
