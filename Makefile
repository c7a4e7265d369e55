# kubemoe developer entry points. `make help` lists them.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SAMPLE ?= manifests/samples/mixtral-8x7b-p4de.yaml

.DEFAULT_GOAL := help
.PHONY: help install run demo demo-down test unit e2e lint crds crds-check clean

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
demo: install
	$(BIN)/python hack/demo.py

## Stop the demo's operator and the local cluster
demo-down:
	$(BIN)/python hack/demo.py down

## Every test: unit tests, then e2e tests against the local control plane (built once, then cached)
test: install toolchain
	$(BIN)/pytest

## Unit tests only (no cluster)
unit: install
	$(BIN)/pytest -m "not e2e"

## e2e tests only (starts the local cluster unless KUBECONFIG is set)
e2e: install toolchain
	$(BIN)/pytest -m e2e

## ruff, mypy and the import-layer contracts
lint: install
	$(BIN)/ruff check operator tests
	$(BIN)/ruff format --check operator tests
	$(BIN)/mypy
	$(BIN)/lint-imports

## Regenerate crds/ from the pydantic models
crds: install
	$(BIN)/kubemoe crds --output-dir crds

## Fail when crds/ differs from what the models generate
crds-check: install
	$(BIN)/pytest -q tests/unit/test_crds.py

## Remove the virtualenv and caches (the toolchain cache outside the repo stays)
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

include hack/cluster.mk
