"""The default executor for real: a run launched the way the UI and the daemon launch it (the code
location loaded from its module, ``dagster job execute``) runs each step in its own process,
forked from a server that imported the code location and the libraries most steps need once
(``pipelines.definitions.FORKSERVER_PRELOAD``)."""

from __future__ import annotations

import json
from pathlib import Path

from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, EventRecordsFilter

from pipelines.settings import ensure_dagster_home
from tests.e2e.support import VENV_BIN, process_env, run_command

DAY = "2026-10-01"
TIMEOUT_S = 300


def test_a_launched_run_forks_a_process_per_step(tmp_path: Path) -> None:
    home = ensure_dagster_home(tmp_path / "dagster_home")
    env = process_env(
        DAGSTER_HOME=str(home),
        CLICKLOOP_DATA_DIR=str(tmp_path / "data"),
        CLICKLOOP_START_DATE=DAY,
        CLICKLOOP_REQUESTS_PER_DAY="2000",
    )
    argv = [str(VENV_BIN / "dagster"), "job", "execute", "-m", "pipelines.definitions", "-a", "defs"]
    argv += ["-j", "ingest_job", "--tags", json.dumps({"dagster/partition": DAY})]
    done = run_command(argv, env, tmp_path / "run.log", TIMEOUT_S)
    assert done.returncode == 0, done.tail()

    with DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.SUCCESS
        for table in ("raw_impressions", "raw_clicks"):
            assert DAY in instance.get_materialized_partitions(AssetKey(table))
        starts = instance.get_event_records(EventRecordsFilter(DagsterEventType.STEP_START), limit=100)
        engine = instance.get_event_records(EventRecordsFilter(DagsterEventType.ENGINE_EVENT), limit=100)
    step_pids = {r.event_log_entry.step_key: r.event_log_entry.dagster_event.pid for r in starts}
    assert set(step_pids) >= {"raw_impressions", "raw_clicks"} and len(step_pids) >= 4
    assert len(set(step_pids.values())) == len(step_pids)  # a process per step
    parents = [
        r.event_log_entry.dagster_event.pid
        for r in engine
        if "multiprocess executor" in r.event_log_entry.message
    ]
    assert parents and not set(parents) & set(step_pids.values())
