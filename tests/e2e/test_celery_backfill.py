"""Runs spread over Celery workers: the code location with ``executor=celery`` on the local
RabbitMQ, two ``dagster-celery worker`` processes, a fresh PostgreSQL database as the Dagster
instance; a backfill of several daily partitions of ``ingest_job`` (independent days) (one run per partition, launched
together) runs its steps on both workers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, EventRecordsFilter

from tests.e2e.support import (
    REPO,
    TEST_REQUESTS_PER_DAY,
    VENV_BIN,
    ManagedProcess,
    PostgresDatabases,
    process_env,
    stop_all,
    wait_until,
)

pytestmark = pytest.mark.e2e

BROKER = os.getenv("CLICKLOOP_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
START_DATE = "2026-10-01"
KEYS = ["2026-10-01", "2026-10-02", "2026-10-03"]
WORKERS = ("clickloop-a", "clickloop-b")
TIMEOUT_S = 240


def test_a_backfill_runs_on_two_celery_workers(postgres_databases: PostgresDatabases, tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    url = postgres_databases.create()
    (home / "dagster.yaml").write_text(
        f"storage:\n  postgres:\n    postgres_url: {url}\ntelemetry:\n  enabled: false\n"
    )
    env = process_env(
        DAGSTER_HOME=str(home),
        CLICKLOOP_DATA_DIR=str(tmp_path / "data"),
        CLICKLOOP_START_DATE=START_DATE,
        CLICKLOOP_EXECUTOR="celery",
        CLICKLOOP_CELERY_BROKER=BROKER,
        CLICKLOOP_REQUESTS_PER_DAY=TEST_REQUESTS_PER_DAY,
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=str(REPO),
    )
    logs = tmp_path / "logs"
    processes: list[ManagedProcess] = []
    try:
        for name in WORKERS:
            argv = [str(VENV_BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
            argv += ["-y", str(REPO / "deploy" / "celery" / "worker.yaml"), "-n", name, "--", "-c", "1"]
            processes.append(ManagedProcess.start(name, argv, env, logs))
        for worker in processes:
            wait_until(
                lambda w=worker: " ready." in w.log_path.read_text(errors="replace"),
                TIMEOUT_S,
                f"celery worker {worker.name}",
                alive=processes,
            )
        runs = []
        for key in KEYS:  # the backfill: one run per partition, all at once
            argv = [str(VENV_BIN / "dagster"), "job", "execute", "-m", "pipelines.definitions", "-a", "defs"]
            argv += ["-j", "ingest_job", "--tags", json.dumps({"dagster/partition": key})]
            runs.append(ManagedProcess.start(f"run-{key}", argv, env, logs))
        wait_until(
            lambda: all(not r.alive() for r in runs), TIMEOUT_S, "the backfill's runs", alive=processes
        )
        for run in runs:
            assert run.popen.returncode == 0, run.log_tail()
    finally:
        stop_all(processes)

    with DagsterInstance.from_config(str(home)) as instance:
        for table in ("raw_impressions", "raw_clicks"):
            done = instance.get_materialized_partitions(AssetKey(table))
            assert set(KEYS) <= done, (table, done)
        records = instance.get_event_records(EventRecordsFilter(DagsterEventType.ENGINE_EVENT), limit=1000)
        hosts = {
            str(r.event_log_entry.dagster_event.engine_event_data.metadata["Celery worker"].value)
            for r in records
            if r.event_log_entry.dagster_event
            and "Celery worker" in (r.event_log_entry.dagster_event.engine_event_data.metadata or {})
        }
    assert {h.split("@")[0] for h in hosts} == set(WORKERS), hosts
