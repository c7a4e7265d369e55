# kubemoe developer entry points. `make help` lists them.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SAMPLE ?= manifests/samples/mixtral-8x7b-p4de.yaml

.DEFAULT_GOAL := help
.PHONY: help install run demo demo-down test unit e2e lint crds crds-check clean bench bench-quick observability-tools gateway-tools node-deps

## Show the targets
help:
	@awk '/^## /{doc=substr($$0,4)} /^[a-z][a-z0-9-]*:/{if(doc){sub(":.*","",$$1); printf "  %-15s %s\n",$$1,doc; doc=""}}' $(MAKEFILE_LIST)

$(BIN)/kubemoe: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

## Create the virtualenv and install kubemoe (editable) with its test tools
install: $(BIN)/kubemoe

## Show what kubemoe would deploy for a sample, offline: its plan, then its manifests (SAMPLE=...)
run: install
	$(BIN)/kubemoe plan -f $(SAMPLE)
	@echo; echo "# --- manifests the operator would apply ---"
	$(BIN)/kubemoe render -f $(SAMPLE)

## The operator on a local control plane: samples deployed to fake p4de/p5/trn2 nodes, plans printed
demo: install node-deps
	$(BIN)/python hack/demo.py

## Stop the demo's operator and the local cluster
demo-down:
	$(BIN)/python hack/demo.py down

## Every test: unit tests, then e2e tests against the local control plane (built once, then cached).
## The browser test's Chromium and playwright-core are installed (hack/browser-deps.sh) or the run fails.
test: install toolchain observability-tools gateway-tools node-deps
	browser="$$(hack/browser-deps.sh)" && eval "$$browser" && $(BIN)/pytest

## Unit tests only (no cluster)
unit: install observability-tools
	browser="$$(hack/browser-deps.sh)" && eval "$$browser" && $(BIN)/pytest -m "not e2e"

## e2e tests only (starts the local cluster unless KUBECONFIG is set)
e2e: install toolchain gateway-tools observability-tools
	$(BIN)/pytest -m e2e

## Debian packages of the real node and the image (containerd, runc, CNI plugins, buildah, mmdebstrap)
node-deps:
	hack/node-deps.sh

## Traefik, the Gateway API implementation the gateway e2e test runs (built from the Go module proxy, cached)
gateway-tools:
	hack/tools-gateway install

## Prometheus/promtool, Argo CD (health runner, controller, repo server) and redis for the observability/GitOps tests
observability-tools:
	hack/tools-observability install

## ruff, mypy and the import-layer contracts
lint: install
	$(BIN)/ruff check operator tests hack/bench
	$(BIN)/ruff format --check operator tests hack/bench
	$(BIN)/mypy
	$(BIN)/mypy --explicit-package-bases hack/bench
	$(BIN)/lint-imports

## Regenerate crds/ (and the chart's copy, charts/kubemoe/files/crds/) from the pydantic models
crds: install
	$(BIN)/kubemoe crds --output-dir crds
	$(BIN)/kubemoe crds --output-dir charts/kubemoe/files/crds

## Fail when crds/ differs from what the models generate
crds-check: install
	$(BIN)/pytest -q tests/unit/test_crds.py

# The benchmarks' extra (matplotlib), once per virtualenv and pyproject change.
$(VENV)/.bench-deps: $(BIN)/kubemoe pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	@touch $@

## Benchmarks, full size (budget 20 min on 2 cores): operator, router, planner side by side; BENCH=subject... picks
bench: $(VENV)/.bench-deps toolchain
	$(BIN)/python -m hack.bench.run $(BENCH)

## Benchmarks at CI smoke size (<= 3 min); fails when a figure misses its generous CI bound
bench-quick: $(VENV)/.bench-deps toolchain
	$(BIN)/python -m hack.bench.run --quick $(BENCH)

## Remove the virtualenv and caches (the toolchain cache outside the repo stays)
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

include hack/cluster.mk

# --- container images (hack/image; issue 8) -------------------------------------------------------------
.PHONY: image

## Build the operator/router image from the Dockerfile with buildah (no Docker daemon), check it, print its size
image: node-deps
	hack/image build
	hack/image check
	@echo "image $$(hack/image name): $$(hack/image size)"
