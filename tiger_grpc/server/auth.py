"""Bearer-key authentication of every `tiger.v1` method (health checking and
reflection stay open, as load balancers expect)."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from ..api.errors import Status
from ..api.wire import SERVICE_NAME
from ..runtime import metrics


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <key>` on every `tiger.v1` method."""

    def __init__(self, api_key: str) -> None:
        self._expected = f"Bearer {api_key}".encode()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        metadata = dict(details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        if isinstance(given, str) and hmac.compare_digest(
            given.encode(), self._expected
        ):
            return handler
        message = (
            "missing bearer token: send `authorization: Bearer <key>`"
            if not given
            else "invalid API key"
        )
        method = details.method.rsplit("/", 1)[-1]
        metrics.REQUESTS.labels(method, "", "UNAUTHENTICATED").inc()
        return _rejecting_handler(handler, message)


def _rejecting_handler(
    handler: grpc.RpcMethodHandler, message: str
) -> grpc.RpcMethodHandler:
    async def reject(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(Status.UNAUTHENTICATED.grpc_code, message)

    async def reject_stream(
        request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await context.abort(Status.UNAUTHENTICATED.grpc_code, message)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(reject, **kwargs)
