"""The gRPC servicer: thin, converting at the edge and mapping errors to statuses."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from . import metrics
from .convert import event_to_pb, import_event_to_pb, model_to_pb, train_event_to_pb
from .errors import Status, TigerError
from .importer import Importer
from .models import ModelRegistry
from .observability import REQUEST_ID, REQUEST_ID_HEADER
from .params_pb import params_from_pb, train_params_from_pb
from .pb.tiger.v1 import tiger_pb2 as pb
from .pb.tiger.v1 import tiger_pb2_grpc as pb_grpc
from .store import canonical_id
from .training import Trainer

log = logging.getLogger(__name__)

GRPC_CODES = {
    Status.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Status.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Status.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Status.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Status.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Status.INTERNAL: grpc.StatusCode.INTERNAL,
    Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}
INTERNAL_MESSAGE = "internal error (details are in the server log)"


class TigerServicer(pb_grpc.TigerServicer):
    """Implements `tiger.v1.Tiger` over a `ModelRegistry`."""

    def __init__(
        self, registry: ModelRegistry, trainer: Trainer, importer: Importer
    ) -> None:
        self._registry = registry
        self._trainer = trainer
        self._importer = importer

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateChunk]:
        """Streams info, delta and then one stop (or one error) chunk."""
        events = _stream(
            context,
            "Generate",
            self._model_label(request.model),
            lambda: self._registry.generate(params_from_pb(request)),
            event_to_pb,
            lambda m: pb.GenerateChunk(error=pb.ErrorChunk(message=m)),
        )
        async for chunk in events:
            yield chunk

    async def Train(  # noqa: N802 - gRPC method name
        self, request: pb.TrainRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TrainChunk]:
        """Streams info and progress chunks, then one stop (or one error) chunk."""
        events = _stream(
            context,
            "Train",
            self._model_label(request.model),
            lambda: self._trainer.train(train_params_from_pb(request)),
            train_event_to_pb,
            lambda m: pb.TrainChunk(error=pb.ErrorChunk(message=m)),
        )
        async for chunk in events:
            yield chunk

    async def ImportModel(  # noqa: N802 - gRPC method name
        self, request: pb.ImportModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ImportChunk]:
        """Streams the import's phases as info chunks, then one stop (or one error)."""
        events = _stream(
            context,
            "ImportModel",
            "",
            lambda: self._importer.import_model(request.path, request.id),
            import_event_to_pb,
            lambda m: pb.ImportChunk(error=pb.ErrorChunk(message=m)),
        )
        async for chunk in events:
            yield chunk

    async def ListModels(  # noqa: N802 - gRPC method name
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        """The stored models, whether each is loaded, and its execution provider."""
        _bind_request_id(context)
        metrics.REQUESTS.labels("ListModels", "", "OK").inc()
        return pb.ListModelsResponse(
            models=[model_to_pb(s) for s in self._registry.statuses()]
        )

    def _model_label(self, model_id: str) -> str:
        """A metrics label that cannot grow without bound: known ids only."""
        key = canonical_id(model_id)
        return key if self._registry.store.get(key) is not None else "unknown"


async def _stream(
    context: grpc.aio.ServicerContext,
    method: str,
    model: str,
    make_events: Callable[[], AsyncIterator[Any]],
    to_pb: Callable[[Any], Any],
    error_chunk: Callable[[str], Any],
) -> AsyncIterator[Any]:
    """Runs a domain event stream as a gRPC stream.

    Errors before the first chunk become a status (`TigerError`'s, or INTERNAL with a
    generic message); after it, one error chunk ends the stream.
    """
    _bind_request_id(context)
    started_at = time.monotonic()
    started = False
    code = "OK"
    try:
        async with contextlib.aclosing(make_events()) as events:
            async for event in events:
                started = True
                yield to_pb(event)
    except TigerError as exc:
        code = GRPC_CODES[exc.status].name
        if started:
            yield error_chunk(exc.message)
        else:
            await context.abort(GRPC_CODES[exc.status], exc.message)
    except (asyncio.CancelledError, GeneratorExit):
        code = "CANCELLED"  # the caller left or its deadline passed
        raise
    except Exception:
        code = "INTERNAL"
        log.exception("%s failed", method)
        if started:
            yield error_chunk(INTERNAL_MESSAGE)
        else:
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    finally:
        metrics.REQUESTS.labels(method, model, code).inc()
        log.info(
            "%s model=%s code=%s %.0fms",
            method,
            model,
            code,
            (time.monotonic() - started_at) * 1000,
        )


def _bind_request_id(context: grpc.aio.ServicerContext) -> str:
    metadata = dict(context.invocation_metadata() or ())
    request_id = str(metadata.get(REQUEST_ID_HEADER) or uuid.uuid4().hex)[:128]
    REQUEST_ID.set(request_id)
    return request_id


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <key>` on every `tiger.v1` method.

    Health checking and reflection stay open, as load balancers expect.
    """

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
        if handler is None or not details.method.startswith("/tiger.v1."):
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
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def reject_stream(
        request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(reject, **kwargs)
