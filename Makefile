# Fresh machine: `make demo` (no server needed) and `make test` (uses the local PostgreSQL).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PGHOST ?= 127.0.0.1
PGPORT ?= 5432
PGUSER ?= postgres
export PGHOST PGPORT PGUSER

# The SQL linters of make lint: squawk (npm, pinned, project-local) and plpgsql_check (Debian).
SQUAWK_VERSION ?= 2.66.0
TOOLS          ?= .tools
SQUAWK         := $(TOOLS)/node_modules/.bin/squawk
PG_MAJOR       ?= 15
PLPGSQL_CHECK  := /usr/share/postgresql/$(PG_MAJOR)/extension/plpgsql_check.control
SUDO           := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL    := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

.PHONY: venv demo test test-long lint sql-lint-tools bench bench-quick bench-scale postgres clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/eventstore demo

# Start the local cluster if it is down; say what to do when there is no PostgreSQL at all.
postgres:
	@bash scripts/ensure-postgres.sh

test: venv postgres
	$(BIN)/pytest -q -m "not long"

test-long: venv postgres
	$(BIN)/pytest -q -m long

# Full run (about 8 min; 7.7–7.8 measured 2026-12-04): results in bench/results/, docs/benchmarks.md and charts regenerated.
bench: venv postgres
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/run_all.py

# Sizes, WAL and the hot-entity ceiling at 1M rows (docs/operations.md), then append, entity read
# and index sizes at 1M and 10M events (docs/scaling.md): about 15 minutes.
bench-scale: venv postgres
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/bench_schema.py --rows 1000000
	$(BIN)/python bench/bench_scale.py
	$(BIN)/python bench/report.py

# Small counts, results in a temp dir: only checks that every benchmark runs.
bench-quick: venv postgres
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/run_all.py --quick

# ruff, the import-linter contracts of pyproject.toml (layers, no cycles, asyncpg only in
# postgres/), and the SQL linters over migrations/ (scripts/lint-sql.sh: squawk, plpgsql_check
# on a throwaway database of the local PostgreSQL).
lint: venv postgres sql-lint-tools
	$(BIN)/ruff check eventstore tests bench examples
	$(BIN)/lint-imports
	SQUAWK=$(SQUAWK) PYTHON=$(BIN)/python bash scripts/lint-sql.sh

# The SQL linters, installed once: squawk from npm into $(TOOLS)/ (pinned; the npm package
# carries the binary in its per-platform dependency, nothing is downloaded at install time),
# plpgsql_check from Debian into the local PostgreSQL $(PG_MAJOR).
sql-lint-tools: $(TOOLS)/.squawk-$(SQUAWK_VERSION) $(PLPGSQL_CHECK)

$(TOOLS)/.squawk-$(SQUAWK_VERSION):
	@command -v npm >/dev/null || { echo "squawk needs Node.js and npm (Debian: apt-get install npm)" >&2; exit 1; }
	npm install --prefix $(TOOLS) --no-save --no-audit --no-fund --loglevel=error squawk-cli@$(SQUAWK_VERSION)
	$(SQUAWK) --version | grep -qx 'squawk $(SQUAWK_VERSION)'
	touch $@

$(PLPGSQL_CHECK):
	$(APT_INSTALL) postgresql-$(PG_MAJOR)-plpgsql-check \
	  || { $(SUDO) apt-get update -q && $(APT_INSTALL) postgresql-$(PG_MAJOR)-plpgsql-check; }

clean:
	rm -rf $(VENV) build dist storage .pytest_cache
