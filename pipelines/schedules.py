"""When the loop runs by itself: the daily refresh and the weekly retraining."""

from dagster import DefaultScheduleStatus, ScheduleDefinition, build_schedule_from_partitioned_job

from pipelines.jobs import TRAINING_TAGS, LoopJobs


def build_schedules(jobs: LoopJobs) -> list[ScheduleDefinition]:
    """The daily refresh (01:00 UTC, yesterday's logs) and the weekly retraining (Mondays 03:00 UTC),
    both off until a person turns them on."""
    daily = build_schedule_from_partitioned_job(
        jobs.ingest,
        name="daily_refresh_schedule",
        hour_of_day=1,
        description="01:00 UTC: ingest yesterday's logs; the refresh chain then builds the events, "
        "features, drift and online metrics of the day before (its attribution window just closed) "
        "and the statistics today's serving uses.",
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
