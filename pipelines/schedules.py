"""When the loop runs by itself: the daily refresh and the weekly retraining."""

from dagster import DefaultScheduleStatus, ScheduleDefinition, build_schedule_from_partitioned_job

from pipelines.jobs import TRAINING_TAGS, LoopJobs


def build_schedules(jobs: LoopJobs, refresh_hour: int) -> list[ScheduleDefinition]:
    """The daily refresh (at ``refresh_hour`` UTC, the settings' own: yesterday's logs) and the
    weekly retraining (Mondays 03:00 UTC), both off until a person turns them on."""
    daily = build_schedule_from_partitioned_job(
        jobs.ingest,
        name="daily_refresh_schedule",
        hour_of_day=refresh_hour,
        description=f"{refresh_hour:02d}:00 UTC (CLICKLOOP_REFRESH_HOUR): ingest yesterday's logs; "
        "the refresh chain then builds the events, features, drift and online metrics of the day "
        "before (its attribution window just closed) and the statistics today's serving uses.",
        default_status=DefaultScheduleStatus.STOPPED,
    )
    weekly = ScheduleDefinition(
        name="weekly_retraining_schedule",
        job=jobs.training,
        cron_schedule="0 3 * * 1",
        execution_timezone="UTC",
        tags=TRAINING_TAGS,
        description="Mondays 03:00 UTC: retrain on the latest window and let the gate decide.",
        default_status=DefaultScheduleStatus.STOPPED,
    )
    return [daily, weekly]
