# trainforge developer entry points. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
CLUSTER := python3 hack/cluster/cluster.py
PYTEST_ARGS ?=

.PHONY: help setup system-deps test lint fmt unit crds cluster-build cluster-up cluster-down cluster-status demo bench gpu-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --progress-bar off -e '.[dev,trainer]'
	touch $@

setup: $(VENV)/.installed ## create .venv with the project and its dev + trainer extras

lint: setup ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: setup ## format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

crds: setup ## regenerate crds/, the chart's copy and docs/api.md from the pydantic models
	$(PY) -m trainforge.api.crdgen
	bash hack/sync-chart-crds.sh

system-deps: ## Debian packages the tests use (etcd, lua5.4, prometheus), when missing
	bash hack/install-system-deps.sh

cluster-build: ## build the control-plane binaries into the cache (once per version)
	bash hack/cluster/build.sh

cluster-up: cluster-build ## start the local control plane (.cluster/kubeconfig)
	$(CLUSTER) up

cluster-down: ## stop the local control plane and remove its state
	$(CLUSTER) down

cluster-status: ## show the local control plane's processes and nodes
	$(CLUSTER) status

unit: setup ## fast tests only (no cluster, no multi-process torch)
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

demo: setup ## fine-tune a small HF causal LM locally, serve it (OpenAI API), chat with it (~5 min)
	$(PY) hack/demo.py

gpu-check: setup ## on an NVIDIA GPU: causal-lm bf16 FSDP2 tokens/s + MFU, exact resume, vLLM (not in test)
	$(PY) hack/gpu_check.py

bench: setup cluster-build ## run the benchmarks (never part of `make test`; see bench/REPORT.md)
	$(PY) bench/operator_bench.py
	$(PY) bench/trainer_bench.py
	$(PY) bench/serve_bench.py
	$(PY) bench/llm_serve_bench.py

test: setup system-deps cluster-build lint ## everything CI runs: lint, unit, trainer, cluster and helm tests
	$(BIN)/pytest -q -ra tests $(PYTEST_ARGS)
