"""Who may call: every `tiger.v1` method needs `authorization: Bearer <key>`, a key
with the method's scope, and room under the key's limits (health checking and
reflection stay open, as load balancers expect). The HTTP gateway forwards its
callers' keys, so both protocols are judged here, alike.

Each call runs with its key's name in `CALLER` (the servicer's log lines and the
metrics carry it, never the key); a training or an import leaves one audit line:
who asked, what, and how it ended.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from ..api.errors import Status
from ..api.keys import METHOD_SCOPES, Key
from ..api.wire import SERVICE_NAME
from ..runtime import metrics
from .keys import KeyRing, Limits, OverLimit

log = logging.getLogger("tiger.audit")
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="-")
AUDITED = ("Train", "ImportModel")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, authorizes and limits every `tiger.v1` call."""

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys
        self.limits = Limits()

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
        method = details.method.rsplit("/", 1)[-1]
        metadata = dict(details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        given = given if isinstance(given, str) else ""
        presented = given[len("Bearer ") :] if given.startswith("Bearer ") else ""
        key = self.keys.find(presented)
        if key is None:
            metrics.KEY_REQUESTS.labels("unknown", method, "UNAUTHENTICATED").inc()
            message = (
                "missing bearer token: send `authorization: Bearer <key>`"
                if not given
                else "invalid API key"
            )
            return _rejecting(handler, Status.UNAUTHENTICATED, message)
        scope = METHOD_SCOPES.get(method, "generate")
        if scope not in key.scopes:
            metrics.KEY_REQUESTS.labels(key.name, method, "PERMISSION_DENIED").inc()
            message = (
                f"the key {key.name!r} lacks the `{scope}` scope, which {method} needs"
            )
            return _rejecting(handler, Status.PERMISSION_DENIED, message)
        return self._guarded(handler, key, method)

    def _guarded(
        self, handler: grpc.RpcMethodHandler, key: Key, method: str
    ) -> grpc.RpcMethodHandler:
        """The handler, run under the key's limits and name."""
        limits = self.limits

        async def admit(context: grpc.aio.ServicerContext) -> None:
            try:
                limits.admit(key)
            except OverLimit as over:
                metrics.KEY_REQUESTS.labels(
                    key.name, method, "RESOURCE_EXHAUSTED"
                ).inc()
                context.set_trailing_metadata((("retry-after", str(over.retry_after)),))
                await context.abort(Status.RESOURCE_EXHAUSTED.grpc_code, over.message)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await admit(context)
            caller = CALLER.set(key.name)
            end = _End(limits, key, method, request, context)
            metering = metrics.TOKENS_USED.set(end.meter)
            context.add_done_callback(end)
            try:
                async for chunk in handler.unary_stream(request, context):
                    end.outcome = _outcome(chunk) or end.outcome
                    yield chunk
            except BaseException:
                code = context.code()
                end.outcome = code.name if code is not None else "CANCELLED"
                raise
            finally:
                end()
                _reset(CALLER, caller)
                _reset(metrics.TOKENS_USED, metering)

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await admit(context)
            caller = CALLER.set(key.name)
            try:
                reply = await handler.unary_unary(request, context)
            finally:
                limits.release(key, 0)
                _reset(CALLER, caller)
            _count(key, method, "OK", 0)
            return reply

        return _like(handler, stream, unary)


class _End:
    """A streaming call's end, settled once however it comes (the stream's own
    end, or gRPC's termination callback, which also fires for a stream gRPC
    abandoned mid-send): its slot back, its tokens charged, its count and audit
    line."""

    def __init__(
        self,
        limits: Limits,
        key: Key,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.limits, self.key, self.method = limits, key, method
        self.request, self.context = request, context
        self.meter = metrics.Meter()  # the registry points it at the sequences
        self.started = time.monotonic()
        self.outcome = "OK"
        self.done = False

    def __call__(self, *_: Any) -> None:
        if self.done:
            return
        self.done = True
        if self.context.cancelled() and self.outcome == "OK":
            self.outcome = "CANCELLED"  # the caller left
        tokens = self.meter.used()
        self.limits.release(self.key, tokens)
        _count(self.key, self.method, self.outcome, tokens)
        if self.method in AUDITED:
            _audit(self.key, self.method, self.request, self.outcome, self.started)


def _reset(var: contextvars.ContextVar[Any], token: contextvars.Token[Any]) -> None:
    """A context variable back as it was; a stream abandoned by gRPC is closed
    later from another context, where there is nothing to put back."""
    try:
        var.reset(token)
    except ValueError:
        pass


def _outcome(chunk: Any) -> str | None:
    """A stream's failure after it started (its error chunk)."""
    if chunk.WhichOneof("chunk") == "error":
        return f"error: {chunk.error.message}"[:200]
    return None


def _count(key: Key, method: str, outcome: str, tokens: int) -> None:
    code = outcome if not outcome.startswith("error") else "STREAM_ERROR"
    metrics.KEY_REQUESTS.labels(key.name, method, code).inc()
    if tokens:
        metrics.KEY_TOKENS.labels(key.name).inc(tokens)


def _audit(key: Key, method: str, request: Any, outcome: str, started: float) -> None:
    """One structured line: who asked for which training or import, and how it
    ended."""
    if method == "Train":
        what = {
            "model": request.model,
            "output_model": request.output_model,
            "examples": len(request.examples),
        }
    else:
        what = {"path": request.path, "id": request.id}
    line = {
        "audit": method,
        "key": key.name,
        **what,
        "outcome": outcome,
        "ms": int((time.monotonic() - started) * 1000),
    }
    log.info("audit %s", json.dumps(line, ensure_ascii=False))


def _rejecting(
    handler: grpc.RpcMethodHandler, status: Status, message: str
) -> grpc.RpcMethodHandler:
    async def reject(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(status.grpc_code, message)

    async def reject_stream(
        request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await context.abort(status.grpc_code, message)
        yield  # pragma: no cover - makes this an async generator

    return _like(handler, reject_stream, reject)


def _like(
    handler: grpc.RpcMethodHandler, stream: Any, unary: Any
) -> grpc.RpcMethodHandler:
    """A handler of the same kind and serializers as `handler`, running `stream`
    (a server-streaming method) or `unary`."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
