"""The loop run by a real ``dagster-daemon`` on the PostgreSQL instance.

A device shift begins on the day before the newest partition. The days before it are built
in-process by ``make scenario`` (random policy, first model, champion serving) on a fresh PostgreSQL
database with the repository's ``dagster.yaml`` (in the background from the tier's first test on:
``tests/e2e/conftest.py``). Then the webserver and the daemon start, and the
schedule and sensors are switched on through the webserver's GraphQL API (what the UI's toggles
call). From there the daemon alone does the work:

* ``daily_refresh_schedule`` was switched on before its latest tick (its start time is set back, as
  for a daemon that was down at the tick): the scheduler catches the tick up and ingests the newest
  day. Its hour (``CLICKLOOP_REFRESH_HOUR``) is set half a day away from the session's start, so no
  tick passes while the history is built and the daemon runs, whenever the suite runs;
* ``events_after_ingest`` sees that run succeed and builds the shifted day's events, features,
  drift report and online metrics; ``serving_stats_after_events`` skips (the partition it would build,
  today's, does not exist yet), or, run between 00:00 UTC and the tick's hour, builds yesterday's
  statistics;
* ``drift_sensor``, switched on then, finds the drifted request context and launches one training
  run, tagged with the metric, its value and the threshold; the quality and staleness sensors skip,
  saying why.

Everything is read back from the instance in PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.scheduler.instigation import (
    ScheduleInstigatorData,
    TickStatus,
)

from tests.e2e.support import (
    REPO,
    VENV_BIN,
    DaemonHistory,
    DagsterWebserver,
    ManagedProcess,
    free_port,
    latest_tick,
    stop_all,
    wait_until,
)

LOCATION = "clickloop"
START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 300


def _instigator_start(api: DagsterWebserver, kind: str, name: str, repository: str) -> None:
    selector = {"repositoryLocationName": LOCATION, "repositoryName": repository, f"{kind}Name": name}
    if kind == "schedule":
        mutation = (
            "mutation($s: ScheduleSelector!) { startSchedule(scheduleSelector: $s) {"
            " __typename ... on ScheduleStateResult { scheduleState { status } }"
            " ... on PythonError { message } } }"
        )
        result = api.query(mutation, {"s": selector})["startSchedule"]
        assert result["__typename"] == "ScheduleStateResult", result
        assert result["scheduleState"]["status"] == "RUNNING"
    else:
        mutation = (
            "mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) {"
            " __typename ... on Sensor { sensorState { status } } ... on PythonError { message } } }"
        )
        result = api.query(mutation, {"s": selector})["startSensor"]
        assert result["__typename"] == "Sensor", result
        assert result["sensorState"]["status"] == "RUNNING"


def _state(instance: DagsterInstance, name: str) -> Any:
    states = [s for s in instance.all_instigator_state() if s.instigator_name == name]
    assert len(states) == 1, f"{name}: {len(states)} instigator states"
    return states[0]


def _ticks(instance: DagsterInstance, name: str) -> list[Any]:
    state = _state(instance, name)
    return list(instance.get_ticks(state.instigator_origin_id, state.selector_id))


def _runs(instance: DagsterInstance, job: str) -> list[Any]:
    return list(instance.get_runs(RunsFilter(job_name=job)))


def _finished_run(instance: DagsterInstance, job: str, **tags: str) -> Any:
    """The run of ``job`` carrying ``tags`` once it has finished (None before)."""
    for run in _runs(instance, job):
        if all(run.tags.get(k) == v for k, v in tags.items()) and run.is_finished:
            return run
    return None


def test_the_daemon_runs_the_refresh_and_a_retraining_on_postgres(
    daemon_history: DaemonHistory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    history = daemon_history
    tick, newest, shifted = history.tick, history.newest, history.shifted
    url, home, env = history.url, history.home, history.env
    now = datetime.now(UTC)
    # the refresh hour is half a day from the session's start: no tick passed meanwhile
    assert latest_tick(now, history.hour) == tick, (tick, latest_tick(now, history.hour))

    monkeypatch.setenv("DAGSTER_POSTGRES_URL", url)
    instance = DagsterInstance.from_config(str(home))
    try:
        assert _finished_run(instance, "ingest_job", **{"dagster/partition": shifted.isoformat()})
        assert not _runs(instance, "ingest_job") or not any(
            r.tags.get("dagster/partition") == newest.isoformat() for r in _runs(instance, "ingest_job")
        ), "the newest day must be left to the daemon"
        trainings_before = {r.run_id for r in _runs(instance, "training_job")}
        assert len(trainings_before) == 1  # the first model, trained during the history

        port = free_port()
        logs = tmp_path / "logs"
        processes: list[ManagedProcess] = []
        try:
            processes.append(
                ManagedProcess.start(
                    "webserver",
                    [
                        str(VENV_BIN / "dagster-webserver"),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-w",
                        str(REPO / "workspace.yaml"),
                    ],
                    env,
                    logs,
                )
            )
            api = DagsterWebserver(f"http://127.0.0.1:{port}")
            wait_until(api.server_info, START_TIMEOUT_S, "the webserver", alive=processes)
            wait_until(
                lambda: api.loaded_location(LOCATION), START_TIMEOUT_S, "the code location", alive=processes
            )
            repository = api.repository_name(LOCATION)

            # switched on from the UI's API before the daemon runs; the schedule as if it had been
            # on since before today's tick (the daemon then catches the missed tick up)
            for sensor_name in ("events_after_ingest", "serving_stats_after_events"):
                _instigator_start(api, "sensor", sensor_name, repository)
            _instigator_start(api, "schedule", "daily_refresh_schedule", repository)
            state = _state(instance, "daily_refresh_schedule")
            data_ = state.instigator_data
            assert isinstance(data_, ScheduleInstigatorData)
            instance.update_instigator_state(
                state.with_data(ScheduleInstigatorData(data_.cron_schedule, tick.timestamp() - 60, None))
            )

            processes.append(
                ManagedProcess.start(
                    "daemon",
                    [str(VENV_BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
                    env,
                    logs,
                )
            )

            # the schedule's catch-up tick ingests the newest day
            ingest = wait_until(
                lambda: _finished_run(instance, "ingest_job", **{"dagster/partition": newest.isoformat()}),
                RUN_TIMEOUT_S,
                f"the scheduled ingest of {newest}",
                interval_s=2,
                alive=processes,
            )
            assert ingest.status == DagsterRunStatus.SUCCESS, ingest
            assert ingest.tags.get("dagster/schedule_name") == "daily_refresh_schedule"
            schedule_ticks = _ticks(instance, "daily_refresh_schedule")
            assert [t.status for t in schedule_ticks] == [TickStatus.SUCCESS]
            assert schedule_ticks[0].timestamp == tick.timestamp()
            assert schedule_ticks[0].run_ids == [ingest.run_id]

            # the run-status sensor builds the shifted day: events, features, drift, online metrics
            events = wait_until(
                lambda: _finished_run(instance, "events_job", **{"dagster/partition": shifted.isoformat()}),
                RUN_TIMEOUT_S,
                f"the events of {shifted}",
                interval_s=2,
                alive=processes,
            )
            assert events.status == DagsterRunStatus.SUCCESS, events
            assert events.tags.get("dagster/sensor_name") == "events_after_ingest"
            # the retraining sensors go on now that the shifted day is monitored (the run-status
            # sensor's evaluation of the events run, checked next, is independent of them)
            for sensor_name in ("drift_sensor", "quality_sensor", "novelty_sensor", "staleness_sensor"):
                _instigator_start(api, "sensor", sensor_name, repository)
            # the statistics serving shifted + 2: today's when the sensor evaluates the events run
            # (no partition yet: a skip), yesterday's when it evaluates after midnight UTC, before the
            # tick's hour (a run of it). Which one is judged by the date of that evaluation, so a
            # midnight passing while the test runs changes the branch, not the verdict.
            serves = shifted + timedelta(days=2)

            def serving_stats_outcome() -> tuple[str, Any] | None:
                for t in _ticks(instance, "serving_stats_after_events"):
                    # (ticks before the events run ended skip with "empty result": nothing to see yet)
                    if t.status == TickStatus.SKIPPED and "does not exist yet" in (t.skip_reason or ""):
                        return "skipped", t
                stats = _finished_run(
                    instance,
                    "feature_stats_job",
                    **{
                        "dagster/partition": serves.isoformat(),
                        "dagster/sensor_name": "serving_stats_after_events",
                    },
                )
                return ("built", stats) if stats else None

            outcome, evidence = wait_until(
                serving_stats_outcome,
                RUN_TIMEOUT_S,
                "serving_stats_after_events to evaluate the events run",
                interval_s=2,
                alive=processes,
            )
            if outcome == "skipped":
                assert serves >= datetime.fromtimestamp(evidence.timestamp, UTC).date(), evidence
                assert newest.isoformat() not in evidence.skip_reason  # it names the events' day
                assert shifted.isoformat() in evidence.skip_reason
            else:
                created = instance.get_run_record_by_id(evidence.run_id).create_timestamp
                assert serves < created.astimezone(UTC).date(), (serves, created)
                assert evidence.status == DagsterRunStatus.SUCCESS, evidence

            training = wait_until(
                lambda: [r for r in _runs(instance, "training_job") if r.run_id not in trainings_before],
                RUN_TIMEOUT_S,
                "the drift sensor's training run",
                interval_s=2,
                alive=processes,
            )
            assert len(training) == 1, [r.tags for r in training]
            run = training[0]
            assert run.tags["clickloop/trigger"] == "drift_sensor"
            assert run.tags["clickloop/day"] == shifted.isoformat()
            assert run.tags["clickloop/metric"] == "context_drift_share"
            assert float(run.tags["clickloop/value"]) > float(run.tags["clickloop/threshold"])
            assert run.tags["dagster/run_key"] == f"drift_sensor:{shifted.isoformat()}"
            finished = wait_until(
                lambda: (r := instance.get_run_by_id(run.run_id)) and r.is_finished and r,
                RUN_TIMEOUT_S,
                "the training run to finish",
                interval_s=2,
                alive=processes,
            )
            assert finished.status == DagsterRunStatus.SUCCESS, finished

            drift_ticks = _ticks(instance, "drift_sensor")
            assert drift_ticks[0].status == TickStatus.SUCCESS
            assert drift_ticks[0].run_ids == [run.run_id]
            for sensor_name in ("quality_sensor", "novelty_sensor", "staleness_sensor"):
                ticks = wait_until(
                    lambda n=sensor_name: [t for t in _ticks(instance, n) if t.status != TickStatus.STARTED],
                    RUN_TIMEOUT_S,
                    f"{sensor_name} to evaluate",
                    interval_s=2,
                    alive=processes,
                )
                assert ticks[0].status == TickStatus.SKIPPED, ticks[0]
                assert "no threshold crossed" in ticks[0].skip_reason
        finally:
            stop_all(processes)
    finally:
        instance.dispose()

    # the same, straight from the database: every run of the day launched by the daemon succeeded
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pipeline_name, status FROM runs WHERE run_id = ANY(%s)",
            ([ingest.run_id, events.run_id, run.run_id],),
        )
        assert sorted(cur.fetchall()) == [
            ("events_job", "SUCCESS"),
            ("ingest_job", "SUCCESS"),
            ("training_job", "SUCCESS"),
        ]
