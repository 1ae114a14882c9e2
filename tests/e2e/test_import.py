"""Importing a local Hugging Face Llama checkpoint or GGUF file: CLI, gRPC and
HTTP."""

from __future__ import annotations

import asyncio
import filecmp
import json
import struct
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import API_KEY, DEFAULT_MODEL_ID, Process, run_cli
from tiger_grpc.models.fromgguf import read_header
from tiger_grpc.models.pipeline import add_graph
from tiger_grpc.models.store import ModelStore
from tiger_grpc.tools.serve_calls import ask

pytestmark = pytest.mark.e2e
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, default_model_dir: Path) -> Path:
    """A small Llama checkpoint as a user would have it on disk (random weights)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tiger_grpc.testing import tiny_llama_config

    path = tmp_path_factory.mktemp("My-Llama-Checkpoint")
    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir / "hf")
    config = tiny_llama_config(len(tokenizer), max_position_embeddings=512)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_cli_import_then_the_guide_request_works(
    checkpoint, backend: Process, base_url
):
    model_id = f"My-Llama-{uuid.uuid4().hex[:4]}"
    where = ("--grpc", f"127.0.0.1:{backend.port}")
    out = run_cli(*where, "import", str(checkpoint), "--id", model_id)
    assert out.returncode == 0, out.stderr
    assert "Exporting to ONNX with optimum" in out.stderr and "fused int4" in out.stderr
    assert f"imported {model_id.lower()}" in out.stdout
    # The seed guide's request shape, with the id in another case.
    body = {
        "model": model_id.upper(),
        "messages": [{"role": "user", "content": "Hello!"}],
        "stream": True,
        "max_tokens": 5,
    }
    import requests

    reply = requests.post(
        f"{base_url}/v1/generate_response", json=body, headers=HEADERS, timeout=120
    )
    chunks = [json.loads(line) for line in reply.text.splitlines()]
    assert reply.status_code == 200 and chunks[-1]["type"] == "stop"
    again = run_cli(*where, "import", str(checkpoint), "--id", model_id)
    assert again.returncode == 1 and "already exists" in again.stderr


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"path": "relative/dir", "id": "x"}, 400, "must be absolute"),
        ({"path": "/nonexistent/dir", "id": "x"}, 404, "no checkpoint"),
        ({"path": "/etc/passwd", "id": "x"}, 400, "or a .gguf file"),
        ({"path": "/tmp", "id": "../bad"}, 400, "`id`"),
        ({"id": "x"}, 400, "`path` is required"),
    ],
)
async def test_bad_imports_over_http(base_url: str, body, status, needle) -> None:
    async with aiohttp.ClientSession(headers=HEADERS) as s:
        async with s.post(f"{base_url}/v1/models/import", json=body) as reply:
            assert reply.status == status
            assert needle in (await reply.json())["message"]


async def test_http_import_streams_phases(checkpoint, base_url: str) -> None:
    model_id = f"http-import-{uuid.uuid4().hex[:4]}"
    async with aiohttp.ClientSession(headers=HEADERS) as s:
        async with s.post(
            f"{base_url}/v1/models/import",
            json={"path": str(checkpoint), "id": model_id, "stream": True},
        ) as r:
            chunks = [json.loads(line) async for line in r.content if line.strip()]
    assert [c["type"] for c in chunks][-1] == "stop" and chunks[-1]["model"] == model_id
    assert sum(c["type"] == "info" for c in chunks) >= 3


def with_sampling(source: Path, target: Path, temp: float, top_p: float, top_k: int):
    """`source` with llama.cpp's `general.sampling.*` keys added first among its
    keys (and a padding key, so the tensor data stays aligned where it was)."""

    def key(name: str, kind: int, value: bytes) -> bytes:
        return (
            struct.pack("<Q", len(name))
            + name.encode()
            + struct.pack("<I", kind)
            + value
        )

    added = [
        key("general.sampling.temp", 6, struct.pack("<f", temp)),
        key("general.sampling.top_p", 6, struct.pack("<f", top_p)),
        key("general.sampling.top_k", 5, struct.pack("<i", top_k)),
    ]
    size = sum(map(len, added)) + len(key("tiger.padding", 8, b"\0" * 8))
    text = b"x" * (-size % 32)  # GGUF's default alignment (the file sets none)
    added.append(key("tiger.padding", 8, struct.pack("<Q", len(text)) + text))
    assert "general.alignment" not in read_header(source)[0]
    whole = source.read_bytes()
    version, tensors, keys = struct.unpack_from("<IQQ", whole, 4)
    header = whole[:4] + struct.pack("<IQQ", version, tensors, keys + len(added))
    target.write_bytes(header + b"".join(added) + whole[24:])
    return target


async def test_a_gguf_file_is_served_with_its_own_blocks(
    base_url, store_home, tmp_path
) -> None:
    """The embedded model's GGUF file imported as any user's would be: its int4
    graph takes the file's Q4_1/Q8_0 blocks as they are, so it answers exactly as
    the embedded model (prepared from the same file) does; the sampling its
    metadata recommends (added here: the embedded file has none) becomes the
    model's defaults."""
    from tiger_grpc.models.embedded import find_gguf

    model_id = f"gguf-{uuid.uuid4().hex[:4]}"
    # 1.0 and 50 are transformers' own defaults, which its generation config
    # leaves out when it saves one: the file's advice must survive that.
    gguf = with_sampling(find_gguf(), tmp_path / "smol.gguf", 1.0, 0.8, 50)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(headers=HEADERS, timeout=timeout) as s:
        body = {"path": str(gguf), "id": model_id, "stream": True}
        async with s.post(f"{base_url}/v1/models/import", json=body) as r:
            chunks = [json.loads(line) async for line in r.content if line.strip()]
        assert chunks[-1]["type"] == "stop", chunks[-1]
        said = " ".join(c["message"] for c in chunks if c["type"] == "info")
        assert "the int4 graph takes its Q4_1/Q8_0 blocks as they are" in said
        stored = store_home / "models" / model_id
        manifest = json.loads((stored / "model.json").read_text())
        assert manifest["quantization"] == {"int4": "source blocks"}
        recommended = {"temperature": 1.0, "top_p": 0.8, "top_k": 50}
        assert (
            "Sampling defaults from the file: temperature 1.0, top_p 0.8, top_k 50"
            in said
        )
        assert manifest["sampling"] == recommended
        async with s.get(f"{base_url}/v1/models") as r:
            listed = {m["id"]: m for m in (await r.json())["models"]}
        assert listed[model_id]["sampling"] == recommended
        assert listed[model_id]["precision"] == "int4"
        assert listed[model_id]["quantization"] == "source blocks"
        # The file is kept (a copy), so a graph built again keeps its blocks too.
        assert filecmp.cmp(gguf, stored / "source.gguf", shallow=False)
        with ModelStore(store_home).lock(model_id):
            again = add_graph(ModelStore(store_home), model_id, "int4")
        assert again.quantization == {"int4": "source blocks"}
        answers = []
        for model in (model_id, DEFAULT_MODEL_ID):
            body = ask(model, "Name three colours.", 24)
            async with s.post(f"{base_url}/v1/generate_response", json=body) as r:
                answers.append((await r.json())["content"])
    assert answers[0] and answers[0] == answers[1]


async def test_a_client_that_leaves_stops_the_import_and_it_leaves_nothing(
    checkpoint, base_url: str, store_home
) -> None:
    model_id = f"left-{uuid.uuid4().hex[:4]}"
    body = {"path": str(checkpoint), "id": model_id, "stream": True}
    async with aiohttp.ClientSession(headers=HEADERS) as s:
        running = await s.post(f"{base_url}/v1/models/import", json=body)
        first = json.loads(await running.content.readline())
        assert first["type"] == "info"
        running.close()  # gone during the copy or the export
    models_dir = store_home / "models"
    # The import stops at the next phase; until then a new one is refused (429).
    again = {"path": str(checkpoint), "id": f"after-{model_id}"}
    for _ in range(300):
        async with aiohttp.ClientSession(headers=HEADERS) as s:
            async with s.post(f"{base_url}/v1/models/import", json=again) as reply:
                status = reply.status
        if status != 429:
            break
        await asyncio.sleep(0.1)
    assert status == 200  # the next import works
    assert not (models_dir / model_id).exists()
    assert not list(models_dir.glob(f".staging-{model_id}*"))


def test_large_exports_skip_the_post_processing_that_cannot_pass_2_gb(
    checkpoint, tmp_path, monkeypatch
) -> None:
    """optimum's tied-weight post-processing serializes the whole graph, which fails
    past 2 GB (seen importing a 1B Llama with a tied head); such exports skip it.
    Here the limit is lowered so the small checkpoint takes that path."""
    import numpy as np
    import optimum.exporters.onnx

    from tiger_grpc.config import Device
    from tiger_grpc.engine.optimum import OnnxCausalLM
    from tiger_grpc.models import export as prepare

    parameters = prepare.checkpoint_parameters(checkpoint)
    assert parameters is not None and 1e5 < parameters < 1e7
    assert prepare.post_process_fits(checkpoint, "fp32")
    monkeypatch.setattr(prepare, "POST_PROCESS_MAX_BYTES", parameters * 4 - 1)
    assert prepare.post_process_fits(checkpoint, "fp16")
    assert not prepare.post_process_fits(checkpoint, "fp32")
    seen = {}
    real = optimum.exporters.onnx.main_export

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(optimum.exporters.onnx, "main_export", spy)
    prepare.export_onnx(checkpoint, tmp_path / "onnx")
    assert seen["no_post_process"] is True
    model = OnnxCausalLM(tmp_path / "onnx" / "model.onnx", Device.CPU)
    logits, _ = model.forward([1, 5, 6], model.empty_cache())
    assert np.isfinite(logits).all()
