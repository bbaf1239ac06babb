# Fresh machine: `make demo` (no server needed) and `make test` (uses the local PostgreSQL).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PGHOST ?= 127.0.0.1
PGPORT ?= 5432
PGUSER ?= postgres
export PGHOST PGPORT PGUSER

.PHONY: venv demo test test-long lint bench bench-quick postgres clean

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

# Full run (< 15 min): results in bench/results/, docs/benchmarks.md and charts regenerated.
bench: venv postgres
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/run_all.py

# Small counts, results in a temp dir: only checks that every benchmark runs.
bench-quick: venv postgres
	$(BIN)/python bench/run_all.py --quick

# ruff, and the import-linter contracts of pyproject.toml (layers, no cycles, asyncpg only in postgres/).
lint: venv
	$(BIN)/ruff check eventstore tests bench
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build dist storage .pytest_cache
