# HealthHub — `make run` serves the hub with demo data; `make test` runs the test suite.
# Set HEALTHHUB_TEST_DATABASE_URL=postgresql://… to run the suite on PostgreSQL too.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
PYTEST_ARGS ?=
# `make bench`: ingest, HTTP latency at two scales and EXPLAIN plans, on SQLite and PostgreSQL
# (BENCH_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test), then the hospital-ingest
# benchmark (HL7 v2 over MLLP, a CSV case-report file, patient matching: bench/hospital.py, its
# options in HOSPITAL_ARGS, e.g. --csv-rows 100000), then the statistics and export benchmark, then the
# load benchmark; see bench/RESULTS.md.
BENCH_ARGS ?= --db both --scales 10000,100000
HOSPITAL_ARGS ?= --db postgres
# bench/stats.py: grouped counts over 100k and 1M generated Observations (issue 6's target: ≤ 1 s).
STATS_ARGS ?= --db postgres
# bench/load.py: a 60/30/10 read/write/public-health mix at 1M resources with 1, 2 and 4 workers.
LOAD_ARGS ?=

.PHONY: run test install lint clean bench fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the declared dependencies change.
$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,postgres]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/healthhub db upgrade
	$(BIN)/healthhub demo
	$(BIN)/healthhub serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# `make fuzz`: tests/system/test_hostile_input.py with 2000 new random examples per fuzz test (make test runs 25, the same each time).
fuzz: install
	HEALTHHUB_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest tests/system/test_hostile_input.py $(PYTEST_ARGS)

lint: install
	$(BIN)/python -m pip install --quiet ruff==0.17.6 mypy==2.4.1
	$(BIN)/ruff check healthhub tests
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/hospital.py $(HOSPITAL_ARGS)
	$(BIN)/python bench/stats.py $(STATS_ARGS)
	$(BIN)/python bench/load.py $(LOAD_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
