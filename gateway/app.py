"""The aiohttp application: `init(config) -> web.Application`.

Routes live in `native` (the guide's API), `openai` (OpenAI's API) and `ops`
(health, metrics, documents);
every answer passes the two middlewares here: request ids and metrics, and JSON
bodies for every error, aiohttp's own included.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter, Histogram

from tiger_grpc.api.errors import Status
from tiger_grpc.runtime.logs import REQUEST_ID, REQUEST_ID_HEADER

from . import native, openai, ops
from .auth import REQUEST_ID_KEY
from .backend import BACKEND, Backend, backend_channel
from .config import CONFIG, GatewayConfig
from .responses import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
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


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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
        if request.path in openai.PATHS:  # OpenAI's shape on OpenAI's routes
            body = openai.error_object(Status.of_http(exc.status), message)
            return web.json_response(body, status=exc.status, headers=headers or None)
        return error_response(exc.status, message, **headers)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
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
        model = request.get(native.MODEL_KEY, "") if status == 200 else ""
        HTTP_REQUESTS.labels(path, request.method, model, str(status)).inc()
        HTTP_SECONDS.labels(path).observe(time.monotonic() - started)


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[REQUEST_ID_HEADER] = request.get(REQUEST_ID_KEY, "")


def init(config: GatewayConfig, backend: Backend | None = None) -> web.Application:
    """The gateway app; it opens its own channel to `config.grpc_target` unless a
    `backend` is given."""
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[request_context, json_errors],
    )
    app[CONFIG] = config
    if backend is None:
        app.cleanup_ctx.append(backend_channel)
    else:
        app[BACKEND] = backend
    app.on_response_prepare.append(_add_request_id)
    native.add_routes(app)
    openai.add_routes(app)
    ops.add_routes(app)
    return app
