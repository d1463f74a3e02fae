# Every target does its own set-up, idempotently, so a fresh Debian machine needs only `make X`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The suite mostly waits on brokers, agents and real-time runs: two worker processes halve it
# on a 2-core machine. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2

.PHONY: setup demo test lint typecheck unit soak bench clean

$(STAMP): pyproject.toml
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y mosquitto mosquitto-clients; \
	  else echo "mosquitto is missing: run 'sudo apt-get install -y mosquitto mosquitto-clients'" >&2; exit 1; fi; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/gridtao demo --out demo-out

lint: $(STAMP)
	$(BIN)/ruff check gridtao safety bench tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy --strict gridtao tests

unit: $(STAMP)
	$(BIN)/pytest -q -n $(PYTEST_WORKERS)

test: lint typecheck unit

soak: $(STAMP)
	$(BIN)/pytest -q -m soak

bench: $(STAMP)
	$(BIN)/gridtao bench latency --json out/latency.json --plot out/latency.png

clean:
	rm -rf $(VENV) demo-out out .pytest_cache .mypy_cache .ruff_cache
