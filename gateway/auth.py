"""The bearer key: checked here when this gateway knows it (so a bad key is a 401
before anything else), and forwarded to the server with the request id."""

from __future__ import annotations

import hmac

from aiohttp import web

from tiger_grpc.api.errors import Status
from tiger_grpc.runtime.logs import REQUEST_ID_HEADER

from .config import GatewayConfig

REQUEST_ID_KEY = web.RequestKey("request_id", str)


class Reject(Exception):
    """A request refused before it reaches the backend: an HTTP error."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def call_metadata(
    request: web.Request, config: GatewayConfig
) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata of an authenticated request; raises `Reject` (401)."""
    given = request.headers.get("Authorization", "")
    if not given:
        raise Reject(
            Status.UNAUTHENTICATED,
            "missing bearer token: send `Authorization: Bearer <key>`",
        )
    # gRPC metadata is printable ASCII: no key of ours is anything else.
    if not (given.isascii() and given.isprintable()) or len(given) > 1024:
        raise Reject(Status.UNAUTHENTICATED, "invalid API key")
    expected = config.api_key
    if expected is not None and not bearer_matches(given, expected):
        raise Reject(Status.UNAUTHENTICATED, "invalid API key")
    return (("authorization", given), (REQUEST_ID_HEADER, request[REQUEST_ID_KEY]))


def bearer_matches(given: str, expected: str) -> bool:
    """Whether an `Authorization` header is `Bearer <expected>`, in constant time
    (any text: bytes a client sent that are not UTF-8 compare as they came)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), f"Bearer {expected}".encode()
    )
