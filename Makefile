# ploke-io-server — the two commands: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 2087
ROOT   ?= $(CURDIR)
TOKEN_FILE ?= $(ROOT)/.ploke-io/token

.PHONY: serve test lint typecheck unit editors vscode nvim-deps node-deps bench install clean

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

## Lint, type-check and run the whole test suite (the editor integrations included).
test: $(STAMP) lint typecheck unit editors

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP) nvim-deps
	$(VENV)/bin/pytest -q

## The VS Code extension: npm ci, tsc, node tests (one drives the real server).
editors: vscode
vscode: $(STAMP) node-deps
	$(MAKE) -C editors/vscode test PLOKE_PYTHON=$(abspath $(PY))

## Debian packages the tests need when they are missing: neovim (tests/test_nvim.py drives a
## headless Neovim), node and npm (the VS Code extension's tests).
nvim-deps:
	@command -v nvim >/dev/null 2>&1 || { $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq neovim >/dev/null; }
node-deps:
	@command -v npm >/dev/null 2>&1 || { $(APT_UPDATE) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
APT_UPDATE = { [ -f /tmp/.ploke-apt-updated ] || { apt-get update -qq && touch /tmp/.ploke-apt-updated; }; }

## Benchmarks (install the MCP filesystem server from npm on first use; bench_watch compares
## with watchman when it is installed: apt-get install watchman); figures to stdout
## and benchmarks/results-*.json. BENCH_TREE: a real source tree to measure as well.
BENCH_TREE ?= $(shell $(PY) -c "import mypy, os; print(os.path.dirname(mypy.__file__))" 2>/dev/null)
bench: $(STAMP)
	$(PY) benchmarks/bench_read.py --json benchmarks/results-generated.json
	$(PY) benchmarks/bench_read.py --tree $(BENCH_TREE) --json benchmarks/results-tree.json
	$(PY) benchmarks/bench_write.py --json benchmarks/results-write.json
	$(PY) benchmarks/bench_write.py --journaled-ext4 --json benchmarks/results-write-journaled.json
	$(PY) benchmarks/bench_scan.py --tree $(BENCH_TREE) --json benchmarks/results-scan.json
	$(PY) benchmarks/bench_watch.py --json benchmarks/results-watch.json

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
