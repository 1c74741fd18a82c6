# ploke-io-server — the two commands: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 2087
ROOT   ?= $(CURDIR)
TOKEN_FILE ?= $(ROOT)/.ploke-io/token

.PHONY: serve test lint typecheck unit bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the daemon over TCP on $(HOST):$(PORT), rooted at $(ROOT); token in $(TOKEN_FILE).
serve: $(STAMP)
	$(VENV)/bin/ploke-io-server --tcp --host $(HOST) --port $(PORT) \
		--root $(ROOT) --token-file $(TOKEN_FILE)

## Lint, type-check and run the whole test suite.
test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q

## Benchmarks (install the MCP filesystem server from npm on first use; bench_watch compares
## with watchman when it is installed: apt-get install watchman); figures to stdout
## and benchmarks/results-*.json. BENCH_TREE: a real source tree to measure as well.
BENCH_TREE ?= $(shell $(PY) -c "import mypy, os; print(os.path.dirname(mypy.__file__))" 2>/dev/null)
bench: $(STAMP)
	$(PY) benchmarks/bench_read.py --json benchmarks/results-generated.json
	$(PY) benchmarks/bench_read.py --tree $(BENCH_TREE) --json benchmarks/results-tree.json
	$(PY) benchmarks/bench_write.py --json benchmarks/results-write.json
	$(PY) benchmarks/bench_scan.py --tree $(BENCH_TREE) --json benchmarks/results-scan.json
	$(PY) benchmarks/bench_watch.py --json benchmarks/results-watch.json

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
