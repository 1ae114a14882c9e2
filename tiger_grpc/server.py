"""The gRPC server process: `tiger-server`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from .config import (
    DEFAULT_GRPC_PORT,
    Device,
    EngineOptions,
    ServerConfig,
    TlsFiles,
    default_home,
    env_int,
    resolve_api_key,
)
from .importer import Importer
from .metrics import register_engine
from .models import ModelRegistry
from .observability import setup_logging
from .pb.tiger.v1 import tiger_pb2 as pb
from .pb.tiger.v1 import tiger_pb2_grpc as pb_grpc
from .prepare import (
    DEFAULT_MODEL_ID,
    PRECISIONS,
    default_precision,
    ensure_default_model,
)
from .process import add_process_arguments, until_terminated, write_port_file
from .service import AuthInterceptor, TigerServicer
from .store import ModelStore
from .training import Trainer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tiger"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_METRICS_PORT = 50052
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
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
    registry: ModelRegistry
    health: health.HealthServicer
    config: ServerConfig

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def prepare_default_model(self) -> None:
        """Prepares the embedded model if missing; NOT_SERVING meanwhile."""
        store = self.registry.store
        manifest = store.get(DEFAULT_MODEL_ID)
        if (
            manifest is not None
            and self.config.engine.precision in manifest.fast_graphs
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
        await self.set_serving(True)

    async def stop(self, grace: float | None = None) -> None:
        await self.set_serving(False)
        await self.server.stop(self.config.shutdown_grace_s if grace is None else grace)
        self.registry.close()


async def create_server(config: ServerConfig) -> TigerServer:
    """Builds and starts the server; `port` is the real one (config.port 0 picks one)."""
    registry = ModelRegistry(ModelStore(config.home), config.engine)
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(config.api_key)], options=SERVER_OPTIONS
    )
    pb_grpc.add_TigerServicer_to_server(
        TigerServicer(
            registry,
            Trainer(registry),
            Importer(registry.store, config.engine.device, config.engine.precision),
        ),
        server,
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
    tiger = TigerServer(server, port, registry, health_servicer, config)
    await tiger.set_serving(True)
    return tiger


async def serve(config: ServerConfig, port_file: Path | None = None) -> None:
    tiger = await create_server(config)
    metrics_port = 0
    if config.metrics_port is not None:
        metrics_server, _ = start_http_server(
            config.metrics_port, addr=config.metrics_host
        )
        metrics_port = metrics_server.server_port
        register_engine(tiger.registry)
    log.info(
        "gRPC server listening on %s:%d (%s), metrics on :%d",
        config.host,
        tiger.port,
        "TLS" if config.tls else "plaintext",
        metrics_port,
    )
    write_port_file(port_file, tiger.port, metrics_port)
    preparing = None
    if config.prepare_default_model:
        preparing = asyncio.create_task(tiger.prepare_default_model())
    await until_terminated()
    log.info("shutting down (grace %.0fs)", config.shutdown_grace_s)
    if preparing is not None and not preparing.done():
        preparing.cancel()
    await tiger.stop()
    log.info("stopped")


def parse_config(argv: list[str] | None = None) -> tuple[ServerConfig, Path | None]:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="tiger-server", description="Tiger gRPC server"
    )
    parser.add_argument("--host", default=env.get("TIGER_GRPC_HOST", "[::]"))
    parser.add_argument(
        "--port", type=int, default=env_int(env, "TIGER_GRPC_PORT", DEFAULT_GRPC_PORT)
    )
    parser.add_argument(
        "--home", type=Path, default=default_home(env), help="model store (TIGER_HOME)"
    )
    parser.add_argument(
        "--device",
        choices=[d.value for d in Device],
        default=env.get("TIGER_DEVICE", "auto"),
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=env.get("TIGER_PRECISION") or None,
        help="weights of the fused graph to serve (and prepare); "
        "default int4 on CPU, fp16 on CUDA",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=env_int(env, "TIGER_MAX_BATCH", 0) or None,
        help="sequences decoded together per model (default 16 on CPU, 32 on CUDA)",
    )
    parser.add_argument(
        "--max-queued",
        type=int,
        default=env_int(env, "TIGER_MAX_QUEUED", 64),
        help="requests waiting for a slot before RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--max-context",
        type=int,
        default=env_int(env, "TIGER_MAX_CONTEXT", 0) or None,
        help="cap on prompt + output tokens per sequence",
    )
    parser.add_argument(
        "--kv-cache-gb",
        type=float,
        default=float(env.get("TIGER_KV_CACHE_GB") or 0) or None,
        help="cap on the KV cache of each model (GiB); shortens the longest "
        "sequence to fit max-batch of them (default: none on CPU; on CUDA, "
        "most of the free GPU memory)",
    )
    parser.add_argument(
        "--default-max-tokens",
        type=int,
        default=env_int(env, "TIGER_DEFAULT_MAX_TOKENS", 1024),
    )
    parser.add_argument(
        "--no-prepare",
        action="store_true",
        help="do not prepare the embedded default model at start-up",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=env_int(env, "TIGER_METRICS_PORT", DEFAULT_METRICS_PORT),
        help="Prometheus /metrics port (-1: off, 0: any free port)",
    )
    parser.add_argument(
        "--no-reflection",
        action="store_true",
        default=env.get("TIGER_GRPC_REFLECTION", "1") == "0",
        help="turn gRPC server reflection off",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=env.get("TIGER_TLS_CERT"),
        help="PEM certificate chain: serve TLS",
    )
    parser.add_argument("--tls-key", type=Path, default=env.get("TIGER_TLS_KEY"))
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        default=env.get("TIGER_TLS_CLIENT_CA"),
        help="PEM CA bundle: require client certificates signed by it",
    )
    add_process_arguments(parser, env)
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.precision is not None and args.precision not in PRECISIONS:
        parser.error(
            f"TIGER_PRECISION must be one of {', '.join(PRECISIONS)}, "
            f"got {args.precision!r}"
        )
    config = ServerConfig(
        home=args.home,
        api_key=resolve_api_key(args.home, env),
        host=args.host,
        port=args.port,
        engine=EngineOptions(
            device=Device(args.device),
            precision=args.precision or default_precision(Device(args.device)),
            kv_cache_gb=args.kv_cache_gb,
            max_batch=args.max_batch,
            max_queued=args.max_queued,
            max_context=args.max_context,
            default_max_tokens=args.default_max_tokens,
        ),
        prepare_default_model=not args.no_prepare,
        shutdown_grace_s=args.shutdown_grace,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        reflection=not args.no_reflection,
        tls=TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
        if args.tls_cert
        else None,
    )
    return config, args.port_file


def main(argv: list[str] | None = None) -> None:
    config, port_file = parse_config(argv)
    asyncio.run(serve(config, port_file))


if __name__ == "__main__":
    main()
