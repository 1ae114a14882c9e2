"""The routes for operating the gateway: liveness, readiness, metrics, the OpenAPI
document and the playground page."""

from __future__ import annotations

from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tiger_grpc.api.errors import Status
from tiger_grpc.api.wire import SERVICE_NAME

from .auth import bearer_matches
from .backend import BACKEND
from .chunks import error_message
from .config import CONFIG
from .openapi import openapi
from .responses import error_response

STATIC = Path(__file__).parent / "static"


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the gateway process is alive."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: 200 only when the gRPC backend answers and is serving."""
    try:
        reply = await request.app[BACKEND].health.Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2.0
        )
    except grpc.aio.AioRpcError as exc:
        return error_response(
            Status.UNAVAILABLE.http_status, f"backend not ready: {error_message(exc)}"
        )
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return error_response(
            Status.UNAVAILABLE.http_status, f"backend not ready: {status}"
        )
    return web.json_response({"status": "ready"})


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3.1 description of this API."""
    return web.json_response(openapi())


async def playground(request: web.Request) -> web.FileResponse:
    """GET /: a small chat page that streams answers (no build step)."""
    return web.FileResponse(STATIC / "index.html")


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format (behind TIGER_METRICS_KEY when set)."""
    expected = request.app[CONFIG].metrics_key
    given = request.headers.get("Authorization", "")
    if expected is not None and not bearer_matches(given, expected):
        return error_response(
            401, "/metrics needs `Authorization: Bearer <metrics key>`"
        )
    return web.Response(
        body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/", playground)
