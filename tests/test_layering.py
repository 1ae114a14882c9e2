"""The gateway talks to the server over gRPC only: it never imports the engine."""

import subprocess
import sys

HEAVY = (
    "onnxruntime",
    "torch",
    "transformers",
    "optimum",
    "tiger_grpc.engine",
    "tiger_grpc.models",
    "tiger_grpc.training",
)


def test_the_gateway_imports_no_engine_and_no_ml_stack() -> None:
    code = (
        "import sys, gateway.app, gateway.main\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r}])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
