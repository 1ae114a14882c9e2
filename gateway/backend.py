"""The gateway's one gRPC channel to the Tiger servers: balancing, retries, TLS."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2_grpc

from tiger_grpc.api.wire import MESSAGE_SIZE_OPTIONS, SERVICE_NAME
from tiger_grpc.pb.tiger.v1 import tiger_pb2_grpc as pb_grpc

from .config import CONFIG, GatewayConfig


@dataclass(frozen=True)
class Backend:
    """The stubs the routes call (a test can give its own)."""

    tiger: Any  # tiger.v1.Tiger
    health: Any  # grpc.health.v1.Health


BACKEND = web.AppKey("backend", Backend)


def service_config() -> str:
    """round_robin over every address, and a retry of calls that never reached a
    server (UNAVAILABLE before any response), so a dead backend costs no request."""
    retry = {
        "maxAttempts": 3,
        "initialBackoff": "0.05s",
        "maxBackoff": "0.5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [
                        {"service": SERVICE_NAME, "method": "Generate"},
                        {"service": SERVICE_NAME, "method": "ListModels"},
                        {"service": health.SERVICE_NAME},
                    ],
                    "retryPolicy": retry,
                }
            ],
        }
    )


def _target(grpc_target: str) -> str:
    """`host1:p1,host2:p2` becomes gRPC's `ipv4:`/`ipv6:` list URI; others pass
    as they are."""
    if (
        "," not in grpc_target
        or "://" in grpc_target
        or grpc_target.startswith(("ipv4:", "ipv6:"))
    ):
        return grpc_target
    addresses = [
        a.strip().replace("localhost", "127.0.0.1") for a in grpc_target.split(",")
    ]
    scheme = "ipv6" if all(a.startswith("[") for a in addresses) else "ipv4"
    return f"{scheme}:{','.join(addresses)}"


def open_channel(config: GatewayConfig) -> grpc.aio.Channel:
    options = [
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
        *MESSAGE_SIZE_OPTIONS,
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    target = _target(config.grpc_target)
    if config.tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    if config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    return grpc.aio.secure_channel(target, config.tls.credentials(), options=options)


async def backend_channel(app: web.Application) -> AsyncIterator[None]:
    """The app's one channel (a cleanup context: open while the app runs)."""
    channel = open_channel(app[CONFIG])
    app[BACKEND] = Backend(
        pb_grpc.TigerStub(channel), health_pb2_grpc.HealthStub(channel)
    )
    yield
    await channel.close()
