"""The gateway's configuration, parsed once in `gateway.main`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web

from tiger_grpc.config import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_MAX_BODY_BYTES,
)


@dataclass(frozen=True)
class BackendTls:
    """PEM files for TLS to the gRPC servers (client certificate optional)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


@dataclass(frozen=True)
class GatewayConfig:
    # One address, several (comma-separated), or a name that resolves to several
    # (`dns:///tiger.default.svc.cluster.local:50051`): requests are spread over all
    # with gRPC's round_robin policy.
    grpc_target: str = f"localhost:{DEFAULT_GRPC_PORT}"
    host: str = "0.0.0.0"
    port: int = DEFAULT_HTTP_PORT
    # Checked here as well as by the backend, so a bad key is a 401 before anything
    # else; None leaves the check to the backend alone.
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    unary_timeout_s: float = 10.0
    tls: BackendTls | None = None
    tls_server_name: str | None = None  # expected name in the server certificate
    # TIGER_METRICS_KEY: /metrics asks for it as a bearer key (None: open).
    metrics_key: str | None = None


CONFIG = web.AppKey("config", GatewayConfig)
