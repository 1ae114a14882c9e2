"""Building and starting the gRPC server: `create_server(config) -> TigerServer`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..api.wire import MESSAGE_SIZE_OPTIONS, SERVICE_NAME
from ..config import ServerConfig
from ..jobs.importing import Importer
from ..jobs.training import Trainer
from ..models.embedded import DEFAULT_MODEL_ID, ensure_default_model
from ..models.registry import ModelRegistry
from ..models.store import ModelStore
from ..pb.tiger.v1 import tiger_pb2_grpc as pb_grpc
from .auth import AuthInterceptor
from .keys import KeyRing
from .servicer import TigerServicer

log = logging.getLogger(__name__)

SERVER_OPTIONS = [
    *MESSAGE_SIZE_OPTIONS,
    # Keepalive: ping idle clients every 60 s, drop them after 20 s without an answer,
    # and accept client pings down to every 10 s (the gateway pings every 30 s).
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class TigerServer:
    """A started server and what it serves; `stop()` shuts it down gracefully."""

    server: grpc.aio.Server
    port: int
    registry: Any  # a models.ModelRegistry, or a test's stand-in
    health: health.HealthServicer
    config: ServerConfig
    keys: KeyRing

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def get_ready(self) -> None:
        """Prepares the embedded model (when configured to), then loads the models
        to preload; NOT_SERVING meanwhile. A model that fails to load is logged
        and left to load on demand."""
        if self.config.preload:
            await self.set_serving(False)
        if self.config.prepare_default_model:
            await self.prepare_default_model(serving_after=not self.config.preload)
        for model_id in self.config.preload:
            started = time.monotonic()
            try:
                await self.registry.preload(model_id)
            except Exception as exc:  # noqa: BLE001 - it loads on demand then
                log.error("could not preload %s: %s", model_id, exc)
                continue
            log.info("preloaded %s in %.1fs", model_id, time.monotonic() - started)
        if self.config.preload:
            await self.set_serving(True)

    async def prepare_default_model(self, serving_after: bool = True) -> None:
        """Prepares the embedded model if missing; NOT_SERVING meanwhile (and
        after, unless `serving_after`)."""
        store = self.registry.store
        manifest = store.get(DEFAULT_MODEL_ID)
        if (
            manifest is not None
            and self.config.engine.precision in manifest.fused_graphs
        ):
            return
        self.registry.unavailable[DEFAULT_MODEL_ID] = (
            f"{DEFAULT_MODEL_ID} is being prepared; try again in a minute"
        )
        await self.set_serving(False)
        try:
            await asyncio.to_thread(
                ensure_default_model, store, self.config.engine.precision
            )
        finally:
            self.registry.unavailable.pop(DEFAULT_MODEL_ID, None)
        if serving_after:
            await self.set_serving(True)

    async def stop(self, grace: float | None = None) -> None:
        await self.set_serving(False)
        await self.server.stop(self.config.shutdown_grace_s if grace is None else grace)
        self.registry.close()


async def create_server(
    config: ServerConfig,
    registry: Any = None,
    trainer: Any = None,
    importer: Any = None,
) -> TigerServer:
    """Builds and starts the server; `port` is the real one (config.port 0 picks one).
    The registry, trainer and importer are the real ones unless given (tests)."""
    registry = registry or ModelRegistry(ModelStore(config.home), config.engine)
    trainer = trainer or Trainer(registry)
    importer = importer or Importer(
        registry.store,
        config.engine.device,
        config.engine.precision,
        config.import_roots,
    )
    keys = KeyRing(config.api_key, config.keys_file)
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(keys)], options=SERVER_OPTIONS
    )
    pb_grpc.add_TigerServicer_to_server(
        TigerServicer(registry, trainer, importer), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    address = f"{config.host}:{config.port}"
    if config.tls is not None:
        port = server.add_secure_port(address, config.tls.server_credentials())
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    await server.start()
    tiger = TigerServer(server, port, registry, health_servicer, config, keys)
    await tiger.set_serving(True)
    return tiger
