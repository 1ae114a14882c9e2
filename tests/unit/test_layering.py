"""The tree keeps its shape: imports go one way, no cycles, modules and functions
of a size one can read, and the gateway and the client never load the engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

# What each package may import of Tiger's own (besides itself): a layer sees only
# the layers below it. pb is generated; tools and testing sit on top of everything.
ALLOWED = {
    "tiger_grpc": set(),  # the package's own __init__ and config
    "tiger_grpc.config": set(),
    "tiger_grpc.pb": set(),
    "tiger_grpc.runtime": {"tiger_grpc.config"},
    "tiger_grpc.api": {"tiger_grpc.pb"},
    "tiger_grpc.engine": {"tiger_grpc.api", "tiger_grpc.config", "tiger_grpc.runtime"},
    "tiger_grpc.models": {
        "tiger_grpc.engine",
        "tiger_grpc.api",
        "tiger_grpc.config",
        "tiger_grpc.runtime",
    },
    "tiger_grpc.jobs": {
        "tiger_grpc.models",
        "tiger_grpc.engine",
        "tiger_grpc.api",
        "tiger_grpc.config",
        "tiger_grpc.runtime",
    },
    "tiger_grpc.server": {
        "tiger_grpc.jobs",
        "tiger_grpc.models",
        "tiger_grpc.engine",
        "tiger_grpc.api",
        "tiger_grpc.config",
        "tiger_grpc.runtime",
        "tiger_grpc.pb",
        "tiger_grpc",
    },
    "tiger_grpc.client": {"tiger_grpc.api", "tiger_grpc.config", "tiger_grpc.pb"},
    "tiger_grpc.testing": {
        "tiger_grpc.client",
        "tiger_grpc.models",
        "tiger_grpc.runtime",
    },
    "tiger_grpc.tools": {"*"},
    "gateway": {
        "tiger_grpc",
        "tiger_grpc.api",
        "tiger_grpc.config",
        "tiger_grpc.runtime",
        "tiger_grpc.pb",
    },
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    found = {}
    for top in ("tiger_grpc", "gateway"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if "pb" in path.relative_to(ROOT).parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """Every Tiger module `name` imports, at any depth (but `TYPE_CHECKING`)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in ("tiger_grpc", "gateway")}


def package_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "gateway":
        return "gateway"
    if len(parts) > 1 and f"tiger_grpc.{parts[1]}" in ALLOWED:
        return f"tiger_grpc.{parts[1]}"
    return "tiger_grpc"


def test_nothing_imports_upward() -> None:
    wrong = []
    for name, path in modules().items():
        mine = package_of(name)
        for target in imports(name, path):
            theirs = package_of(target)
            if theirs != mine and "*" not in ALLOWED[mine]:
                if theirs not in ALLOWED[mine]:
                    wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_import_cycles() -> None:
    known = modules()
    graph = {
        name: {t for t in imports(name, path) if t in known and t != name}
        for name, path in known.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_modules_and_functions_stay_readable() -> None:
    too_long = []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {lines} lines")
    assert too_long == []


HEAVY = ("onnxruntime", "torch", "transformers", "optimum", "peft")


def test_the_gateway_and_the_client_load_no_engine_and_no_ml_stack() -> None:
    inner = ("tiger_grpc.engine", "tiger_grpc.models", "tiger_grpc.jobs")
    code = (
        "import sys, gateway.app, gateway.main, tiger_grpc.client\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})), "
        f"sorted(m for m in sys.modules if m.startswith({inner!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[] []"
