PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
CONFIG ?= config.example.yaml

.PHONY: serve test bench install dev clean semantic search-bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

# The dev set includes the semantic ranker's extra, so its tests run too: PyTorch's CPU build
# first (a plain `torch`, asked for by sentence-transformers, would be a CUDA build of several GB).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q 'torch==2.13.0'
	$(BIN)/pip install -q -e '.[dev,semantic]'
	touch $(VENV)/.installed $@

tests/node_modules/.installed: tests/package.json tests/package-lock.json
	cd tests && npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed

dev: $(STAMP) tests/node_modules/.installed

serve: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/manifold serve --config $(CONFIG) --transport http

test: dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

# The optional semantic ranker for `make serve`'s install (the dev set has it already).
semantic: $(VENV)/.installed
	$(BIN)/pip install -q 'torch==2.13.0'
	$(BIN)/pip install -q -e '.[semantic]'

search-bench: $(STAMP)
	$(BIN)/python bench/search_quality.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) tests/node_modules
