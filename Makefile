# Two commands on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make run    bootstrap .venv and start the proxy (ARGS="--upstream http://host:11434" to pass flags)
#   make test   bootstrap .venv and the Debian packages the tests need, lint, type-check, run the suite
#   make bench  the side-by-side benchmark (benchmarks/RESULTS.md)
#   make ab     what a change buys: AB_ARGS="c9a51a8 HEAD" compares revisions in paired bursts
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-stamp
STAMP := $(VENV)/.test-stamp
ARGS ?=

.PHONY: run test lint typecheck pytest system-deps node-tools bench ab demo clean

# What running needs, and nothing more (make run); the test toolchain comes on top (make test).
$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); \
		if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); \
		else false; fi; } || { echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu install python3-venv (sudo apt-get install python3-venv)"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[fast]'
	@touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,fast]'
	@touch $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/ollama-metrics-proxy $(ARGS)

system-deps:
	@sh scripts/install-system-deps.sh

# dclint (the compose-file linter) comes from npm, into .tools/ (ignored by git).
DCLINT := .tools/node_modules/.bin/dclint
node-tools: $(DCLINT)
$(DCLINT):
	@command -v npm >/dev/null 2>&1 || { echo "note: npm is missing, so dclint cannot be installed (apt-get install npm)"; exit 0; }; \
		npm install --prefix .tools --no-audit --no-fund --silent dclint@3.1.0 >/dev/null

lint: $(STAMP)
	$(BIN)/ruff check ollama_metrics_proxy tests dashboards examples benchmarks demo

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-deps node-tools
	$(BIN)/python -m pytest -q -ra

test: lint typecheck pytest

# The side-by-side benchmark (not part of make test): direct, bare passthrough, this proxy, nginx if installed.
# BENCH_ARGS="--rounds 1 --seconds 2" for a quick look.
BENCH_ARGS ?=
bench: $(STAMP)
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || [ "$$(id -u)" -ne 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null; } || \
		echo "note: nginx could not be installed; the benchmark runs without it"
	$(BIN)/python -m benchmarks.run --markdown benchmarks/latest.md $(BENCH_ARGS)

ab: $(STAMP)
	$(BIN)/python -m benchmarks.ab $(or $(AB_ARGS),HEAD)

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache

# Try it without Ollama: a stand-in Ollama, the proxy, and a little varied traffic (Ctrl-C stops).
# ARGS="--port 11435 --metrics-port 9934 --seconds N" to change them.
demo: $(RUN_STAMP)
	$(BIN)/python -m demo.run $(ARGS)
