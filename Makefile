# Two commands on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make run    bootstrap .venv and start the proxy (ARGS="--upstream http://host:11434" to pass flags)
#   make test   bootstrap .venv and the Debian packages the tests need, lint, type-check, run the suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: run test lint typecheck pytest system-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu install python3-venv"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,fast]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/ollama-metrics-proxy $(ARGS)

system-deps:
	@sh scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check ollama_metrics_proxy tests dashboards examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -ra

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
