"""The guide's API: generate, train, import and the model list, each translated to
its gRPC call. Bodies are validated here, once, by the shared request models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from aiohttp import web

from tiger_grpc.api.params import GuideParams, ImportParams, TrainParams
from tiger_grpc.api.wire import (
    import_params_to_pb,
    model_from_pb,
    params_to_pb,
    train_params_to_pb,
)
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb

from .auth import Reject, call_metadata
from .backend import BACKEND
from .bodies import read_body
from .chunks import model_to_json
from .config import CONFIG
from .responses import error_response, respond, rpc_error_response

P = TypeVar("P")
MODEL_KEY = web.RequestKey("model", str)  # the served model, for the metrics


async def _accepted(request: web.Request, cls: type[P]) -> tuple[Any, P]:
    metadata = call_metadata(request, request.app[CONFIG])
    return metadata, await read_body(request, cls)


def _rejecting(handler: Callable[..., Any]) -> Callable[[web.Request], Any]:
    """Answers a `Reject` raised before the backend is called as an HTTP error."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Reject as reject:
            return error_response(reject.status.http_status, reject.message)

    wrapped.__doc__ = handler.__doc__
    return wrapped


@_rejecting
async def generate_response(request: web.Request) -> web.StreamResponse:
    """POST /v1/generate_response: NDJSON chunks, or one JSON object."""
    metadata, params = await _accepted(request, GuideParams)
    model = request[MODEL_KEY] = params.model.strip().lower()
    call = request.app[BACKEND].tiger.Generate(params_to_pb(params), metadata=metadata)

    def message(chunks: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "type": "message",
            "model": model,
            "content": "".join(c["delta"] for c in chunks if c["type"] == "delta"),
            "stop_reason": chunks[-1]["stop_reason"],
            "usage": chunks[-1]["usage"],
        }

    return await respond(request, call, params.stream, message)


@_rejecting
async def train(request: web.Request) -> web.StreamResponse:
    """POST /v1/train: NDJSON progress, or the final object."""
    metadata, params = await _accepted(request, TrainParams)
    request[MODEL_KEY] = params.model.strip().lower()
    pb_request = train_params_to_pb(params)
    call = request.app[BACKEND].tiger.Train(pb_request, metadata=metadata)
    return await respond(request, call, params.stream, _last)


@_rejecting
async def import_model(request: web.Request) -> web.StreamResponse:
    """POST /v1/models/import: a local HF Llama checkpoint or Llama GGUF file (on
    the server) becomes a served model; NDJSON phases or the final object."""
    metadata, params = await _accepted(request, ImportParams)
    pb_request = import_params_to_pb(params)
    call = request.app[BACKEND].tiger.ImportModel(pb_request, metadata=metadata)
    return await respond(request, call, params.stream, _last)


def _last(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    return chunks[-1]


async def models_reply(request: web.Request) -> pb.ListModelsResponse:
    """The backend's model list (raises `Reject` or the gRPC error)."""
    config = request.app[CONFIG]
    metadata = call_metadata(request, config)
    return await request.app[BACKEND].tiger.ListModels(
        pb.ListModelsRequest(), metadata=metadata, timeout=config.unary_timeout_s
    )


def openai_model(entry: dict[str, Any]) -> dict[str, Any]:
    """A model in OpenAI's shape (`object`, `owned_by`) with the guide's fields."""
    return {"object": "model", "owned_by": "tiger", **entry}


@_rejecting
async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: ids, whether each is loaded, and the provider."""
    try:
        reply = await models_reply(request)
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc)
    models = [model_to_json(model_from_pb(m)) for m in reply.models]
    # OpenAI's list shape (`object`, `data`) beside the guide's (`models`).
    data = [openai_model(entry) for entry in models]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "models": models,
            "default_model": reply.default_model,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/generate_response", generate_response)
    app.router.add_post("/v1/train", train)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/models/import", import_model)
