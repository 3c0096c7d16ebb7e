"""The pipelines tier reads the asset tier's simulated history (built once per session, see
``tests/assets/history.py``) and loads the code location once in a fresh interpreter with an
environment of its own (the tests never write ``os.environ``)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.assets.history import History, PriceBugLoop, shared_history, shared_price_bug_loop

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    """12 days through the repository's jobs, the first training, the champion serving."""
    return shared_history(tmp_path_factory)


@pytest.fixture(scope="session")
def price_bug(tmp_path_factory: pytest.TempPathFactory) -> PriceBugLoop:
    """Three days whose prices are logged in cents from the second on."""
    return shared_price_bug_loop(tmp_path_factory)


#: What a code-location process does with its environment, step by step; prints one JSON object.
CODE_LOCATION = """
import json, os
from pipelines import settings

calls = []
original = settings.Settings.from_env.__func__
settings.Settings.from_env = classmethod(lambda cls, environ=None: calls.append(1) or original(cls, environ))

import pipelines.definitions as module
from dagster import AssetKey
from dagster._core.definitions.reconstruct import repository_def_from_target_def
from dagster._core.workspace.autodiscovery import loadable_targets_from_loaded_module

out = {"reads_at_import": len(calls), "defs_type": type(module.defs).__name__}
(target,) = loadable_targets_from_loaded_module(module)  # what `dagster dev` and `dagster api grpc` do
repo = repository_def_from_target_def(target.target_definition)
out["reads_at_load"] = len(calls)
out["target"] = target.attribute
out["first_partition"] = repo.get_job("ingest_job").partitions_def.get_first_partition_key()
mapping = repo.asset_graph.get_partition_mapping(AssetKey("feature_stats"), AssetKey("ad_events"))
out["history_window"] = [mapping.start_offset, mapping.end_offset]
out["assets"] = sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys())

with module.build_resources(settings.Settings.from_env())["log_source"].process_config_and_initialize_cm() as sim:
    out["simulator"] = {
        "scenario": sim.scenario, "start": sim.scenario_start, "requests": sim.requests_per_day,
        "landing_dir": sim.landing_dir,
    }
# the deployment's environment changes: Dagster validates the new value when it resolves it
os.environ["CLICKLOOP_SCENARIO"] = "no_such_scenario"
try:
    with module.build_resources(settings.Settings.from_env())["log_source"].process_config_and_initialize_cm():
        out["bad_scenario"] = None
except Exception as exc:
    out["bad_scenario"] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def code_location(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The code location loaded by Dagster's own loader in a fresh interpreter whose environment
    sets the first day, the history window and the simulator (and none of this machine's clickloop,
    Dagster or MLflow settings); what it saw."""
    data = tmp_path_factory.mktemp("code_location")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLICKLOOP_", "DAGSTER_", "MLFLOW_"))}
    env.update(
        CLICKLOOP_DATA_DIR=str(data),
        CLICKLOOP_START_DATE="2026-09-01",
        CLICKLOOP_FEATURE_WINDOW_DAYS="3",
        CLICKLOOP_SCENARIO="ctr_drop",
        CLICKLOOP_SCENARIO_START="2026-10-03",
        CLICKLOOP_REQUESTS_PER_DAY="1234",
    )
    done = subprocess.run(
        [sys.executable, "-c", CODE_LOCATION], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-6000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["data_dir"] = str(data)
    return result
