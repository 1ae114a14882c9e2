"""The README's examples run, unchanged but for addresses, against real processes."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import API_KEY, ROOT, TINY_MODEL_ID, Process

pytestmark = pytest.mark.e2e


def example(tag: str) -> str:
    blocks = re.findall(
        rf"```\w+ {tag}\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL
    )
    assert len(blocks) == 1, f"README.md should have one `{tag}` block"
    return blocks[0]


def env_for(backend: Process) -> dict[str, str]:
    return {
        **os.environ,
        "TIGER_GRPC_TARGET": f"127.0.0.1:{backend.port}",
        "TIGER_API_KEY": API_KEY,
    }


def run_python_example(tag: str, backend: Process, tmp_path: Path) -> str:
    script = tmp_path / f"{tag}.py"
    script.write_text(example(tag))
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env_for(backend),
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_python_client_example(backend: Process, tmp_path: Path) -> None:
    stdout = run_python_example("client-example", backend, tmp_path)
    assert "smollm2-135m-instruct" in stdout and "Usage(" in stdout


def run_sdk_example(tag: str, base_url: str, tmp_path: Path) -> str:
    """An example with the `openai` SDK, against the gateway at `base_url`."""
    script = tmp_path / f"{tag}.py"
    script.write_text(example(tag).replace("http://localhost:45678", base_url))
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "TIGER_API_KEY": API_KEY},
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_openai_sdk_example(base_url: str, tmp_path: Path) -> None:
    stdout = run_sdk_example("openai-example", base_url, tmp_path)
    assert "CompletionUsage(" in stdout and "top_logprobs=" in stdout
    assert "[None, " in stdout  # the first prompt token has no log-probability


def test_grpc_example(backend: Process, tmp_path: Path) -> None:
    stdout = run_python_example("grpc-example", backend, tmp_path)
    assert "STOP_REASON_" in stdout and "output_tokens" in stdout


def test_cli_example(backend: Process, base_url: str) -> None:
    for line in example("cli-example").strip().splitlines():
        args = shlex.split(line.replace("http://localhost:45678", base_url))
        assert args[0] == "tiger"
        out = subprocess.run(
            [sys.executable, "-m", "tiger_grpc.client.cli", *args[1:]],
            capture_output=True,
            text=True,
            env=env_for(backend),
            timeout=300,
            cwd=ROOT,
        )
        assert out.returncode == 0, (line, out.stderr)
        assert out.stdout.strip(), line


def test_pytest_fixture_example(tmp_path: Path, default_model_dir: Path) -> None:
    """The README's user test file, with only the README's `conftest.py` line, run by
    pytest in an empty directory that inherits none of our configuration (so under
    pytest-asyncio's default strict mode)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "conftest.py").write_text('pytest_plugins = ["tiger_grpc.testing"]\n')
    (project / "test_user.py").write_text(example("pytest-example"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
        "TIGER_TESTING_HOME": str(tmp_path / "home"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=project,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout
    header = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        env=env,
        cwd=project,
    )
    assert f"rootdir: {project}" in header.stdout  # nothing of ours was picked up
    assert "configfile" not in header.stdout


def run_shell_example(tag: str, base_url: str, **replace: str) -> list[dict]:
    script = example(tag).replace("http://localhost:45678", base_url)
    script = script.replace(
        "export TIGER_API_KEY=...", f"export TIGER_API_KEY={API_KEY}"
    )
    for old, new in replace.items():
        script = script.replace(old, new)
    env = {**os.environ, "TIGER_API_KEY": API_KEY}
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_first_request_example(base_url: str) -> None:
    chunks = run_shell_example("http-example", base_url)
    assert chunks[-1]["type"] == "stop"
    assert any(c["type"] == "delta" for c in chunks)


def test_training_example(base_url: str, tiny_model) -> None:
    """The README's training request, on the tiny model (the real one takes minutes)."""
    output = f"readme-{uuid.uuid4().hex[:6]}"
    chunks = run_shell_example(
        "train-example",
        base_url,
        **{'"smollm2-135m-instruct"': f'"{TINY_MODEL_ID}"', "smollm2-orion": output},
    )
    assert chunks[-1] == {
        **chunks[-1],
        "type": "stop",
        "stop_reason": "completed",
        "model": output,
    }
    assert sum(c["type"] == "progress" for c in chunks) == 8


def test_structured_output_example(base_url: str, tmp_path: Path) -> None:
    stdout = run_sdk_example("structured-example", base_url, tmp_path)
    parsed, called, final = stdout.strip().splitlines()[:3]
    assert parsed.startswith("City(name=")
    assert called.startswith("tool_calls get_weather {")
    assert final.split()[0] in ("stop", "length")
