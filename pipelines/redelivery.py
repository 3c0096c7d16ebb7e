"""Logs delivered again: a day's landing files changed after the day was ingested.

Every raw materialization records the fingerprint of the files it read (names, sizes, modification
times; :func:`clickloop.landing.fingerprint`) as metadata and as its data version. ``redelivery_sensor``
compares each ingested day's recorded fingerprint with the files in the landing folder now, and
re-ingests a day whose delivery changed; when that run succeeds, ``events_after_redelivery``
rebuilds the events (with their features, drift and online metrics) of every day that reads it:
D-1 (its late clicks), D and D+1 (its duplicates across midnight), those that were built. The new
data version marks whatever else was built on the day stale in the UI.
"""

from dataclasses import dataclass
from datetime import date

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_status_sensor,
    sensor,
)

from assets.events import AD_EVENTS
from assets.partitions import Calendar
from assets.raw_logs import LANDING_FINGERPRINT, RAW_TABLES
from clickloop.contract import LogContract
from clickloop.landing import MissingPartitionError, fingerprint
from pipelines.jobs import LoopJobs
from resources.landing import LogSource

#: Re-ingest runs carry this tag (its value: the raw tables whose delivery changed).
REDELIVERY_TAG = "clickloop/redelivered"
#: Materialization records read per raw table and tick (the newest first).
RECORD_LIMIT = 5_000


@dataclass(frozen=True)
class Redelivery:
    """A day whose landing files differ from those its ingest read."""

    day: str
    tables: tuple[str, ...]
    fingerprint: str


def recorded_fingerprints(instance: DagsterInstance, table: str) -> dict[str, str]:
    """The fingerprint of the newest materialization of every partition of a raw table."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(table)), limit=RECORD_LIMIT, ascending=False
    ).records
    found: dict[str, str] = {}
    for record in records:
        materialization = record.asset_materialization
        key = materialization.partition if materialization else None
        if key is None or key in found:
            continue
        value = materialization.metadata.get(LANDING_FINGERPRINT)
        if value is not None:
            found[key] = str(getattr(value, "value", value))
    return found


def find_redeliveries(
    instance: DagsterInstance, log_source: LogSource, contract: LogContract
) -> tuple[list[Redelivery], list[str]]:
    """Days whose delivery changed since their ingest, and days whose folder is gone (a note)."""
    changed: dict[str, list[tuple[str, str]]] = {}
    missing: list[str] = []
    for kind in contract.log_kinds:
        table = RAW_TABLES[kind]
        for day, recorded in sorted(recorded_fingerprints(instance, table).items()):
            try:
                now = fingerprint(log_source.partition_files(kind, date.fromisoformat(day)))
            except MissingPartitionError as exc:
                missing.append(f"{table} {day}: {exc}")
                continue
            if now != recorded:
                changed.setdefault(day, []).append((table, now))
    redeliveries = [
        Redelivery(day, tuple(t for t, _ in found), "".join(fp[:8] for _, fp in found))
        for day, found in sorted(changed.items())
    ]
    return redeliveries, missing


def redelivery_request(redelivery: Redelivery) -> RunRequest:
    """Re-ingest the day; the run key changes with the delivery, so a day delivered a third time
    is ingested again."""
    return RunRequest(
        run_key=f"redelivery:{redelivery.day}:{redelivery.fingerprint}",
        partition_key=redelivery.day,
        tags={REDELIVERY_TAG: ",".join(redelivery.tables)},
    )


def events_to_rebuild(instance: DagsterInstance, calendar: Calendar, day: str) -> list[str]:
    """The days whose events read the raw logs of ``day`` (D-1, D, D+1) and were built."""
    built = instance.get_materialized_partitions(AssetKey(AD_EVENTS))
    around = [calendar.neighbour(day, offset) for offset in (-1, 0, 1)]
    return [k for k in around if k is not None and k in built]


def redelivery_sensors(calendar: Calendar, contract: LogContract, jobs: LoopJobs) -> list[SensorDefinition]:
    """``redelivery_sensor`` (re-ingest a day delivered again) and ``events_after_redelivery``."""

    @sensor(
        name="redelivery_sensor",
        job=jobs.ingest,
        minimum_interval_seconds=300,
        default_status=DefaultSensorStatus.STOPPED,
        description="Re-ingest a day whose landing files were added to, replaced or removed after "
        "it was ingested (its delivery fingerprint changed).",
    )
    def _redelivery(context: SensorEvaluationContext, log_source: LogSource) -> list[RunRequest] | SkipReason:
        redeliveries, missing = find_redeliveries(context.instance, log_source, contract)
        note = (
            f" ({len(missing)} ingested day(s) have no files now: {'; '.join(missing[:3])})"
            if missing
            else ""
        )
        if not redeliveries:
            return SkipReason(f"every ingested day's delivery is unchanged{note}")
        for r in redeliveries:
            context.log.info(f"{r.day}: {', '.join(r.tables)} delivered again: re-ingesting{note}")
        return [redelivery_request(r) for r in redeliveries]

    @run_status_sensor(
        name="events_after_redelivery",
        run_status=DagsterRunStatus.SUCCESS,
        monitored_jobs=[jobs.ingest],
        request_job=jobs.events,
        default_status=DefaultSensorStatus.STOPPED,
        description="After a day delivered again is re-ingested, rebuild the events of the days "
        "that read it (D-1, D, D+1, those that were built).",
    )
    def _events_after(context: RunStatusSensorContext) -> list[RunRequest] | SkipReason:
        run = context.dagster_run
        day = run.tags.get("dagster/partition")
        if REDELIVERY_TAG not in run.tags or day is None:
            return SkipReason("not a re-ingest of logs delivered again")
        days = events_to_rebuild(context.instance, calendar, day)
        if not days:
            return SkipReason(f"no events built on {day} yet")
        return [
            RunRequest(
                run_key=f"redelivery-events:{k}:{run.run_id}", partition_key=k, tags={REDELIVERY_TAG: day}
            )
            for k in days
        ]

    return [_redelivery, _events_after]
