"""The device-resident engine (the CUDA design) exercised with CPU buffers.

The fused engine keeps its KV cache in ORT values on the session's device and binds
them by address; growing, zeroing and moving slots are device-side copies. On a
machine without a GPU the same code runs with CPU values, which these tests check:
growth past the initial capacity, the cache budget, the fp16 graph served end to
end, and the CUDA branch of `import` (fp16 fused graph) up to the GPU itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from tests.helpers import API_KEY, graph, process_env, stack, torch_logits
from tiger_grpc.api.events import Info
from tiger_grpc.config import Device
from tiger_grpc.engine.fused import INITIAL_CAPACITY, FusedCausalLM
from tiger_grpc.jobs.importing import run_import
from tiger_grpc.models.store import ModelStore

PROMPT = [1, 5, 6, 7, 8, 9, 10, 11]


@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-4), ("fp16", 3e-3)])
def test_the_cache_grows_on_the_device_and_keeps_every_slot(
    store_home, tiny_model, torch_model, precision, atol
) -> None:
    model = FusedCausalLM(graph(store_home, tiny_model, precision), Device.CPU, 2)
    assert model.capacity == INITIAL_CAPACITY
    long = [int(t) for t in np.random.default_rng(0).integers(3, 400, 600)]
    # Slot 1 holds a short sequence while slot 0's prompt forces a larger buffer.
    model.prefill(1, PROMPT)
    first = model.prefill(0, long)
    assert model.capacity >= 600
    np.testing.assert_allclose(first, torch_logits(torch_model, long)[-1], atol=atol)
    logits = model.decode([42, 43], [len(long), len(PROMPT)])
    np.testing.assert_allclose(
        logits[0], torch_logits(torch_model, [*long, 42])[-1], atol=atol
    )
    np.testing.assert_allclose(
        logits[1], torch_logits(torch_model, [*PROMPT, 43])[-1], atol=atol
    )
    # Moving the long sequence into slot 1 carries its whole row.
    model.move(0, 1)
    moved = model.decode([42, 44], [len(PROMPT) + 1, len(long) + 1])[1]
    np.testing.assert_allclose(
        moved, torch_logits(torch_model, [*long, 42, 44])[-1], atol=atol
    )
    model.reset()
    assert model.capacity == INITIAL_CAPACITY


def test_a_cache_budget_caps_the_sequence_length(store_home, tiny_model) -> None:
    path = graph(store_home, tiny_model, "fp16")
    full = FusedCausalLM(path, Device.CPU, 4)
    # 2 layers x (key, value) x 2 kv heads x 16 dims x 2 bytes.
    assert full.token_bytes == 2 * 2 * 2 * 16 * 2
    capped = FusedCausalLM(path, Device.CPU, 4, cache_gb=4 * 100 * 256 / 2**30)
    assert capped.max_len == 100 and capped.capacity == 100
    with pytest.raises(ValueError, match="exceed the cache of 100"):
        capped.prefill(0, list(range(3, 104)))
    with pytest.raises(ValueError, match="does not fit one token"):
        FusedCausalLM(path, Device.CPU, 4, cache_gb=1e-9)


def test_the_fp16_graph_served_end_to_end_agrees_with_fp32(
    store_home, tiny_model, tmp_path, base_url
) -> None:
    """A server told to serve fp16 (what CUDA gets by default) against the session's
    server, which serves the tiny model's fp32 graph."""
    body = {
        "model": tiny_model.id,
        "messages": [{"role": "user", "content": "Count with me: one, two, three"}],
        "stream": True,
        "temperature": 0,
        "max_tokens": 24,
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def generate(url: str) -> tuple[str, list[dict]]:
        reply = requests.post(
            f"{url}/v1/generate_response", json=body, headers=headers, timeout=120
        )
        assert reply.status_code == 200, reply.text
        chunks = [json.loads(line) for line in reply.text.splitlines()]
        assert chunks[-1]["type"] == "stop", chunks[-1]
        return "".join(c["delta"] for c in chunks if c["type"] == "delta"), chunks

    fp32_text, _ = generate(base_url)
    with stack(store_home, tmp_path, server_args=("--precision", "fp16")) as (_, gw):
        fp16_text, chunks = generate(f"http://127.0.0.1:{gw.port}")
        log = (tmp_path / "own-server.log").read_text()
    assert "fused-fp16" in log and "float16 cache" in log
    assert any("ready on CPUExecutionProvider" in c.get("message", "") for c in chunks)
    assert fp16_text and fp16_text == fp32_text


def test_the_cuda_branch_of_import_builds_the_fp16_graph(
    tmp_path: Path, default_model_dir: Path, store_home, tiny_model, torch_model
) -> None:
    """`run_import` for a CUDA server, on a machine whose PyTorch has no CUDA: the
    optimum export falls back to the CPU (said so), the fused graph is fp16."""
    if torch.cuda.is_available():
        pytest.skip("this machine's PyTorch has CUDA: the export would run on it")
    store = ModelStore(tmp_path / "home")
    events: list = []
    source = ModelStore(store_home).path(tiny_model.id) / "hf"
    run_import(source, "imported-for-cuda", store, Device.CUDA, events.append)
    messages = [e.message for e in events if isinstance(e, Info)]
    assert any("PyTorch here has no CUDA" in m for m in messages)
    assert any("fused fp16 graph for the CUDA engine: layer 2/2" in m for m in messages)
    manifest = store.get("imported-for-cuda")
    assert manifest is not None and list(manifest.fused_graphs) == ["fp16"]
    model = FusedCausalLM(
        store.path(manifest.id) / manifest.fused_graphs["fp16"], Device.CPU, 1
    )
    np.testing.assert_allclose(
        model.prefill(0, PROMPT), torch_logits(torch_model, PROMPT)[-1], atol=3e-3
    )


def test_bench_gpu_runs_and_reports(store_home, tmp_path) -> None:
    """`make bench-gpu` on a CPU: the tiny random shape and the embedded model (fp16
    graph) through the engine, plus greedy parity against the fp32 export."""
    env = {**process_env(store_home)}
    out = subprocess.run(
        [
            sys.executable, "-m", "tiger_grpc.tools.bench_gpu",
            "--shapes", "tiny,embedded,llama-3.1-8b", "--device", "cpu",
            "--precision", "fp16", "--streams", "1,2", "--tokens", "4",
            "--prompt-tokens", "8", "--parity-tokens", "8",
            "--workdir", str(tmp_path / "graphs"), "--out", str(tmp_path),
        ],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipping llama-3.1-8b: no CUDA provider here" in out.stdout
    report = json.loads((tmp_path / "bench-gpu.json").read_text())
    rows = report["results"]
    assert [(r["model"], r["streams"]) for r in rows] == [
        ("tiny", 1), ("tiny", 2), ("embedded", 1), ("embedded", 2),
    ]  # fmt: skip
    assert all(r["provider"] == "CPUExecutionProvider" for r in rows)
    assert all(r["aggregate_tokens_per_s"] > 0 for r in rows)
    parity = report["parity"]
    assert parity["same_leading_tokens"] == 8 and parity["text"]
    assert "| embedded | CPUExecutionProvider | fp16" in out.stdout


@pytest.mark.parametrize(("precision", "atol"), [("fp32", 2e-4), ("fp16", 5e-3)])
def test_llama_3_1_geometry_matches_pytorch(tmp_path, precision, atol) -> None:
    """Llama-3.1-8B's attention geometry (32 heads over 8 KV heads of 128, llama3
    RoPE scaling, theta 500000, untied head), two narrow layers: the fused graph
    against PyTorch, in prefill and in a batched decode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiger_grpc.models.graph import build_fused_graph
    from tiger_grpc.models.graph.tensors import checkpoint_tensors
    from tiger_grpc.models.precision import GRAPH_TYPES
    from tiger_grpc.tools.bench_gpu import SHAPES

    shape = SHAPES["llama-3.1-8b"]
    config = LlamaConfig(
        **{
            **shape,
            "hidden_size": 1024,
            "head_dim": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "vocab_size": 1000,
        }
    )
    torch.manual_seed(3)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "hf")
    path = tmp_path / precision / "model.onnx"
    build_fused_graph(
        config,
        checkpoint_tensors(tmp_path / "hf"),
        path,
        GRAPH_TYPES[precision][1],
        512,
    )
    fused = FusedCausalLM(path, Device.CPU, 2)
    prompts = [list(range(3, 43)), list(range(500, 517))]
    firsts = [fused.prefill(i, p) for i, p in enumerate(prompts)]
    decoded = fused.decode([7, 9], [len(p) for p in prompts])
    for i, (prompt, token) in enumerate(zip(prompts, (7, 9), strict=True)):
        expected = torch_logits(model, [*prompt, token])
        np.testing.assert_allclose(firsts[i], expected[-2], atol=atol)
        np.testing.assert_allclose(decoded[i], expected[-1], atol=atol)


def test_rope_tables_follow_llama3_scaling() -> None:
    """The graph's cos/sin tables equal transformers' rotary embedding for
    Llama-3.1 (llama3 scaling) far into the context, where scaling matters."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from tiger_grpc.models.graph.shape import rope_tables
    from tiger_grpc.tools.bench_gpu import SHAPES

    config = LlamaConfig(**SHAPES["llama-3.1-8b"])
    positions = [0, 1, 4097, 100_000, 131_071]
    cos, sin = rope_tables(config, 131_072)
    with torch.no_grad():
        ref_cos, ref_sin = LlamaRotaryEmbedding(config)(
            torch.zeros(1, 1, 128), torch.tensor([positions])
        )
    half = cos.shape[1]
    np.testing.assert_allclose(cos[positions], ref_cos[0, :, :half], atol=2e-3)
    np.testing.assert_allclose(sin[positions], ref_sin[0, :, :half], atol=2e-3)
    unscaled = LlamaConfig(**{**SHAPES["llama-3.1-8b"], "rope_scaling": None})
    assert (
        np.abs(rope_tables(unscaled, 131_072)[0][positions] - cos[positions]).max()
        > 0.5
    )


async def test_a_cuda_server_builds_the_missing_fp16_graph_once(
    tmp_path, store_home, tiny_model, monkeypatch
) -> None:
    """A store prepared on a CPU machine (no fp16 graph) served with CUDA asked for:
    the registry builds the fp16 graph on first load, says so, and serves it. (Here
    ORT falls back to the CPU provider; a CUDA session that falls back is refused
    in service, so this test lets the fallback through.)"""
    import dataclasses

    import tiger_grpc.engine.fused as fused

    monkeypatch.setattr(fused, "in_use", lambda session, device, what: "CPU")
    import shutil

    from tiger_grpc.api.params import ChatMessage, GenerateParams
    from tiger_grpc.config import EngineOptions
    from tiger_grpc.models.registry import ModelRegistry

    store = ModelStore(tmp_path / "home")
    source = ModelStore(store_home).path(tiny_model.id)
    shutil.copytree(
        source, store.path(tiny_model.id), ignore=shutil.ignore_patterns("fused-fp16")
    )
    cpu_only = {"fp32": tiny_model.fused_graphs["fp32"]}
    dataclasses.replace(tiny_model, fused_graphs=cpu_only).write(
        store.path(tiny_model.id)
    )
    registry = ModelRegistry(store, EngineOptions(device=Device.CUDA, precision="fp16"))
    params = GenerateParams(
        model=tiny_model.id, messages=(ChatMessage("user", "hi"),), max_tokens=3
    )

    def listed() -> tuple[bool, str, str]:
        (model,) = [m for m in registry.models() if m.id == tiny_model.id]
        return model.loaded, model.precision, model.quantization

    try:
        assert listed() == (False, "fp16", "")  # to be built, so not yet recorded
        for attempt in range(2):
            events = [e async for e in registry.generate(params)]
            infos = [e.message for e in events if isinstance(e, Info)]
            building = [m for m in infos if "Building the fused fp16 graph" in m]
            assert len(building) == (1 if attempt == 0 else 0)
        manifest = store.get(tiny_model.id)
        assert manifest is not None and "fp16" in manifest.fused_graphs
        assert registry._loaded[tiny_model.id].graph == manifest.fused_graphs["fp16"]
        assert listed() == (True, "fp16", "none")
    finally:
        registry.close()


def test_on_cuda_float32_graphs_are_passed_over(store_home, tiny_model) -> None:
    """A float32 graph would put attention on the CPU: on CUDA, a model whose only
    fused graph is fp32 is served from its optimum export (on CPU, from that graph),
    and the registry builds no graph of a precision CUDA does not serve."""
    import dataclasses

    from tiger_grpc.config import EngineOptions
    from tiger_grpc.engine.providers import CUDA
    from tiger_grpc.models.loaded import LoadedModel
    from tiger_grpc.models.registry import ModelRegistry

    store = ModelStore(store_home)
    fp32 = {"fp32": tiny_model.fused_graphs["fp32"]}
    fp32_only = dataclasses.replace(tiny_model, fused_graphs=fp32)
    options = EngineOptions(device=Device.CPU, precision="int4-fp16")
    loaded = [
        LoadedModel(fp32_only, store.path(tiny_model.id), options, provider)
        for provider in (CUDA, "CPUExecutionProvider")
    ]
    try:
        assert [m.graph for m in loaded] == [tiny_model.onnx_path, fp32["fp32"]]
    finally:
        for model in loaded:
            model.close()
    registry = ModelRegistry(store, EngineOptions(device=Device.CPU, precision="int4"))
    try:
        registry.provider = CUDA
        assert not registry.graph_to_build(fp32_only)  # int4 is int4-fp16 there
        registry.options = options
        assert registry.graph_to_build(fp32_only)
    finally:
        registry.close()


def test_cpu_defaults_and_the_cuda_memory_probe(store_home, tiny_model) -> None:
    from tiger_grpc.config import CPU_MAX_BATCH
    from tiger_grpc.engine.providers import cuda_free_bytes, default_cuda_cache_gb

    model = FusedCausalLM(graph(store_home, tiny_model, "fp16"), Device.CPU)
    assert model.max_batch == CPU_MAX_BATCH
    assert model.max_len == tiny_model.context_length  # no cache cap on CPU
    free = cuda_free_bytes()  # None without a CUDA runtime, else what it says
    assert free is None or free > 0
    assert default_cuda_cache_gb() > 0


def test_a_preallocated_cache_is_whole_from_the_start(
    store_home, tiny_model, torch_model
) -> None:
    """What CUDA does: the cache allocated once at its full budgeted length, never
    grown nor given back."""
    path = graph(store_home, tiny_model, "fp16")
    budget = 3 * 1000 * 256 / 2**30  # 3 slots x 1000 tokens x 256 bytes
    model = FusedCausalLM(path, Device.CPU, 3, cache_gb=budget, preallocate=True)
    assert model.max_len == 1000 and model.capacity == 1000
    assert model.cache_bytes() == 3 * 1000 * 256
    long = list(range(3, 903))
    np.testing.assert_allclose(
        model.prefill(2, long), torch_logits(torch_model, long)[-1], atol=3e-3
    )
    model.shrink()
    assert model.capacity == 1000


def test_an_import_builds_the_graph_the_server_serves(
    tmp_path: Path, store_home, tiny_model
) -> None:
    """A server run with `--precision fp32` gets an fp32 fused graph from `import`,
    not the device's default."""
    store = ModelStore(tmp_path / "home")
    source = ModelStore(store_home).path(tiny_model.id) / "hf"
    run_import(source, "as-served", store, Device.CPU, lambda e: None, None, "fp32")
    manifest = store.get("as-served")
    assert manifest is not None and list(manifest.fused_graphs) == ["fp32"]


@pytest.mark.parametrize("module", ["tiger_grpc.server", "tiger_grpc.server.launch"])
def test_an_unknown_precision_is_refused_at_start(module, tmp_path) -> None:
    env = {**process_env(tmp_path), "TIGER_PRECISION": "int3"}
    flags = ["--no-prepare"] if module == "tiger_grpc.server" else []
    out = subprocess.run(
        [sys.executable, "-m", module, *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode != 0
    choices = "int8, int4, int4-kv8, fp16, fp32, int8-fp16, int4-fp16, got 'int3'"
    assert f"TIGER_PRECISION must be one of {choices}" in out.stderr


def test_cuda_asked_for_and_not_had_is_refused_with_the_reason(
    store_home, tiny_model, monkeypatch
) -> None:
    """ORT quietly falls back to CPU when CUDA cannot load: the session is
    refused for `cuda` (and the server will not start), a warning for `auto`."""
    import onnxruntime as ort

    from tiger_grpc.engine import providers
    from tiger_grpc.engine.providers import DeviceError, check_device, in_use

    path = graph(store_home, tiny_model, "fp16")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    monkeypatch.setattr(providers, "choose_providers", lambda d: [providers.CUDA])
    with pytest.raises(DeviceError, match="asked for CUDA and ONNX Runtime gave it"):
        in_use(session, Device.CUDA, "the graph")
    assert in_use(session, Device.AUTO, "the graph") == "CPUExecutionProvider"
    monkeypatch.setattr(providers, "why_not_cuda", lambda: "no NVIDIA driver here")
    with pytest.raises(DeviceError, match="TIGER_DEVICE=cuda, but no NVIDIA driver"):
        check_device(Device.CUDA)
    check_device(Device.AUTO)  # on CPU: said, not refused
    monkeypatch.setattr(providers, "why_not_cuda", lambda: None)
    check_device(Device.CUDA)


def test_on_cuda_every_precision_has_fp16_activations(monkeypatch) -> None:
    """ORT's CUDA attention is fp16/bf16 only: on CUDA int4 and int8 are their
    fp16-activation graphs, fp32 is refused with the reason, and a model's float32
    graphs are passed over; on CPU each precision is itself."""
    from tiger_grpc.models import precision as p

    assert p.resolve_precision("int4", Device.CPU) == "int4"
    assert p.resolve_precision("int8", Device.CPU) == "int8"
    assert p.resolve_precision(None, Device.CPU) == "int4"
    monkeypatch.setattr(p, "provider_for", lambda d: p.CUDA)
    assert p.resolve_precision("int4", Device.CUDA) == "int4-fp16"
    assert p.resolve_precision("int8", Device.CUDA) == "int8-fp16"
    assert p.resolve_precision("int4-fp16", Device.CUDA) == "int4-fp16"
    # int4-kv8's int8 cache is ORT's CPU attention's: CUDA serves int4-fp16.
    assert p.resolve_precision("int4-kv8", Device.CUDA) == "int4-fp16"
    assert p.resolve_precision(None, Device.CUDA) == "fp16"
    with pytest.raises(ValueError, match="fp32 does not serve there"):
        p.resolve_precision("fp32", Device.CUDA)
    with pytest.raises(ValueError, match="must be one of"):
        p.resolve_precision("int3", Device.CUDA)
    on_cuda = [name for name in p.PRECISIONS if p.runs_on(name, p.CUDA)]
    assert on_cuda == ["fp16", "int8-fp16", "int4-fp16"]
    assert all(p.runs_on(name, "CPUExecutionProvider") for name in p.PRECISIONS)
    # Which of a model's graphs serves: the asked one, else the device's default,
    # else the closest to the weights of those that run there (on CUDA none of
    # the float32 ones).
    graphs = {"fp32": "a", "int4": "b"}
    cpu = "CPUExecutionProvider"
    assert p.served_precision(graphs, "fp32", cpu) == "fp32"
    assert p.served_precision(graphs, "int8", cpu) == "int4"
    assert p.served_precision({"fp16": "c", "fp32": "a"}, "int8", cpu) == "fp32"
    assert p.served_precision(graphs, "int4-fp16", p.CUDA) is None
    assert p.served_precision({**graphs, "fp16": "c"}, "int4-fp16", p.CUDA) == "fp16"


def test_a_failed_device_zeroing_never_falls_back_to_a_host_copy(monkeypatch) -> None:
    import onnxruntime as ort

    from tiger_grpc.engine.device import DeviceBuffers

    buffers = DeviceBuffers(2, np.float16, ["CPUExecutionProvider"], "cpu")
    monkeypatch.setattr(buffers, "device_type", "cuda")  # as on a GPU
    make = ort.OrtValue.ortvalue_from_shape_and_type  # the memory: host memory here
    monkeypatch.setattr(
        ort.OrtValue,
        "ortvalue_from_shape_and_type",
        staticmethod(lambda shape, dtype, device, index: make(shape, dtype, "cpu", 0)),
    )

    def failing(*args, **kwargs):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(buffers, "copy", failing)
    monkeypatch.setattr(
        np, "zeros", lambda *a, **k: pytest.fail("a host array of the cache")
    )
    with pytest.raises(RuntimeError, match="zeroing the KV cache on the device"):
        buffers.allocate((1, 2, 8, 4))


def test_cuda_libraries_are_looked_for_where_they_are(tmp_path) -> None:
    """The operator's directory first, then NVIDIA's packages next to
    onnxruntime, then PyTorch's; each library from the first that has it."""
    from tiger_grpc.engine.providers import CUDA_LIBRARIES, library_dirs, locate

    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for directory in (mine, theirs):
        directory.mkdir()
    (mine / "libcudnn.so.9").write_bytes(b"")
    for name in CUDA_LIBRARIES:
        (theirs / name).write_bytes(b"")
    dirs = library_dirs({"TIGER_CUDA_LIB_DIR": f"{mine}:{theirs}:/nonexistent"})
    assert dirs[:2] == [mine, theirs]
    found = locate(CUDA_LIBRARIES, dirs)
    assert found["libcudnn.so.9"] == mine / "libcudnn.so.9"
    assert found["libcudart.so.13"] == theirs / "libcudart.so.13"


def test_cuda_libraries_of_another_environment_are_found(tmp_path, monkeypatch) -> None:
    """onnxruntime-gpu put on PYTHONPATH, CUDA's pip packages in PyTorch's
    environment (a GPU machine's usual state): every package directory on
    `sys.path` is searched, and libcurand (which the provider links) is loaded."""
    from tiger_grpc.engine.providers import CUDA_LIBRARIES, library_dirs, locate

    torch_env = tmp_path / "site-packages"
    cu13 = torch_env / "nvidia" / "cu13" / "lib"
    cudnn = torch_env / "nvidia" / "cudnn" / "lib"
    for directory in (cu13, cudnn):
        directory.mkdir(parents=True)
    for name in CUDA_LIBRARIES:
        (cudnn if "cudnn" in name else cu13).joinpath(name).write_bytes(b"")
    monkeypatch.setattr("sys.path", [*__import__("sys").path, str(torch_env)])
    dirs = library_dirs({})
    assert cu13 in dirs and cudnn in dirs
    found = locate(CUDA_LIBRARIES, dirs)
    assert "libcurand.so.10" in CUDA_LIBRARIES
    assert found["libcurand.so.10"] == cu13 / "libcurand.so.10"
    assert found["libcudnn.so.9"] == cudnn / "libcudnn.so.9"


def test_plain_rope_without_transformers_default(monkeypatch) -> None:
    """transformers 5.x dropped ROPE_INIT_FUNCTIONS["default"]: the tables are
    then computed here, within float32 rounding of transformers 4.x's."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from tiger_grpc.models.graph.shape import rope_tables

    config = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_theta=1e5)
    cos, sin = rope_tables(config, 512)
    monkeypatch.delitem(ROPE_INIT_FUNCTIONS, "default")
    cos2, sin2 = rope_tables(config, 512)
    assert np.abs(cos - cos2).max() < 1e-4 and np.abs(sin - sin2).max() < 1e-4


def test_llama3_rope_without_torch_and_transformers5_configs(monkeypatch) -> None:
    """Without torch (a GPU machine's `make gpu-check` needs none) Llama-3 RoPE
    is computed here, equal to transformers' tables; a transformers 5.x config
    keeps the base in `rope_parameters` (no `rope_theta` attribute), and that
    base is the one used."""
    from types import SimpleNamespace

    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from tiger_grpc.models.graph.shape import rope_tables
    from tiger_grpc.tools.bench_gpu import SHAPES

    config = LlamaConfig(**SHAPES["llama-3.1-8b"])
    cos, sin = rope_tables(config, 131_072)
    monkeypatch.delitem(ROPE_INIT_FUNCTIONS, "llama3")
    cos2, sin2 = rope_tables(config, 131_072)
    # frequencies equal to 2 ulp: the tables differ by at most one float32 step
    # of the phase (1/2048 below 8,192, 1/128 past 65,536)
    assert np.abs(cos - cos2)[:8192].max() < 1e-3
    assert np.abs(cos - cos2).max() < 1e-2 and np.abs(sin - sin2).max() < 1e-2
    as_v5 = SimpleNamespace(  # how transformers 5.x holds the same config
        hidden_size=4096,
        num_attention_heads=32,
        rope_parameters={**SHAPES["llama-3.1-8b"]["rope_scaling"], "rope_theta": 5e5},
    )
    cos3, _ = rope_tables(as_v5, 131_072)
    assert np.abs(cos3 - cos2).max() < 1e-6
    plain = SimpleNamespace(
        hidden_size=256,
        num_attention_heads=4,
        rope_parameters={"rope_type": "default", "rope_theta": 1e5},
    )
    reference = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_theta=1e5)
    monkeypatch.delitem(ROPE_INIT_FUNCTIONS, "default")
    assert (
        np.abs(rope_tables(plain, 512)[0] - rope_tables(reference, 512)[0]).max() < 1e-6
    )


def test_cuda_sessions_pin_the_attention_kernels(store_home, tiny_model, monkeypatch):
    """On compute capability 9+, ORT prefers cuDNN's SDPA unless kernels are pinned;
    cuDNN builds a plan for each new shape (on an H100: 45 to 780 ms for each new
    prompt length or batch size). `sdpa_kernel` pins ORT's flash attention, with
    decode's CUDA graphs; TIGER_CUDA_ATTENTION=ort leaves ORT its own choice."""
    from tiger_grpc.engine import fused
    from tiger_grpc.engine.providers import CPU, CUDA, cuda_options

    asked: list = []

    def session(path, options, providers):
        asked.append(providers)
        raise RuntimeError("asked")

    monkeypatch.setattr(fused, "choose_providers", lambda device: [CUDA, CPU])
    monkeypatch.setattr(fused.ort, "InferenceSession", session)
    path = graph(store_home, tiny_model, "fp16")
    with pytest.raises(RuntimeError, match="asked"):
        FusedCausalLM(path, Device.CUDA)
    monkeypatch.setenv("TIGER_CUDA_ATTENTION", "ort")
    with pytest.raises(RuntimeError, match="asked"):
        FusedCausalLM(path, Device.CUDA, graphs=False)
    assert asked == [
        [(CUDA, {"enable_cuda_graph": "1", "sdpa_kernel": "3"}), CPU],
        [(CUDA, {}), CPU],
    ]
    monkeypatch.setenv("TIGER_CUDA_ATTENTION", "cudnn")
    with pytest.raises(ValueError, match="TIGER_CUDA_ATTENTION must be one of flash"):
        cuda_options(False)
