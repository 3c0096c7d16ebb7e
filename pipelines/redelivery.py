"""Logs delivered again: a day's landing files changed after the day was ingested, or after its
ingest failed on them.

Every raw materialization records the fingerprint of the files it read (names, sizes, modification
times; :func:`clickloop.landing.fingerprint`) as metadata and as its data version; an ingest that
stops on a file that cannot be ingested as delivered (a gzip file cut off in transfer, a Parquet file
without a required column: :class:`clickloop.lines.LogFileError`) records it in its failure, and
one that found no files for the day (not delivered yet) records the fingerprint of no files.
``redelivery_sensor`` compares each day's newest attempt with the files in the landing folder now,
and ingests a day whose delivery changed (a day that failed is left alone until its files change:
the same broken file is not read twice); when that run succeeds, ``events_after_redelivery``
rebuilds the events (with their features, drift and online metrics) of every day that reads it,
through the events' partition mappings: D and D+1 for impressions (duplicates across midnight),
D-1 … D+1 for clicks (late clicks), those that were built. The new
data version marks whatever else was built on the day stale in the UI.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_status_sensor,
    sensor,
)

from assets.events import AD_EVENTS, EVENTS_READ
from assets.partitions import Calendar
from assets.raw_logs import FAILED_DAY, LANDING_FINGERPRINT, RAW_TABLES
from clickloop.contract import LogContract
from clickloop.landing import MissingPartitionError, fingerprint
from pipelines.jobs import LoopJobs
from resources.landing import LogSource

#: Re-ingest runs carry this tag (its value: the raw tables whose delivery changed).
REDELIVERY_TAG = "clickloop/redelivered"
#: Materialization records read per raw table and tick (the newest first).
RECORD_LIMIT = 5_000
#: Failed runs read per tick (the newest first) for ingests that failed on their files.
FAILED_RUN_LIMIT = 200


@dataclass(frozen=True)
class Redelivery:
    """A day whose landing files differ from those its ingest read."""

    day: str
    tables: tuple[str, ...]
    fingerprint: str


@dataclass(frozen=True)
class Attempt:
    """A day's newest ingest of one raw table: the delivery it read, when, and whether it failed on
    a file that cannot be ingested as delivered."""

    fingerprint: str
    timestamp: float
    failed: bool = False


def ingested(instance: DagsterInstance, table: str) -> dict[str, Attempt]:
    """The delivery the newest materialization of every partition of a raw table read."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(table)), limit=RECORD_LIMIT, ascending=False
    ).records
    found: dict[str, Attempt] = {}
    for record in records:
        materialization = record.asset_materialization
        key = materialization.partition if materialization else None
        if key is None or key in found:
            continue
        value = materialization.metadata.get(LANDING_FINGERPRINT)
        if value is not None:
            found[key] = Attempt(str(getattr(value, "value", value)), record.timestamp)
    return found


def failed_to_ingest(instance: DagsterInstance) -> dict[str, dict[str, Attempt]]:
    """Per raw table and partition, the delivery its newest failed ingest stopped on (the failure's
    metadata, :data:`assets.raw_logs.LANDING_FINGERPRINT`), from the newest failed runs (read once
    a tick, for every table)."""
    found: dict[str, dict[str, Attempt]] = {}
    runs = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.FAILURE]), limit=FAILED_RUN_LIMIT)
    for run in runs:
        for entry in instance.all_logs(run.dagster_run.run_id, of_type=DagsterEventType.STEP_FAILURE):
            event = entry.dagster_event
            if event is None or event.step_key is None or event.step_failure_data.user_failure_data is None:
                continue
            metadata = event.step_failure_data.user_failure_data.metadata
            if LANDING_FINGERPRINT not in metadata or FAILED_DAY not in metadata:
                continue
            days = found.setdefault(event.step_key, {})
            day = str(metadata[FAILED_DAY].value)
            if day not in days or days[day].timestamp < entry.timestamp:
                days[day] = Attempt(str(metadata[LANDING_FINGERPRINT].value), entry.timestamp, failed=True)
    return found


def last_attempts(
    instance: DagsterInstance, table: str, failures: Mapping[str, Attempt]
) -> dict[str, Attempt]:
    """Per partition of a raw table, its newest ingest: a materialization or a failure on its files
    (``failures``: the table's, :func:`failed_to_ingest`)."""
    attempts = ingested(instance, table)
    for day, failure in failures.items():
        if day not in attempts or attempts[day].timestamp < failure.timestamp:
            attempts[day] = failure
    return attempts


@dataclass(frozen=True)
class Deliveries:
    """What one tick found: days to ingest again, days still waiting for a new delivery after their
    files could not be ingested, and days ingested whose folder is gone."""

    changed: list[Redelivery]
    waiting: list[str]
    missing: list[str]

    def note(self) -> str:
        parts = []
        if self.waiting:
            parts.append(
                f"{len(self.waiting)} day(s) failed on their files (or found none) and wait for them "
                f"to be delivered again: {'; '.join(self.waiting[:3])}"
            )
        if self.missing:
            parts.append(
                f"{len(self.missing)} ingested day(s) have no files now: {'; '.join(self.missing[:3])}"
            )
        return f" ({'; '.join(parts)})" if parts else ""


def find_redeliveries(instance: DagsterInstance, log_source: LogSource, contract: LogContract) -> Deliveries:
    """Days whose delivery changed since their newest ingest (one that failed on its files
    included), the days whose failed delivery is unchanged, and days whose folder is gone."""
    changed: dict[str, list[tuple[str, str]]] = {}
    waiting: list[str] = []
    missing: list[str] = []
    failures = failed_to_ingest(instance)
    for kind in contract.log_kinds:
        table = RAW_TABLES[kind]
        for day, attempt in sorted(last_attempts(instance, table, failures.get(table, {})).items()):
            try:
                now = fingerprint(log_source.partition_files(kind, date.fromisoformat(day)))
            except MissingPartitionError as exc:
                if not attempt.failed:
                    missing.append(f"{table} {day}: {exc}")
                    continue
                now = fingerprint([])  # a day that failed for want of files still has none
            if now != attempt.fingerprint:
                changed.setdefault(day, []).append((table, now))
            elif attempt.failed:
                waiting.append(f"{table} {day}")
    redeliveries = [
        Redelivery(day, tuple(t for t, _ in found), "".join(fp[:8] for _, fp in found))
        for day, found in sorted(changed.items())
    ]
    return Deliveries(redeliveries, waiting, missing)


def redelivery_request(redelivery: Redelivery) -> RunRequest:
    """Re-ingest the day; the run key changes with the delivery, so a day delivered a third time
    is ingested again."""
    return RunRequest(
        run_key=f"redelivery:{redelivery.day}:{redelivery.fingerprint}",
        partition_key=redelivery.day,
        tags={REDELIVERY_TAG: ",".join(redelivery.tables)},
    )


def events_to_rebuild(
    instance: DagsterInstance, calendar: Calendar, day: str, tables: Sequence[str]
) -> list[str]:
    """The days whose events read the raw ``tables`` of ``day`` (the events' own partition
    mappings: D and D+1 for impressions, D-1 … D+1 for clicks) and were built."""
    kinds = [kind for kind, name in RAW_TABLES.items() if name in tables]
    reading = {k for kind in kinds for k in calendar.downstream_days(EVENTS_READ[kind], day)}
    return sorted(reading & set(instance.get_materialized_partitions(AssetKey(AD_EVENTS))))


def redelivery_sensors(calendar: Calendar, contract: LogContract, jobs: LoopJobs) -> list[SensorDefinition]:
    """``redelivery_sensor`` (re-ingest a day delivered again) and ``events_after_redelivery``."""

    @sensor(
        name="redelivery_sensor",
        job=jobs.ingest,
        minimum_interval_seconds=300,
        default_status=DefaultSensorStatus.STOPPED,
        description="Ingest again a day whose landing files were added to, replaced or removed "
        "after it was ingested, or after its ingest failed on them (its delivery fingerprint changed).",
    )
    def _redelivery(context: SensorEvaluationContext, log_source: LogSource) -> list[RunRequest] | SkipReason:
        found = find_redeliveries(context.instance, log_source, contract)
        if not found.changed:
            return SkipReason(f"every ingested day's delivery is unchanged{found.note()}")
        for r in found.changed:
            context.log.info(f"{r.day}: {', '.join(r.tables)} delivered again: ingesting{found.note()}")
        return [redelivery_request(r) for r in found.changed]

    @run_status_sensor(
        name="events_after_redelivery",
        run_status=DagsterRunStatus.SUCCESS,
        monitored_jobs=[jobs.ingest],
        request_job=jobs.events,
        default_status=DefaultSensorStatus.STOPPED,
        description="After a day delivered again is re-ingested, rebuild the events of the days "
        "that read it (D and D+1 for impressions, D-1 … D+1 for clicks; those that were built).",
    )
    def _events_after(context: RunStatusSensorContext) -> list[RunRequest] | SkipReason:
        run = context.dagster_run
        day = run.tags.get("dagster/partition")
        if REDELIVERY_TAG not in run.tags or day is None:
            return SkipReason("not a re-ingest of logs delivered again")
        days = events_to_rebuild(context.instance, calendar, day, run.tags[REDELIVERY_TAG].split(","))
        if not days:
            return SkipReason(f"no events built on {day} yet")
        return [
            RunRequest(
                run_key=f"redelivery-events:{k}:{run.run_id}", partition_key=k, tags={REDELIVERY_TAG: day}
            )
            for k in days
        ]

    return [_redelivery, _events_after]
