"""The gRPC server process, `tiger-server`: its configuration from flags and
TIGER_* variables (read here, once), and its life from start to SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import start_http_server

from ..config import (
    DEFAULT_GRPC_PORT,
    Device,
    EngineOptions,
    ServerConfig,
    TlsFiles,
    cuda_attention,
    default_home,
    env_int,
    keys_file,
    ort_spin,
    resolve_api_key,
)
from ..engine.providers import DeviceError, check_device
from ..jobs.checkpoint import import_roots
from ..models.precision import PRECISIONS, resolve_precision
from ..runtime.logs import setup_logging
from ..runtime.process import add_process_arguments, until_terminated, write_port_file
from .app import create_server
from .observe import register_engine

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 50052


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
    watching = None
    if config.keys_file is not None:  # reloaded when it changes, and on SIGHUP
        watching = asyncio.create_task(tiger.keys.watch())
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: tiger.keys.reload(force=True)
        )
    preparing = None
    if config.prepare_default_model or config.preload:
        preparing = asyncio.create_task(tiger.get_ready())
    await until_terminated()
    log.info("shutting down (grace %.0fs)", config.shutdown_grace_s)
    if preparing is not None and not preparing.done():
        preparing.cancel()
    if watching is not None:
        watching.cancel()
    await tiger.stop()
    log.info("stopped")


def _engine_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    add = parser.add_argument
    add(
        "--device",
        choices=[d.value for d in Device],
        default=env.get("TIGER_DEVICE", "auto"),
    )
    add(
        "--precision",
        choices=PRECISIONS,  # the flag; TIGER_PRECISION is checked in parse_config
        default=env.get("TIGER_PRECISION") or None,
        help="weights of the fused graph to serve (and prepare): "
        f"{', '.join(PRECISIONS)}; "
        "default int4 on CPU, fp16 on CUDA (where int4 and int8 are int4-fp16 and "
        "int8-fp16, and fp32 is refused); int4-kv8: int4 with an int8 KV cache",
    )
    add(
        "--max-batch",
        type=int,
        default=env_int(env, "TIGER_MAX_BATCH", 0) or None,
        help="sequences decoded together per model (default 16 on CPU, 32 on CUDA)",
    )
    add(
        "--max-queued",
        type=int,
        default=env_int(env, "TIGER_MAX_QUEUED", 64),
        help="requests waiting for a slot before RESOURCE_EXHAUSTED",
    )
    add(
        "--max-context",
        type=int,
        default=env_int(env, "TIGER_MAX_CONTEXT", 0) or None,
        help="cap on prompt + output tokens per sequence",
    )
    add(
        "--kv-cache-gb",
        type=float,
        default=float(env.get("TIGER_KV_CACHE_GB") or 0) or None,
        help="cap on the KV cache of each model (GiB); shortens the longest "
        "sequence to fit max-batch of them (default: none on CPU; on CUDA, "
        "most of the free GPU memory)",
    )
    add(
        "--default-max-tokens",
        type=int,
        default=env_int(env, "TIGER_DEFAULT_MAX_TOKENS", 1024),
    )
    add(
        "--no-prefix-cache",
        action="store_true",
        default=env.get("TIGER_PREFIX_CACHE", "1") == "0",
        help="compute every prompt whole, never reusing the KV cache of earlier "
        "requests that start the same way (TIGER_PREFIX_CACHE=0)",
    )


def _serving_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    add = parser.add_argument
    add("--host", default=env.get("TIGER_GRPC_HOST", "[::]"))
    add("--port", type=int, default=env_int(env, "TIGER_GRPC_PORT", DEFAULT_GRPC_PORT))
    add("--home", type=Path, default=default_home(env), help="model store (TIGER_HOME)")
    add(
        "--no-prepare",
        action="store_true",
        help="do not prepare the embedded default model at start-up",
    )
    add(
        "--preload",
        action="append",
        default=[m for m in env.get("TIGER_PRELOAD", "").split(",") if m.strip()],
        metavar="MODEL",
        help="load MODEL at start-up, not on its first request (repeatable; "
        "TIGER_PRELOAD, comma-separated); the health check says NOT_SERVING "
        "until it is loaded",
    )
    add(
        "--metrics-port",
        type=int,
        default=env_int(env, "TIGER_METRICS_PORT", DEFAULT_METRICS_PORT),
        help="Prometheus /metrics port (-1: off, 0: any free port)",
    )
    add(
        "--no-reflection",
        action="store_true",
        default=env.get("TIGER_GRPC_REFLECTION", "1") == "0",
        help="turn gRPC server reflection off",
    )
    add(
        "--tls-cert",
        type=Path,
        default=env.get("TIGER_TLS_CERT"),
        help="PEM certificate chain: serve TLS",
    )
    add("--tls-key", type=Path, default=env.get("TIGER_TLS_KEY"))
    add(
        "--tls-client-ca",
        type=Path,
        default=env.get("TIGER_TLS_CLIENT_CA"),
        help="PEM CA bundle: require client certificates signed by it",
    )


def parse_config(argv: list[str] | None = None) -> tuple[ServerConfig, Path | None]:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="tiger-server", description="Tiger gRPC server"
    )
    _serving_arguments(parser, env)
    _engine_arguments(parser, env)
    add_process_arguments(parser, env)
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    device = Device(args.device)
    try:
        check_device(device)
        precision = resolve_precision(args.precision, device)
        attention = cuda_attention(env)
    except (ValueError, DeviceError) as exc:
        parser.error(str(exc))
    engine = EngineOptions(
        device=device,
        precision=precision,
        kv_cache_gb=args.kv_cache_gb,
        max_batch=args.max_batch,
        max_queued=args.max_queued,
        max_context=args.max_context,
        default_max_tokens=args.default_max_tokens,
        ort_spin=ort_spin(env),
        prefix_cache=not args.no_prefix_cache,
        cuda_attention=attention,
    )
    config = ServerConfig(
        home=args.home,
        api_key=resolve_api_key(args.home, env),
        keys_file=keys_file(env),
        import_roots=import_roots(env),
        host=args.host,
        port=args.port,
        engine=engine,
        prepare_default_model=not args.no_prepare,
        preload=tuple(m.strip() for m in args.preload),
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
