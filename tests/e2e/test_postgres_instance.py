"""The production instance: the repository's dagster.yaml on the local PostgreSQL, for real.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth, database ``test``), as on the
project's machines and CI; set CLICKLOOP_TEST_PG_URL to use another server.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psycopg2
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

from pipelines.definitions import build_defs
from pipelines.settings import Settings
from tests.e2e.support import PG_ADMIN_URL, REPO, PostgresDatabases

DAYS = ["2026-10-01", "2026-10-02"]


def small_settings(tmp: Path) -> Settings:
    """The repository's settings at a small scale, everything under ``tmp``."""
    return Settings(
        data_dir=tmp / "data",
        start_date=DAYS[0],
        resources={"simulator": {"requests_per_day": 4_000, "n_users": 5_000}},
    )


def test_materialization_with_the_instance_on_postgres(
    postgres_databases: PostgresDatabases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres_databases.create()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", url)

    instance = DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"

        defs = build_defs(small_settings(tmp_path))
        plan = [
            ("feature_stats_job", DAYS[0]),
            ("ingest_job", DAYS[0]),
            ("ingest_job", DAYS[1]),
            ("events_job", DAYS[0]),
        ]
        for job, day in plan:
            result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=day)
            assert result.success
        runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
        assert {r.job_name for r in runs} == {job for job, _ in plan} and len(runs) == len(plan)
        assert instance.get_latest_materialization_event(AssetKey("ad_events")) is not None
    finally:
        instance.dispose()

    # what Dagster wrote is really in PostgreSQL, readable by any client
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")
        assert cur.fetchone()[0] == 4
        cur.execute(
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
            " AND asset_key LIKE %s",
            ("%ad_events%",),
        )
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_CHECK_EVALUATION'")
        # 2 raw checks x 2 days + ad_events' + features' three (expectations, served scores, the
        # learned suite)
        assert cur.fetchone()[0] == 8


def test_deployment_creates_mlflows_database_once() -> None:
    """`clickloop-databases` (run by compose before MLflow starts) on the local server."""
    from pipelines.cli.databases import ensure_database

    name = f"clickloop_mlflow_{uuid.uuid4().hex[:10]}"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        assert ensure_database(url) is True
        assert ensure_database(url) is False  # a restart of the deployment finds it
        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_database()")
                assert cur.fetchone()[0] == name
        finally:
            conn.close()
    finally:
        admin = psycopg2.connect(PG_ADMIN_URL)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()
