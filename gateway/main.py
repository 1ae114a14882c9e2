"""The gateway process: `tiger-gateway`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tiger_grpc.config import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_MAX_BODY_BYTES,
    default_home,
    env_int,
    keys_file,
    known_api_key,
)
from tiger_grpc.runtime.logs import setup_logging
from tiger_grpc.runtime.process import (
    add_process_arguments,
    until_terminated,
    write_port_file,
)

from .app import init
from .config import BackendTls, GatewayConfig

log = logging.getLogger(__name__)


def _tls_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    add = parser.add_argument
    add(
        "--grpc-tls-ca",
        type=Path,
        default=env.get("TIGER_GRPC_TLS_CA"),
        help="PEM CA bundle: connect to the gRPC servers with TLS",
    )
    add(
        "--grpc-tls-cert",
        type=Path,
        default=env.get("TIGER_GRPC_TLS_CERT"),
        help="client certificate, for servers that require one",
    )
    add("--grpc-tls-key", type=Path, default=env.get("TIGER_GRPC_TLS_KEY"))
    add(
        "--grpc-tls-server-name",
        default=env.get("TIGER_GRPC_TLS_SERVER_NAME"),
        help="name to expect in the server certificate, if not the target's",
    )


def parse_config(
    argv: list[str] | None = None,
) -> tuple[GatewayConfig, Path | None, float]:
    env = os.environ
    default_target = env.get(
        "TIGER_GRPC_TARGET",
        f"localhost:{env_int(env, 'TIGER_GRPC_PORT', DEFAULT_GRPC_PORT)}",
    )
    parser = argparse.ArgumentParser(
        prog="tiger-gateway", description="Tiger HTTP gateway"
    )
    add = parser.add_argument
    add(
        "--grpc-target",
        default=default_target,
        help="gRPC server address, e.g. dns:///tiger.svc:50051",
    )
    add("--host", default=env.get("TIGER_HTTP_HOST", "0.0.0.0"))
    add("--port", type=int, default=env_int(env, "TIGER_HTTP_PORT", DEFAULT_HTTP_PORT))
    add(
        "--max-body-bytes",
        type=int,
        default=env_int(env, "TIGER_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
    )
    _tls_arguments(parser, env)
    add_process_arguments(parser, env)
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    # With a key file the server alone knows the keys: this gateway forwards them.
    api_key = None if keys_file(env) else known_api_key(default_home(env), env)
    config = GatewayConfig(
        grpc_target=args.grpc_target,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_body_bytes=args.max_body_bytes,
        tls=BackendTls(args.grpc_tls_ca, args.grpc_tls_cert, args.grpc_tls_key)
        if args.grpc_tls_ca
        else None,
        tls_server_name=args.grpc_tls_server_name,
        metrics_key=env.get("TIGER_METRICS_KEY") or None,
    )
    return config, args.port_file, args.shutdown_grace


HEADER_LIMIT = 64 * 1024


def _without_request_bytes(record: logging.LogRecord) -> bool:
    """aiohttp logs a request that does not parse with the bytes it stopped at
    (an overlong `Authorization` header's start, say): logged without them."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError):
        record.msg = "refused a request that does not parse as HTTP (%s, status %s)"
        record.args = (type(error).__name__, error.code)
        record.exc_info = record.exc_text = None
    return True


async def serve(
    config: GatewayConfig, port_file: Path | None = None, shutdown_grace: float = 30.0
) -> None:
    # On SIGTERM: stop accepting, give running streams `shutdown_grace` to finish.
    logging.getLogger("aiohttp.server").addFilter(_without_request_bytes)
    runner = web.AppRunner(
        init(config),
        handler_cancellation=True,
        access_log=log,
        shutdown_timeout=shutdown_grace,
        # Headers up to 64 KiB reach the gateway's own checks (an overlong key
        # is a 401 there); past that, aiohttp refuses the request itself.
        max_field_size=HEADER_LIMIT,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = runner.addresses[0][1]
    log.info(
        "HTTP gateway listening on %s:%d, backend %s",
        config.host,
        port,
        config.grpc_target,
    )
    write_port_file(port_file, port)
    await until_terminated()
    log.info("shutting down")
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    config, port_file, grace = parse_config(argv)
    asyncio.run(serve(config, port_file, grace))


if __name__ == "__main__":
    main()
