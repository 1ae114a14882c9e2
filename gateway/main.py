"""The gateway process: `tiger-gateway`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from tiger_grpc.config import (
    API_KEY_FILE,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    default_home,
    env_int,
)

from .app import GatewayConfig, init

log = logging.getLogger(__name__)


def parse_config(argv: list[str] | None = None) -> tuple[GatewayConfig, Path | None]:
    env = os.environ
    default_target = env.get(
        "TIGER_GRPC_TARGET", f"localhost:{env_int(env, 'TIGER_GRPC_PORT', DEFAULT_GRPC_PORT)}"
    )
    parser = argparse.ArgumentParser(prog="tiger-gateway", description="Tiger HTTP gateway")
    parser.add_argument("--grpc-target", default=default_target,
                        help="gRPC server address, e.g. dns:///tiger.svc:50051")
    parser.add_argument("--host", default=env.get("TIGER_HTTP_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=env_int(env, "TIGER_HTTP_PORT", DEFAULT_HTTP_PORT))
    parser.add_argument("--max-body-bytes", type=int,
                        default=env_int(env, "TIGER_MAX_BODY_BYTES", 4 * 1024 * 1024))
    parser.add_argument("--port-file", type=Path, help="write the bound port here (for tests)")
    parser.add_argument("--log-level", default=env.get("TIGER_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = env.get("TIGER_API_KEY") or None
    key_file = default_home(env) / API_KEY_FILE
    if api_key is None and key_file.is_file():
        api_key = key_file.read_text().strip()
    config = GatewayConfig(
        grpc_target=args.grpc_target,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_body_bytes=args.max_body_bytes,
    )
    return config, args.port_file


async def serve(config: GatewayConfig, port_file: Path | None = None) -> None:
    runner = web.AppRunner(init(config), handler_cancellation=True, access_log=log)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, shutdown_timeout=10.0)
    await site.start()
    port = runner.addresses[0][1]
    log.info("HTTP gateway listening on %s:%d, backend %s", config.host, port, config.grpc_target)
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        os.replace(tmp, port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    config, port_file = parse_config(argv)
    asyncio.run(serve(config, port_file))


if __name__ == "__main__":
    main()
