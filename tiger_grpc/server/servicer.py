"""The gRPC servicer: thin, converting at the edge (`api.wire`) and mapping errors
to statuses through the one status table (`api.errors`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Protocol

import grpc

from ..api.errors import Status, TigerError
from ..api.events import Event, Failure, ImportEvent, Model, TrainEvent
from ..api.params import GenerateParams, ImportParams, TrainParams
from ..api.wire import (
    event_to_pb,
    import_params_from_pb,
    model_to_pb,
    params_from_pb,
    train_params_from_pb,
)
from ..pb.tiger.v1 import tiger_pb2 as pb
from ..pb.tiger.v1 import tiger_pb2_grpc as pb_grpc
from ..runtime import metrics
from ..runtime.logs import REQUEST_ID, REQUEST_ID_HEADER
from .auth import CALLER

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error (details are in the server log)"


class Registry(Protocol):
    """What the servicer needs of `models.ModelRegistry`."""

    def generate(self, params: GenerateParams) -> AsyncGenerator[Event]: ...

    def models(self) -> list[Model]: ...

    def default_model(self) -> str: ...

    def knows(self, model_id: str) -> bool: ...


class Trainer(Protocol):
    def train(self, params: TrainParams) -> AsyncGenerator[TrainEvent]: ...


class Importer(Protocol):
    def import_model(self, params: ImportParams) -> AsyncGenerator[ImportEvent]: ...


class TigerServicer(pb_grpc.TigerServicer):
    """Implements `tiger.v1.Tiger` over a model registry, a trainer and an importer."""

    def __init__(
        self, registry: Registry, trainer: Trainer, importer: Importer
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
            functools.partial(event_to_pb, chunk=pb.TrainChunk),
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
            lambda: self._importer.import_model(import_params_from_pb(request)),
            functools.partial(event_to_pb, chunk=pb.ImportChunk),
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
            models=[model_to_pb(m) for m in self._registry.models()],
            default_model=self._registry.default_model(),
        )

    def _model_label(self, model_id: str) -> str:
        """A metrics label that cannot grow without bound: known ids only."""
        key = model_id.strip().lower()
        return key if self._registry.knows(key) else "unknown"


async def _stream(
    context: grpc.aio.ServicerContext,
    method: str,
    model: str,
    make_events: Callable[[], AsyncGenerator[Any]],
    to_pb: Callable[[Any], Any],
) -> AsyncGenerator[Any]:
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
        code = exc.status.name
        if started:
            yield to_pb(Failure(exc.message, exc.status))
        else:
            await context.abort(exc.status.grpc_code, exc.message)
    except (asyncio.CancelledError, GeneratorExit):
        code = "CANCELLED"  # the caller left or its deadline passed
        raise
    except Exception:
        code = "INTERNAL"
        log.exception("%s failed", method)
        if started:
            yield to_pb(Failure(INTERNAL_MESSAGE))
        else:
            await context.abort(Status.INTERNAL.grpc_code, INTERNAL_MESSAGE)
    finally:
        metrics.REQUESTS.labels(method, model, code).inc()
        log.info(
            "%s model=%s code=%s %.0fms key=%s",
            method,
            model,
            code,
            (time.monotonic() - started_at) * 1000,
            CALLER.get(),
        )


def _bind_request_id(context: grpc.aio.ServicerContext) -> str:
    metadata = dict(context.invocation_metadata() or ())
    request_id = str(metadata.get(REQUEST_ID_HEADER) or uuid.uuid4().hex)[:128]
    REQUEST_ID.set(request_id)
    return request_id
