# The two commands: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.core

## make demo: run the example orders pipeline end to end on local Ray, SQLite and local files
demo: $(VENV)/.core
	$(BIN)/python examples/demo.py

## make test: install the dev extra and Chromium, start PostgreSQL, run every test
test: $(VENV)/.dev
	bash scripts/install_chromium.sh
	ETL_TEST_PG_URL="$$(bash scripts/start_postgres.sh)" $(BIN)/python -m pytest -q

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@ $(VENV)/.dev $(VENV)/.core

## make bench: the side-by-side benchmarks (prints rows/s or events/s and ratios)
bench: $(VENV)/.bench
	$(BIN)/python benchmarks/batch_csv_to_parquet.py
	$(BIN)/python benchmarks/stream_window.py
	ETL_BENCH_PG_URL="$$(bash scripts/start_postgres.sh)" $(BIN)/python benchmarks/warehouse_merge.py
	ETL_BENCH_PG_URL="$$(bash scripts/start_postgres.sh)" $(BIN)/python benchmarks/postgres_sink.py
	ETL_BENCH_PG_URL="$$(bash scripts/start_postgres.sh)" $(BIN)/python benchmarks/cdc_mirror.py
	$(BIN)/python benchmarks/service_load.py
	$(BIN)/python benchmarks/recovery.py

clean:
	rm -rf $(VENV) .etl_actors examples/data benchmarks/.data
