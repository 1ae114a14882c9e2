"""Configuration, parsed once at the entry points (`server.main`, `server.launch`,
`gateway.main`, the tools) from flags and TIGER_* variables, and passed down as
these typed objects: nothing deeper reads the environment."""

from __future__ import annotations

import enum
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODEL_ID = "smollm2-135m-instruct"  # the embedded model (models.embedded)
DEFAULT_GRPC_PORT = 50051
DEFAULT_HTTP_PORT = 45678
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # the largest request body the gateway takes
API_KEY_FILE = "api_key"
CPU_MAX_BATCH, CUDA_MAX_BATCH = 16, 32  # default sequences per decode step


class Device(enum.Enum):
    """Which execution provider to ask ONNX Runtime for."""

    AUTO = "auto"  # CUDA when it can load, CPU otherwise
    CPU = "cpu"
    CUDA = "cuda"


def default_home(env: Mapping[str, str] = os.environ) -> Path:
    """The model store: TIGER_HOME, else ~/.cache/tiger."""
    if env.get("TIGER_HOME"):
        return Path(env["TIGER_HOME"]).expanduser()
    return Path.home() / ".cache" / "tiger"


def known_api_key(home: Path, env: Mapping[str, str] = os.environ) -> str | None:
    """TIGER_API_KEY when set, else the key kept in the store if there is one."""
    if env.get("TIGER_API_KEY"):
        return env["TIGER_API_KEY"]
    path = home / API_KEY_FILE
    return path.read_text().strip() if path.is_file() else None


def keys_file(env: Mapping[str, str] = os.environ) -> Path | None:
    """TIGER_KEYS_FILE: the key file (keys with scopes and limits), if any."""
    value = env.get("TIGER_KEYS_FILE")
    return Path(value) if value else None


def resolve_api_key(home: Path, env: Mapping[str, str] = os.environ) -> str | None:
    """TIGER_API_KEY when set; else, without a key file, a generated key kept in
    the store (with a key file, its keys only: no key with every scope appears
    unasked).

    The generated key is written once (mode 0600) so it is stable across restarts.
    """
    if env.get("TIGER_API_KEY"):
        return env["TIGER_API_KEY"]
    if keys_file(env) is not None:
        return None
    home.mkdir(parents=True, exist_ok=True)
    path = home / API_KEY_FILE
    if not path.exists():
        key = "tiger-" + secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
    return path.read_text().strip()


def ort_spin(env: Mapping[str, str] = os.environ) -> bool:
    """TIGER_ORT_SPIN: whether ONNX Runtime's threads spin inside a step (the
    default; 0 turns it off)."""
    return env.get("TIGER_ORT_SPIN", "1") != "0"


def cuda_graphs(env: Mapping[str, str] = os.environ) -> bool:
    """TIGER_CUDA_GRAPHS: whether decode steps on CUDA replay captured CUDA graphs
    (the default; 0 launches every kernel from the CPU each step)."""
    return env.get("TIGER_CUDA_GRAPHS", "1") != "0"


# TIGER_CUDA_ATTENTION's values: which attention kernels ORT's CUDA provider may run.
CUDA_ATTENTION = {
    # ORT's flash attention (memory-efficient attention where flash cannot run):
    # compiled ahead for every shape.
    "flash": "3",
    # ORT's own choice: on compute capability 9 and later it prefers cuDNN's SDPA,
    # which builds an execution plan for each new shape (a new prompt length, a
    # new batch size) the first time it meets it.
    "ort": "",
}


def cuda_attention(env: Mapping[str, str] = os.environ) -> str:
    """TIGER_CUDA_ATTENTION: `flash` (the default) or `ort` (see CUDA_ATTENTION)."""
    value = env.get("TIGER_CUDA_ATTENTION") or "flash"
    if value not in CUDA_ATTENTION:
        choices = ", ".join(CUDA_ATTENTION)
        raise ValueError(
            f"TIGER_CUDA_ATTENTION must be one of {choices}, got {value!r}"
        )
    return value


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {value!r}") from None


@dataclass(frozen=True)
class EngineOptions:
    device: Device = Device.AUTO
    precision: str = (
        "int4"  # the fused graph to serve (and build); see models.precision
    )
    # Sequences decoded together (fused graphs); None: 16 on CPU, 32 on CUDA.
    max_batch: int | None = None
    max_queued: int = 64  # waiting for a slot before RESOURCE_EXHAUSTED
    max_context: int | None = None  # caps the KV cache per sequence
    # Caps each model's KV cache (GiB; None: none on CPU; on CUDA, most of the GPU
    # memory left once the model is loaded).
    kv_cache_gb: float | None = None
    default_max_tokens: int = 1024
    # ORT's worker threads spin inside a step (TIGER_ORT_SPIN=0 turns it off).
    ort_spin: bool = True
    # Requests reuse the KV cache of earlier ones that start the same way
    # (TIGER_PREFIX_CACHE=0 turns it off).
    prefix_cache: bool = True
    # The attention kernels ORT's CUDA provider may run (TIGER_CUDA_ATTENTION).
    cuda_attention: str = "flash"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the server's TLS, and the CA that client certificates need."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def server_credentials(self) -> Any:
        import grpc

        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


@dataclass(frozen=True)
class ServerConfig:
    """Everything the gRPC server needs, resolved before it starts."""

    home: Path
    api_key: str | None  # every scope; None: the key file's keys only
    host: str = "[::]"
    port: int = DEFAULT_GRPC_PORT
    engine: EngineOptions = EngineOptions()
    prepare_default_model: bool = True
    preload: tuple[str, ...] = ()  # models loaded at start (NOT_SERVING meanwhile)
    shutdown_grace_s: float = 30.0
    metrics_port: int | None = None  # None: no metrics endpoint
    metrics_host: str = "0.0.0.0"
    reflection: bool = True
    tls: TlsFiles | None = None
    keys_file: Path | None = None  # TIGER_KEYS_FILE: keys with scopes and limits
    # TIGER_IMPORT_ROOTS: imports read only inside these (empty: anywhere)
    import_roots: tuple[Path, ...] = ()
