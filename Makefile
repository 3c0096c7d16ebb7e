# clickloop: `make run` and `make test` are all the set-up a fresh machine with Python 3.11 needs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export CLICKLOOP_DATA_DIR ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(CLICKLOOP_DATA_DIR)/dagster_home

.PHONY: install run test ui bench rollback scenario clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m pipelines.run

test: $(STAMP)
	@bash tests/ensure_chromium.sh
	$(PY) -m pytest $(PYTEST_ARGS)

ui: $(STAMP)
	$(PY) -c "from pipelines.settings import ensure_dagster_home; ensure_dagster_home()"
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p $${PORT:-3000} -w workspace.yaml

rollback: $(STAMP)
	$(PY) -m pipelines.rollback

# make scenario name=device_shift [SCENARIO_ARGS="--days 20"]
scenario: $(STAMP)
	$(PY) -m pipelines.scenario $(name) $(SCENARIO_ARGS)

bench: $(STAMP)
	$(PY) -m pipelines.bench $(BENCH_ARGS)

clean:
	rm -rf $(CLICKLOOP_DATA_DIR)
