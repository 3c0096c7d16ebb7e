"""Faults survived, end to end, on small real runs of the loop's own jobs:

* kills: a run's process is killed with SIGKILL at seeded points inside ingest, the join,
  features, training and the registry update; after each kill no reader sees a partial file and
  the ``champion`` alias names only a complete version; the re-run's outputs equal an
  uninterrupted run's (every Parquet table, the quarantine, the landed logs, the model's bytes and
  metrics). One small loop (4 days, a tiny training) is built up to the faulted steps once; the
  uninterrupted reference finishes it, then the same state is restored at the same path (every
  path written into the data is then the same) and the faulted steps run there, each killed at
  its points in turn (every attempt re-runs from what the killed one left), then run to the end;
* two runs of one partition at once: both succeed, the result is one run's;
* PostgreSQL connections of a run dropped: a clear error, a re-run completes, nothing twice.

Every run is a child of one warm process (``tests/e2e/kill_runner.py``)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
import xgboost as xgb
from dagster import AssetKey

from tests.e2e.kill_runner import TRAINING_OPS, KillRunner
from tests.e2e.support import PG_ADMIN_URL, REPO, PostgresDatabases, process_env

DAYS = ["2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04"]
EVENT_ASSETS = ["ad_events", "features"]
PROMOTION = ["champion_model"]
#: how many times the run's PostgreSQL connections are caught and terminated (polled 5 ms apart)
DROP_ROUNDS = 3


@dataclass(frozen=True)
class Step:
    job: str
    partition: str | None = None
    assets: tuple[str, ...] | None = None

    @property
    def ops(self) -> dict[str, Any] | None:
        return TRAINING_OPS if self.job == "training_job" else None


def loop_steps() -> list[Step]:
    """The loop's runs in the order ``make run`` makes them (statistics, ingest, the events of the
    day before), then the training."""
    steps: list[Step] = []
    for i, day in enumerate(DAYS):
        if i < len(DAYS) - 1:
            steps.append(Step("feature_stats_job", day))
        steps.append(Step("ingest_job", day))
        if i:
            steps.append(Step("events_job", DAYS[i - 1], tuple(EVENT_ASSETS)))
    steps.append(Step("training_job"))
    return steps


STEPS = loop_steps()
#: the faulted steps: the last ingest, the last join + features, the training (+ registry)
FAULTED = STEPS[-3:]
#: Where each faulted step is killed, in order; each attempt starts from what the last one left.
#: ``point:n`` = the n-th time the attempt passes the point (clickloop/faults.py). Commits counted
#: per attempt: ingest of a fresh day lands 3 files (impressions, clicks, manifest), then each raw
#: table writes its quarantine, then its partition; the join writes its quarantine, then the
#: events; features 1 file; the training writes the training set, the test set, the split
#: manifest, the model, then (after the registry) its manifest and the evaluation.
KILLS: dict[Step, list[str]] = {
    FAULTED[0]: [
        "write.before_rename:1",  # the first landed file complete, not renamed
        "write.after_rename:2",  # two landed files in place, the day's manifest not yet
        "ingest.chunk:1",  # raw_impressions half written into its temporary file
        "write.after_rename:2",  # raw_impressions in place (quarantine first), not recorded
        "write.before_rename:4",  # raw_clicks complete in its temporary file
    ],
    FAULTED[1]: [
        "write.before_rename:1",  # the join's quarantine complete, not renamed
        "write.after_rename:1",  # the quarantine in place, the events not yet
        "write.after_rename:2",  # the events in place, not recorded, unchecked
        "write.before_rename:3",  # features complete in the temporary file
        "write.after_rename:3",  # features in place, unchecked
    ],
    FAULTED[2]: [
        "write.after_rename:1",  # the new training set in place, the test set not yet
        "write.before_rename:3",  # the split manifest complete, not renamed
        "training.fitted:1",  # the booster fitted, nothing saved
        "write.after_rename:4",  # the model file saved, nothing tracked
        "registry.run_created:1",  # an empty MLflow run
        "registry.model_logged:1",  # the model uploaded, the run not finished
        "registry.version_created:1",  # a version registered, the manifest still the old one
        "registry.promote.tags:1",  # the gate passed, tags written, nothing else
    ],
}
#: then the promotion alone is re-executed (as "re-execute from failure" would) and killed again
PROMOTION_KILLS = ["registry.promote.history:1", "registry.promote.done:1"]
#: what readers never look at: the stores of Dagster and MLflow, DuckDB's spill folder
SKIPPED = {"home", "mlflow", "monitoring", ".duckdb_tmp"}


def data_files(data: Path) -> Iterator[Path]:
    """Every file a reader may open: final names only (temporary files start with a dot)."""
    for path in sorted(data.rglob("*")):
        rel = path.relative_to(data)
        if path.is_file() and rel.parts[0] not in SKIPPED and not path.name.startswith("."):
            yield path


def temp_files(data: Path) -> list[Path]:
    return [p for p in data.rglob(".*.tmp") if p.is_file()]


def complete_content(path: Path) -> Any:
    """The whole content of a file, read as its format says (fails on a partial file)."""
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".ubj":
        booster = xgb.Booster(model_file=str(path))
        return bytes(booster.save_raw("ubj"))
    return path.read_bytes()


#: files whose content names a registry version or an MLflow run: complete, not compared
VERSIONED = ("manifest.json", "model_evaluation.json", "reliability-v")
#: rendered reports (the learned suite's Data Docs) carry the time they were rendered: complete, not compared
RENDERED = (".html",)


def assert_readers_see_complete_files(data: Path, reference: Path, where: str) -> int:
    """Every final file in ``data`` reads completely and (unless it names a version) equals the
    reference's file at the same path. Returns how many files were checked."""
    checked = 0
    for path in data_files(data):
        rel = path.relative_to(data)
        content = complete_content(path)
        checked += 1
        if any(v in path.name for v in VERSIONED) or path.suffix in RENDERED:
            continue
        expected = reference / rel
        assert expected.exists(), f"{where}: {rel} exists but the uninterrupted run has no such file"
        other = complete_content(expected)
        if path.suffix == ".parquet":
            assert content.equals(other), f"{where}: {rel} differs from the uninterrupted run's"
        else:
            assert content == other, f"{where}: {rel} differs from the uninterrupted run's"
    return checked


def champion_state(data: Path) -> dict[str, Any]:
    """The registry's ``champion``: its version and its model, read straight from MLflow's SQLite
    store (a fresh connection each time: MLflow's own client caches its engine per URI, and the
    test moves stores around). Asserts that a version the alias names is complete: READY, its run
    FINISHED, its model artifact loadable by XGBoost."""
    db = data / "mlflow" / "mlflow.db"
    if not db.exists():
        return {"version": None}
    with closing(sqlite3.connect(db)) as con:
        row = con.execute(
            "SELECT version FROM registered_model_aliases WHERE name = 'ctr_model' AND alias = 'champion'"
        ).fetchone()
        if row is None:
            return {"version": None}
        version = str(row[0])
        status, run_id = con.execute(
            "SELECT status, run_id FROM model_versions WHERE name = 'ctr_model' AND version = ?", (version,)
        ).fetchone()
        run_status, artifact_uri = con.execute(
            "SELECT status, artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)
        ).fetchone()
    assert status == "READY", f"champion v{version} is {status}"
    assert run_status == "FINISHED", f"champion v{version}'s run is {run_status}"
    model = Path(urlparse(artifact_uri).path) / "model" / "model.ubj"
    booster = xgb.Booster(model_file=str(model))
    return {"version": version, "model": bytes(booster.save_raw("ubj"))}


def accounting_adds_up(data: Path, day: str) -> dict[str, int]:
    """Every landed line of ``day`` is a valid row or a quarantined one, per raw table."""
    counts = {}
    for kind, table in (("impressions", "raw_impressions"), ("clicks", "raw_clicks")):
        lines = sum(
            gzip.decompress(f.read_bytes()).count(b"\n")
            for f in (data / "landing" / kind / f"date={day}").glob("*.gz")
        )
        valid = pq.read_metadata(data / table / f"date={day}" / "part-0.parquet").num_rows
        quarantined = pq.read_metadata(
            data / "quarantine" / table / f"date={day}" / "part-0.parquet"
        ).num_rows
        assert lines == valid + quarantined, f"{table} {day}: {lines} lines != {valid} + {quarantined}"
        counts[table] = lines
    return counts


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KillRunner]:
    logs = tmp_path_factory.mktemp("kill_logs")
    runner = KillRunner(logs, process_env())
    try:
        yield runner
    finally:
        runner.close()


@contextmanager
def mock_env(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in this process's environment for a moment (the instance's URL comes from it)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_ok(runner: KillRunner, loop: Path, step: Step) -> None:
    ended = runner.run(loop / "data", loop / "home", step.job, step.partition, step.assets, step.ops)
    assert ended.succeeded, f"{step} failed:\n{ended.tail()}"


def test_runs_killed_anywhere_rerun_to_the_same_outputs(runner: KillRunner, tmp_path: Path) -> None:
    loop, snapshot, reference = tmp_path / "loop", tmp_path / "snapshot", tmp_path / "reference"
    for step in STEPS[: -len(FAULTED)]:
        run_ok(runner, loop, step)
    shutil.copytree(loop, snapshot)
    for step in FAULTED:  # the uninterrupted reference
        run_ok(runner, loop, step)
    reference_champion = champion_state(loop / "data")
    assert reference_champion["version"] == "1"
    loop.rename(reference)
    shutil.copytree(snapshot, loop)  # the same state at the same path

    kills = checked = temps_seen = 0

    def killed(step: Step, fault: str, assets: tuple[str, ...] | None = None) -> None:
        nonlocal kills, checked, temps_seen
        ended = runner.run(
            loop / "data", loop / "home", step.job, step.partition, assets or step.assets, step.ops, fault
        )
        assert ended.killed, f"{step} was not killed at {fault} (exit {ended.exit}):\n{ended.tail()}"
        kills += 1
        where = f"after a kill at {fault} in {step.job} {step.partition or ''}"
        checked += assert_readers_see_complete_files(loop / "data", reference / "data", where)
        temps_seen = max(temps_seen, len(temp_files(loop / "data")))
        champion = champion_state(loop / "data")
        assert champion["version"] is None or champion["model"] == reference_champion["model"], where

    for step in FAULTED:
        for fault in KILLS[step]:
            killed(step, fault)
        if step.job == "training_job":  # the run died in the promotion: re-execute it alone
            promotion = Step("training_job", None, tuple(PROMOTION))
            for fault in PROMOTION_KILLS:
                killed(promotion, fault)
            run_ok(runner, loop, promotion)
        else:
            run_ok(runner, loop, step)

    # the outputs of the re-runs are the uninterrupted run's: every table, quarantine, landed file
    finals = assert_readers_see_complete_files(loop / "data", reference / "data", "after the re-runs")
    assert finals == sum(1 for _ in data_files(reference / "data"))
    for day in DAYS:
        assert accounting_adds_up(loop / "data", day) == accounting_adds_up(reference / "data", day)
    # the champion: a complete version whose model is the uninterrupted run's, byte for byte
    champion = champion_state(loop / "data")
    assert champion["model"] == reference_champion["model"]
    ours = json.loads((loop / "data" / "evaluation" / "model_evaluation.json").read_text())
    theirs = json.loads((reference / "data" / "evaluation" / "model_evaluation.json").read_text())
    assert ours["metrics"] == theirs["metrics"]
    assert ours["version"] == champion["version"]
    leftovers = temp_files(loop / "data")
    assert leftovers == [], f"temporary files of killed writers not removed by the re-runs: {leftovers}"
    print(
        f"\nkills: {kills} SIGKILLs ({sum(map(len, KILLS.values())) + len(PROMOTION_KILLS)} points), "
        f"{checked} file reads after them, {finals} final files identical to the uninterrupted "
        f"run's, champion v{champion['version']} (reference v1), "
        f"{temps_seen} temporary files of killed writers seen, all removed by the re-runs"
    )


def materializations(home: Path, asset: str, day: str) -> int:
    from dagster import AssetRecordsFilter, DagsterInstance

    instance = DagsterInstance.from_config(str(home))
    try:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[day]), limit=100
        ).records
        return len(records)
    finally:
        instance.dispose()


def test_two_runs_of_one_partition_at_once_are_safe(runner: KillRunner, tmp_path: Path) -> None:
    """Two runs materialize the same partitions at the same time (ingest, then the join): both
    succeed, and what they leave is exactly what one run leaves: each writer renames its own
    complete temporary file, so the last rename wins with the same content."""
    from dagster import DagsterInstance

    from pipelines.settings import ensure_dagster_home

    loop, twice = tmp_path / "loop", tmp_path / "twice"
    # the instance exists before the runs, as in production (two processes creating the same
    # SQLite schema at once would race, which is Dagster's own affair, not this test's)
    DagsterInstance.from_config(str(ensure_dagster_home(loop / "home"))).dispose()
    steps = [
        Step("ingest_job", DAYS[0]),
        Step("ingest_job", DAYS[1]),
        Step("events_job", DAYS[0], ("ad_events",)),
    ]
    for step in steps:
        both = runner.run_at_once(2, loop / "data", loop / "home", step.job, step.partition, step.assets)
        for ended in both:
            assert ended.succeeded, f"{step} run at once with another failed:\n{ended.tail()}"
    for asset, day in (("raw_impressions", DAYS[0]), ("raw_clicks", DAYS[1]), ("ad_events", DAYS[0])):
        assert materializations(loop / "home", asset, day) == 2
    assert temp_files(loop / "data") == []
    loop.rename(twice)
    for step in steps:  # one run each, at the same path
        run_ok(runner, loop, step)
    files = assert_readers_see_complete_files(twice / "data", loop / "data", "two runs at once")
    assert files == sum(1 for _ in data_files(loop / "data"))
    for day in DAYS[:1]:
        assert accounting_adds_up(twice / "data", day) == accounting_adds_up(loop / "data", day)


def test_postgres_connections_dropped_during_a_run(
    runner: KillRunner, tmp_path: Path, postgres_databases: PostgresDatabases
) -> None:
    """The run's connections to the instance's PostgreSQL are terminated again and again while it
    runs (pg_terminate_backend from here; the shared server keeps running): the run either
    completes or fails with an error that names the lost connection; a re-run completes; no
    materialization is recorded twice."""
    import psycopg2
    from dagster import DagsterInstance

    url = postgres_databases.create()
    database = url.rsplit("/", 1)[1]
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {"DAGSTER_POSTGRES_URL": url}
    with mock_env(env):
        instance = DagsterInstance.from_config(str(home))  # creates the schema
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        instance.dispose()

    terminated = 0
    stop = threading.Event()

    def drop_connections() -> None:
        nonlocal terminated
        admin = psycopg2.connect(PG_ADMIN_URL)
        admin.autocommit = True
        try:
            with admin.cursor() as cur, psycopg2.connect(url) as watch:
                watch.autocommit = True
                with watch.cursor() as runs:
                    started = False
                    while not started and not stop.wait(0.005):  # poll: the run exists
                        runs.execute("SELECT count(*) FROM runs")
                        started = runs.fetchone()[0] > 0
                # then drop its connections, again and again, until DROP_ROUNDS rounds caught one
                # or the run ended (Dagster opens a connection per write: they come and go)
                rounds = 0
                while rounds < DROP_ROUNDS and not stop.wait(0.005):
                    cur.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid() AND pid <> %s",
                        (database, watch.get_backend_pid()),
                    )
                    caught = cur.fetchone()[0]
                    terminated += caught
                    rounds += caught > 0
        finally:
            admin.close()

    dropper = threading.Thread(target=drop_connections)
    dropper.start()
    try:
        first = runner.run(tmp_path / "data", home, "ingest_job", DAYS[0], env=env)
    finally:
        stop.set()
        dropper.join()
    assert terminated > 0, "no connection of the run was seen to terminate"
    if not first.succeeded:
        log = first.tail(20_000)
        assert "terminat" in log or "connection" in log.lower(), f"unclear failure:\n{log[-3000:]}"
    again = runner.run(tmp_path / "data", home, "ingest_job", DAYS[0], env=env)
    assert again.succeeded, again.tail()

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT run_id, asset_key, partition, count(*) FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' GROUP BY 1, 2, 3 HAVING count(*) > 1"
        )
        assert cur.fetchall() == []  # nothing recorded twice within a run
        cur.execute("SELECT status, count(*) FROM runs GROUP BY 1")
        statuses = dict(cur.fetchall())
    assert statuses.get("SUCCESS", 0) >= 1
    print(
        f"\npostgres: {terminated} connections terminated during the first run "
        f"({'it completed' if first.succeeded else 'it failed clearly'}); runs by status {statuses}"
    )
