"""The sensors of the loop: the daily refresh chain, and the retraining requests.

The daily refresh is a chain, because day D is only complete in steps: at 01:00 UTC the schedule
ingests yesterday's logs; when that run succeeds a run-status sensor builds the events, features,
drift report and online metrics of the day before (whose attribution window has just closed); when
that succeeds another builds the statistics the ad server may use the day after next. Each link
requests the day the finished run's partition completes, read from the partition mappings of what
it builds (the events read the clicks of D-1 … D+1, so the clicks of D complete the events of D-1),
so there is no date arithmetic and a changed window moves the chain with it.

The retraining sensors read the monitoring store and apply the rules of
:mod:`clickloop.retraining`. Each request carries a ``run_key`` (the same day never triggers twice)
and tags naming the metric, its value and the threshold; a day whose blocking data checks failed
never triggers a retraining (the sensor says so in its skip reason).
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dagster import (
    AssetCheckKey,
    AssetKey,
    ConfigurableResource,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    TimeWindowPartitionMapping,
    run_status_sensor,
    sensor,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.events import AD_EVENTS, EVENTS_READ
from assets.guards import check_problems
from assets.partitions import Calendar
from assets.raw_logs import RAW_TABLES
from clickloop.contract import LogContract
from clickloop.model import served_version
from clickloop.retraining import (
    DAY_TAG,
    TRIGGER_TAG,
    RetrainThresholds,
    Trigger,
    cooldown_reason,
    drift_trigger,
    novelty_trigger,
    quality_trigger,
    request_context_columns,
    staleness_trigger,
)
from pipelines.jobs import TRAINING_TAGS, LoopJobs
from resources.monitoring_store import MonitoringStore
from resources.tracking import ModelRegistry

_THRESHOLDS = RetrainThresholds()
RETRAINING_SENSORS = ("drift_sensor", "quality_sensor", "novelty_sensor", "staleness_sensor")


class RetrainPolicy(ConfigurableResource):
    """Thresholds of the retraining sensors (set them in the resource config or the environment)."""

    drift_share_threshold: float = _THRESHOLDS.drift_share_threshold
    calibration_tolerance: float = _THRESHOLDS.calibration_tolerance
    normalized_entropy_tolerance: float = _THRESHOLDS.normalized_entropy_tolerance
    cold_start_tolerance: float = _THRESHOLDS.cold_start_tolerance
    max_champion_age_days: int = _THRESHOLDS.max_champion_age_days
    cooldown_days: int = _THRESHOLDS.cooldown_days

    def thresholds(self) -> RetrainThresholds:
        return RetrainThresholds(**self.model_dump())


def run_request(trigger: Trigger) -> RunRequest:
    return RunRequest(run_key=trigger.run_key, tags={**TRAINING_TAGS, **trigger.tags()})


def data_tables(contract: LogContract) -> tuple[str, ...]:
    """The assets whose blocking checks vouch for a day's data before it is monitored or trained on."""
    return (*(RAW_TABLES[k] for k in contract.log_kinds), AD_EVENTS)


def failed_data_checks(
    instance: DagsterInstance, tables: Sequence[str], days: Sequence[str], failed_only: bool = False
) -> list[str]:
    """Blocking checks of the days' raw and joined data that do not vouch for it (only those that
    failed with ``failed_only``; a partition that was never built is left out)."""
    problems = []
    for table in tables:
        key = AssetKey(table)
        built = instance.get_materialized_partitions(key)
        wanted = [d for d in days if d in built]
        if not wanted:
            continue
        check = AssetCheckKey(key, f"{table}_expectations")
        problems += [
            p
            for p in check_problems(instance, [check], {key: wanted})
            if p.problem == "failed" or not failed_only
        ]
    return [f"{p.check} on {p.partition}: {p.problem}" for p in problems]


def ingested_days_after(
    instance: DagsterInstance, raw_tables: Sequence[str], keys: Sequence[str], day: str | None
) -> list[str]:
    """The daily partitions of raw logs ingested after ``day`` (all of them when None), in order."""
    first = list(keys).index(day) + 1 if day in keys else 0
    ingested: set[str] = set()
    for table in raw_tables:
        ingested |= set(instance.get_materialized_partitions(AssetKey(table)))
    return [k for k in keys[first:] if k in ingested]


def last_retraining_request(instance: DagsterInstance) -> str | None:
    """The newest day a retraining sensor asked a training for (its ``clickloop/day`` tag)."""
    runs = instance.get_runs(filters=RunsFilter(tags=TRAINING_TAGS), limit=100)
    days = [r.tags[DAY_TAG] for r in runs if TRIGGER_TAG in r.tags and r.tags.get(DAY_TAG)]
    return max(days) if days else None


def evaluate_retraining(
    context: SensorEvaluationContext,
    calendar: Calendar,
    contract: LogContract,
    store: MonitoringStore,
    registry: ModelRegistry,
    thresholds: RetrainThresholds,
    sensor_name: str,
) -> RunRequest | SkipReason:
    """The decision shared by the three sensors, on the newest monitored day."""
    latest = store.latest_online_metrics(limit=1)
    day = latest[0]["day"] if latest else None
    tables = data_tables(contract)
    keys = calendar.keys()
    # a day ingested since then that failed its blocking checks stopped the refresh chain: its
    # events, features and monitoring were never built; nothing retrains until the logs are fixed
    raw = tables[:-1]
    stopped = failed_data_checks(
        context.instance, tables, ingested_days_after(context.instance, raw, keys, day), failed_only=True
    )
    if stopped:
        return SkipReason(
            f"not retraining on bad data: {'; '.join(stopped)}. The refresh stopped there (no events, "
            "features or monitoring are built on it); fix the logs and re-run ingest_job for that day."
        )
    if day is None:
        return SkipReason("no online metrics yet")
    champion_version = registry.champion_version()
    if champion_version is None:
        return SkipReason("no champion yet: the first model is trained by the weekly schedule or by hand")
    champion = served_version(champion_version)
    served = store.latest_online_metrics(model_version=champion)
    first_day = served[-1]["day"] if served else None
    if sensor_name == "drift_sensor":
        trigger = drift_trigger(store.drift_for(day), request_context_columns(contract), thresholds)
    elif sensor_name == "quality_sensor":
        served_days = sum(1 for r in served if r["day"] <= day)
        trigger = quality_trigger(
            store.online_metrics_for(day), served[-1:], champion, thresholds, served_days
        )
    elif sensor_name == "novelty_sensor":
        trigger = novelty_trigger(store.online_metrics_for(day), served[-1:], champion, thresholds)
    else:
        trigger = staleness_trigger(day, first_day, keys, thresholds)
    if trigger is None:
        return SkipReason(f"{day}: no threshold crossed ({sensor_name}, champion {champion})")
    cooling = cooldown_reason(day, last_retraining_request(context.instance), keys, thresholds)
    if cooling:
        return SkipReason(f"{trigger.reason}, but {cooling}")
    failed = failed_data_checks(context.instance, tables, [day])
    if failed:
        return SkipReason(
            f"{trigger.reason}, but {day} failed blocking data checks ({'; '.join(failed)}): "
            "not retraining on bad data"
        )
    context.log.info(f"{sensor_name}: {trigger.reason}: requesting a retraining")
    return run_request(trigger)


_DESCRIPTIONS = {
    "drift_sensor": "Retrain when the share of drifted request-context columns crosses its threshold.",
    "quality_sensor": "Retrain when the champion's online calibration or NE worsen since promotion.",
    "novelty_sensor": "Retrain when much more of the champion's traffic goes to ads without history "
    "(a wave of new campaigns) than on its first served day.",
    "staleness_sensor": "Retrain when the champion has served too many days.",
}


def retraining_sensors(
    calendar: Calendar, contract: LogContract, training_job: UnresolvedAssetJobDefinition
) -> list[SensorDefinition]:
    """The drift, quality and staleness sensors, each requesting ``training_job``."""

    def make(name: str) -> SensorDefinition:
        @sensor(
            name=name,
            job=training_job,
            minimum_interval_seconds=300,
            default_status=DefaultSensorStatus.STOPPED,
            description=_DESCRIPTIONS[name],
        )
        def _sensor(
            context: SensorEvaluationContext,
            monitoring_store: MonitoringStore,
            model_registry: ModelRegistry,
            retrain_policy: RetrainPolicy,
        ) -> RunRequest | SkipReason:
            return evaluate_retraining(
                context,
                calendar,
                contract,
                monitoring_store,
                model_registry,
                retrain_policy.thresholds(),
                name,
            )

        return _sensor

    return [make(name) for name in RETRAINING_SENSORS]


@dataclass(frozen=True)
class ChainLink:
    """One link of the daily refresh: when a run of ``after`` ends with ``status`` for partition
    D, request ``then`` for the day D completes: the one whose newest input through ``reads`` (the
    partition mappings through which ``then`` reads what ``after`` built) is D."""

    sensor: str
    after: str
    status: DagsterRunStatus
    then: str
    reads: Callable[[Calendar], Sequence[TimeWindowPartitionMapping]]
    description: str

    def target(self, calendar: Calendar, key: str | None) -> str | None:
        return calendar.completed_by(self.reads(calendar), key)


def _events_read(_: Calendar) -> Sequence[TimeWindowPartitionMapping]:
    return tuple(EVENTS_READ.values())


def _statistics_read(calendar: Calendar) -> Sequence[TimeWindowPartitionMapping]:
    return (calendar.history_window,)


#: The refresh chain. An ingest that failed its blocking checks still lets the day before be built
#: when that day's own inputs passed (a price bug in today's impressions does not spoil yesterday's
#: clicks); the assets' guards refuse whatever would read the failed partition.
CHAIN: tuple[ChainLink, ...] = (
    ChainLink(
        "events_after_ingest",
        "ingest_job",
        DagsterRunStatus.SUCCESS,
        "events_job",
        _events_read,
        "After day D's logs are ingested, build D-1's events, features and monitoring.",
    ),
    ChainLink(
        "events_after_failed_ingest",
        "ingest_job",
        DagsterRunStatus.FAILURE,
        "events_job",
        _events_read,
        "After day D's ingest failed (e.g. a blocking check), still try D-1: its guards refuse "
        "to build on any partition that failed its checks.",
    ),
    ChainLink(
        "serving_stats_after_events",
        "events_job",
        DagsterRunStatus.SUCCESS,
        "feature_stats_job",
        _statistics_read,
        "After day D's events, build the statistics serving D+2 may use.",
    ),
)


def chain_request(calendar: Calendar, link: ChainLink, key: str | None) -> RunRequest | SkipReason:
    """What ``link`` requests after a run of partition ``key``."""
    target = link.target(calendar, key)
    if target is None:
        return SkipReason(f"the partition {key} completes for {link.then} does not exist yet")
    return RunRequest(run_key=f"{link.then}:{target}", partition_key=target)


def chain_sensors(calendar: Calendar, jobs: LoopJobs) -> list[SensorDefinition]:
    """The run-status sensors of the refresh chain."""
    by_name: Mapping[str, UnresolvedAssetJobDefinition] = jobs.by_name()

    def make(link: ChainLink) -> SensorDefinition:
        @run_status_sensor(
            name=link.sensor,
            run_status=link.status,
            monitored_jobs=[by_name[link.after]],
            request_job=by_name[link.then],
            default_status=DefaultSensorStatus.STOPPED,
            description=link.description,
        )
        def _sensor(context: RunStatusSensorContext) -> RunRequest | SkipReason:
            return chain_request(calendar, link, context.dagster_run.tags.get("dagster/partition"))

        return _sensor

    return [make(link) for link in CHAIN]
