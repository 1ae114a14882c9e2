"""The aiohttp application: `init(config) -> web.Application`."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from tiger_grpc.errors import InvalidArgument
from tiger_grpc.observability import REQUEST_ID, REQUEST_ID_HEADER
from tiger_grpc.params_pb import params_to_pb, train_params_to_pb
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb
from tiger_grpc.pb.tiger.v1 import tiger_pb2_grpc as pb_grpc
from tiger_grpc.validation import parse_generate_body, parse_train_body

from .backend import BACKEND_SERVICE, open_channel
from .chunks import (
    TERMINAL,
    chunk_to_json,
    error_message,
    http_status,
    import_chunk_to_json,
    model_to_json,
    train_chunk_to_json,
)
from .config import GatewayConfig
from .openapi import openapi

log = logging.getLogger(__name__)
T = TypeVar("T")

NDJSON = "application/x-ndjson"
RETRY_AFTER_S = "1"
STATIC = Path(__file__).parent / "static"


CONFIG = web.AppKey("config", GatewayConfig)
REQUEST_ID_KEY = "tiger.request_id"
MODEL_KEY = "tiger.model"
HTTP_REQUESTS = Counter(
    "tiger_gateway_requests",
    "HTTP requests by route, method, model and status",
    ["route", "method", "model", "status"],
)
HTTP_SECONDS = Histogram(
    "tiger_gateway_request_duration_seconds",
    "HTTP request time, to the end of the stream",
    ["route"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
CHANNEL = web.AppKey("channel", grpc.aio.Channel)
TIGER = web.AppKey("tiger", pb_grpc.TigerStub)
HEALTH = web.AppKey("health", health_pb2_grpc.HealthStub)


def error_response(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"type": "error", "message": message}, status=status, headers=headers or None
    )


def rpc_error_response(exc: grpc.aio.AioRpcError) -> web.Response:
    status = http_status(exc.code())
    if status == 429:  # at capacity: a slot frees up as soon as any stream ends
        return error_response(
            status, error_message(exc), **{"Retry-After": RETRY_AFTER_S}
        )
    return error_response(status, error_message(exc))


def _dumps(obj: dict[str, Any]) -> bytes:
    return (
        json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n"
    ).encode()


@web.middleware
async def json_errors(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Every error, aiohttp's own included (404, 405, 413), has a JSON body."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            message = (
                f"{request.method} is not allowed on {request.path}; use {allowed}"
            )
        elif isinstance(exc, web.HTTPRequestEntityTooLarge):
            limit = request.app[CONFIG].max_body_bytes
            message = f"the request body is over the limit of {limit} bytes"
        elif isinstance(exc, web.HTTPNotFound):
            message = f"no route {request.method} {request.path}"
        else:
            message = exc.text or exc.reason
        headers = {
            k: v
            for k, v in exc.headers.items()
            if k.lower() in ("allow", "retry-after")
        }
        return error_response(exc.status, message, **headers)


def _metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    """Checks the bearer token (when this gateway knows the key) and forwards it,
    with the request id."""
    given = request.headers.get("Authorization", "")
    if not given:
        raise _Reject(401, "missing bearer token: send `Authorization: Bearer <key>`")
    expected = request.app[CONFIG].api_key
    if expected is not None and not hmac.compare_digest(
        given.encode(), f"Bearer {expected}".encode()
    ):
        raise _Reject(401, "invalid API key")
    return (("authorization", given), (REQUEST_ID_HEADER, request[REQUEST_ID_KEY]))


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def _parse_body(request: web.Request, parse: Callable[[Any], T]) -> T:
    try:
        body = await request.json(loads=_strict_loads)
    except ValueError as exc:
        raise _Reject(400, f"the request body is not valid JSON: {exc}") from None
    try:
        return parse(body)
    except InvalidArgument as exc:
        raise _Reject(400, exc.message) from None


def _strict_loads(text: str) -> Any:
    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(text, parse_constant=reject_constant)


async def generate_response(request: web.Request) -> web.StreamResponse:
    """POST /v1/generate_response: NDJSON chunks, or one JSON object."""
    try:
        metadata = _metadata(request)
        params = await _parse_body(request, parse_generate_body)
        request[MODEL_KEY] = params.model.strip().lower()
    except _Reject as reject:
        return error_response(reject.status, reject.message)
    call = request.app[TIGER].Generate(params_to_pb(params), metadata=metadata)

    def message(chunks: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "type": "message",
            "model": params.model.strip().lower(),
            "content": "".join(c["delta"] for c in chunks if c["type"] == "delta"),
            "stop_reason": chunks[-1]["stop_reason"],
            "usage": chunks[-1]["usage"],
        }

    return await _respond(request, call, chunk_to_json, params.stream, message)


async def train(request: web.Request) -> web.StreamResponse:
    """POST /v1/train: NDJSON progress, or the final object."""
    try:
        metadata = _metadata(request)
        params = await _parse_body(request, parse_train_body)
        request[MODEL_KEY] = params.model.strip().lower()
    except _Reject as reject:
        return error_response(reject.status, reject.message)
    call = request.app[TIGER].Train(train_params_to_pb(params), metadata=metadata)
    return await _respond(request, call, train_chunk_to_json, params.stream, _last)


async def import_model(request: web.Request) -> web.StreamResponse:
    """POST /v1/models/import: a local HF Llama checkpoint (on the server) becomes a
    served model; NDJSON phases or the final object."""
    try:
        metadata = _metadata(request)
        body = await _parse_body(request, _import_body)
    except _Reject as reject:
        return error_response(reject.status, reject.message)
    call = request.app[TIGER].ImportModel(
        pb.ImportModelRequest(path=body["path"], id=body["id"]), metadata=metadata
    )

    return await _respond(
        request, call, import_chunk_to_json, body.get("stream") is True, _last
    )


def _last(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    return chunks[-1]


def _import_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    for name in ("path", "id"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise InvalidArgument(
                f"`{name}` is required and must be a non-empty string"
            )
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidArgument("`stream` must be a boolean")
    return body


async def _respond(
    request: web.Request,
    call: Any,
    to_json: Callable[[Any], dict[str, Any]],
    stream: bool,
    collect: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> web.StreamResponse:
    """Answers a server-streaming call: HTTP error before its first chunk, then NDJSON
    (stream), or the object `collect` makes of the chunks (a 500 if they end with an
    error); the call is cancelled if we stop early."""
    try:
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            return rpc_error_response(exc)
        chunks = _chunks(call, first, to_json)
        if not stream:
            objs = [obj async for obj in chunks]
            if objs[-1]["type"] == "error":
                return error_response(500, objs[-1]["message"])
            return _json(collect(objs))
        response = web.StreamResponse(
            headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"}
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        async for obj in chunks:
            await response.write(_dumps(obj))
        await response.write_eof()
        return response
    finally:
        if not call.done():  # the client left, or we stopped early: free the engine
            call.cancel()


async def _chunks(
    call: Any, first: Any, to_json: Callable[[Any], dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    """The JSON chunks of a call, ending with exactly one `stop` or `error`."""
    chunk = first
    try:
        while chunk is not grpc.aio.EOF:
            obj = to_json(chunk)
            yield obj
            if obj["type"] in TERMINAL:
                # Read the call's end too, so it completes rather than being
                # cancelled by the cleanup below (the server counts it as OK).
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await call.read()
                return
            chunk = await call.read()
    except grpc.aio.AioRpcError as exc:
        yield {"type": "error", "message": error_message(exc)}
        return
    yield {
        "type": "error",
        "message": "the backend ended the stream without a stop chunk",
    }


def _json(obj: dict[str, Any]) -> web.Response:
    return web.json_response(obj, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: ids, whether each is loaded, and the provider."""
    try:
        metadata = _metadata(request)
        reply = await request.app[TIGER].ListModels(
            pb.ListModelsRequest(),
            metadata=metadata,
            timeout=request.app[CONFIG].unary_timeout_s,
        )
    except _Reject as reject:
        return error_response(reject.status, reject.message)
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc)
    return web.json_response({"models": [model_to_json(m) for m in reply.models]})


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the gateway process is alive."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: 200 only when the gRPC backend answers and is serving."""
    try:
        reply = await request.app[HEALTH].Check(
            health_pb2.HealthCheckRequest(service=BACKEND_SERVICE), timeout=2.0
        )
    except grpc.aio.AioRpcError as exc:
        return error_response(503, f"backend not ready: {error_message(exc)}")
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return error_response(503, f"backend not ready: {status}")
    return web.json_response({"status": "ready"})


@web.middleware
async def request_context(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Takes or makes the request id, logs with it, and counts the request."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given[:128] if given and given.isprintable() else uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    REQUEST_ID.set(request_id)
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = request.match_info.route.resource
        path = route.canonical if route is not None else "unmatched"
        # Only served requests name their model: ids from failed ones are arbitrary
        # client input, and would make the label set grow without bound.
        model = request.get(MODEL_KEY, "") if status == 200 else ""
        HTTP_REQUESTS.labels(path, request.method, model, str(status)).inc()
        HTTP_SECONDS.labels(path).observe(time.monotonic() - started)


async def _grpc_channel(app: web.Application) -> AsyncIterator[None]:
    channel = open_channel(app[CONFIG])
    app[CHANNEL] = channel
    app[TIGER] = pb_grpc.TigerStub(channel)
    app[HEALTH] = health_pb2_grpc.HealthStub(channel)
    yield
    await channel.close()


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[REQUEST_ID_HEADER] = request.get(REQUEST_ID_KEY, "")


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3 description of this API."""
    return web.json_response(openapi())


async def playground(request: web.Request) -> web.FileResponse:
    """GET /: a small chat page that streams answers (no build step)."""
    return web.FileResponse(STATIC / "index.html")


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format."""
    return web.Response(
        body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def init(config: GatewayConfig) -> web.Application:
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[request_context, json_errors],
    )
    app[CONFIG] = config
    app.cleanup_ctx.append(_grpc_channel)
    app.on_response_prepare.append(_add_request_id)
    app.router.add_post("/v1/generate_response", generate_response)
    app.router.add_post("/v1/train", train)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/models/import", import_model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/", playground)
    return app
