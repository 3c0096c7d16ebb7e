"""The schedules, evaluated in-process at their ticks: the daily refresh ingests yesterday's logs,
the weekly retraining runs the training job; both are off until a person turns them on."""

from datetime import UTC, datetime

import pytest
from dagster import DagsterInstance, DefaultScheduleStatus, build_schedule_context

from pipelines.definitions import build_defs
from pipelines.settings import Settings


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory):
    return build_defs(Settings(data_dir=tmp_path_factory.mktemp("schedules"))).get_repository_def()


def tick(repo, name: str, at: datetime):
    schedule = repo.get_schedule_def(name)
    with DagsterInstance.ephemeral() as instance:
        with build_schedule_context(
            instance=instance, scheduled_execution_time=at, repository_def=repo
        ) as ctx:
            return schedule.evaluate_tick(ctx)


def test_daily_refresh_ingests_yesterday_at_one_utc(repo) -> None:
    schedule = repo.get_schedule_def("daily_refresh_schedule")
    assert schedule.job_name == "ingest_job"
    assert schedule.cron_schedule == "0 1 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    (request,) = tick(repo, "daily_refresh_schedule", datetime(2026, 10, 6, 1, tzinfo=UTC)).run_requests
    assert request.partition_key == "2026-10-05"
    (first,) = tick(repo, "daily_refresh_schedule", datetime(2026, 10, 2, 1, tzinfo=UTC)).run_requests
    assert first.partition_key == "2026-10-01"  # the first day with logs


def test_weekly_retraining_runs_the_training_job_on_mondays(repo) -> None:
    schedule = repo.get_schedule_def("weekly_retraining_schedule")
    assert schedule.job_name == "training_job"
    assert schedule.cron_schedule == "0 3 * * 1" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    (request,) = tick(repo, "weekly_retraining_schedule", datetime(2026, 10, 5, 3, tzinfo=UTC)).run_requests
    assert request.tags["clickloop/kind"] == "training"  # one training at a time (dagster.yaml)
    assert request.partition_key is None


def test_the_refresh_hour_is_a_setting(tmp_path) -> None:
    """A deployment whose logs close later refreshes later: the same partition, at its own hour."""
    settings = Settings.from_env({"CLICKLOOP_DATA_DIR": str(tmp_path), "CLICKLOOP_REFRESH_HOUR": "13"})
    late = build_defs(settings).get_repository_def()
    assert late.get_schedule_def("daily_refresh_schedule").cron_schedule == "0 13 * * *"
    assert "13:00 UTC" in late.get_schedule_def("daily_refresh_schedule").description
    (request,) = tick(late, "daily_refresh_schedule", datetime(2026, 10, 6, 13, tzinfo=UTC)).run_requests
    assert request.partition_key == "2026-10-05"
