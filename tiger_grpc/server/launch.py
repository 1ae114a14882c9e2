"""`make run`: prepares the default model, then runs the gRPC server and the gateway.

Both run as child processes; Ctrl-C or SIGTERM stops both cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from ..config import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    Device,
    default_home,
    env_int,
    resolve_api_key,
)
from ..engine.providers import DeviceError, check_device
from ..models.embedded import DEFAULT_MODEL_ID, ensure_default_model
from ..models.precision import precision_from_env
from ..models.store import ModelStore

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0


def _say(message: str) -> None:
    print(f"[tiger] {message}", file=sys.stderr, flush=True)


def _wait_ready(url: str, children: list[subprocess.Popen[bytes]]) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    return False


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _announce(
    started: float, home: Path, api_key: str | None, grpc_port: int, http_port: int
) -> None:
    _say(f"ready in {time.monotonic() - started:.1f}s")
    _say(f"HTTP gateway: http://localhost:{http_port}   gRPC: localhost:{grpc_port}")
    _say(f"default model: {DEFAULT_MODEL_ID}   model store: {home}")
    if api_key is None:  # a key file's keys only
        _say(f"API keys: from {os.environ.get('TIGER_KEYS_FILE')} (`tiger keys add`)")
        api_key = "<a key from the file>"
    else:
        _say(f"API key: {api_key}")
    _say(f"try: export TIGER_API_KEY={api_key}")
    _say(
        f"     curl -N localhost:{http_port}/v1/generate_response "
        '-H "Authorization: Bearer $TIGER_API_KEY" '
        f'-d \'{{"model": "{DEFAULT_MODEL_ID}", "stream": true, '
        '"messages": [{"role": "user", "content": "Hello!"}]}\''
    )
    _say("Ctrl-C stops both processes")


def main() -> int:
    env = dict(os.environ)
    home = default_home(env)
    api_key = resolve_api_key(home, env)
    started = time.monotonic()
    try:  # before any preparation: what the server would refuse at start
        check_device(Device(env.get("TIGER_DEVICE", "auto")))
        precision = precision_from_env()
    except (ValueError, DeviceError) as exc:
        raise SystemExit(str(exc)) from None
    ensure_default_model(ModelStore(home), precision)
    env.update(TIGER_HOME=str(home), PYTHONUNBUFFERED="1")
    if api_key is not None:
        env["TIGER_API_KEY"] = api_key
    # Loaded before `ready`, so that the first request does not pay for it.
    env.setdefault("TIGER_PRELOAD", DEFAULT_MODEL_ID)
    grpc_port = env_int(env, "TIGER_GRPC_PORT", DEFAULT_GRPC_PORT)
    http_port = env_int(env, "TIGER_HTTP_PORT", DEFAULT_HTTP_PORT)
    gateway = ["gateway.main", "--grpc-target", f"localhost:{grpc_port}"]
    children = [
        subprocess.Popen([sys.executable, "-m", *args], env=env)
        for args in (["tiger_grpc.server"], gateway)
    ]
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            _say("stopping...")
            _stop(children)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if _wait_ready(f"http://localhost:{http_port}/readyz", children):
        _announce(started, home, api_key, grpc_port, http_port)
    elif not stopping:
        _say("the server or the gateway did not become ready; stopping")
        _stop(children)
        return 1
    # Wait for either child to end; a signal stops both, and the other ends then.
    try:
        os.wait()
    except ChildProcessError:  # both already stopped by the signal handler
        pass
    if not stopping:
        _say("a process exited unexpectedly; stopping the other")
    _stop(children)
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
