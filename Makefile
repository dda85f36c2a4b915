# trainforge developer entry points. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
CLUSTER := python3 hack/cluster/cluster.py
PYTEST_ARGS ?=
# REAL_NODE=1: `make cluster-up` adds the real node (kubelet + containerd) instead of KWOK's nodes.
REAL_NODE ?=

.PHONY: help setup system-deps test lint fmt unit crds cluster-build kueue-build node-build images cluster-up cluster-down cluster-status demo cluster-demo bench gpu-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

# All three distributions editable (the contract, the operator with its dev tools, the
# trainer): pip takes trainforge-contract, which the other two require, from ./contract.
$(VENV)/.installed: pyproject.toml contract/pyproject.toml trainer_image/pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --progress-bar off -e ./contract -e '.[dev]' -e ./trainer_image
	touch $@

setup: $(VENV)/.installed ## create .venv with the operator (+ dev tools), the contract and the trainer

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

system-deps: ## Debian packages the tests use (etcd, prometheus, containerd, buildah…), when missing
	bash hack/install-system-deps.sh

cluster-build: ## build the control-plane binaries into the cache (once per version)
	bash hack/cluster/build.sh

kueue-build: ## build Kueue's manager and copy its CRDs into the cache (once per version; the gang policy Kueue tests)
	bash hack/cluster/build-kueue.sh >/dev/null

node-build: system-deps ## build the real node's kubelet, kube-proxy, CoreDNS and pause into the cache (once per version)
	bash hack/cluster/build-node.sh >/dev/null

# images.sh itself waits for build-node.sh (the pause image), so that under `make -j` the
# downloads (wheelhouse, debootstrap) overlap the Go builds.
images: system-deps ## build the operator and trainer images with buildah (cached by input hash)
	bash hack/cluster/images.sh

cluster-up: cluster-build $(if $(REAL_NODE),system-deps node-build images) ## start the local control plane (.cluster/kubeconfig); REAL_NODE=1 for a real node
	$(CLUSTER) up $(if $(REAL_NODE),--real-node)

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

cluster-demo: ## on the real node: install the chart, train examples/trainingjob-cpu.yaml, serve it
	bash hack/cluster-demo.sh

bench: setup cluster-build ## run the benchmarks (never part of `make test`; see bench/REPORT.md)
	$(PY) bench/operator_bench.py
	$(PY) bench/trainer_bench.py
	$(PY) bench/serve_bench.py
	$(PY) bench/llm_serve_bench.py

test: setup system-deps cluster-build kueue-build node-build images lint ## everything CI runs: lint, unit, trainer, cluster, helm and real-node tests
	$(BIN)/pytest -q -ra tests $(PYTEST_ARGS)
