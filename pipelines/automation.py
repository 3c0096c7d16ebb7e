"""When the loop runs by itself: the daily refresh, the weekly retraining, and the sensors that ask
for a retraining when monitoring crosses a threshold.

The daily refresh is a chain, because day D is only complete in steps: at 01:00 UTC the schedule
ingests yesterday's logs; when that run succeeds a run-status sensor builds the events, features,
drift report and online metrics of the day before (whose attribution window has just closed); when
that succeeds another builds the statistics the ad server may use today. Each link asks Dagster's
partitions definition for the neighbouring partition, so there is no date arithmetic.

The retraining sensors read the monitoring store. Each request carries a ``run_key`` (the same day
never triggers twice) and tags naming the metric, its value and the threshold it crossed; a day whose
blocking data checks failed never triggers a retraining (the sensor says so in its skip reason).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dagster import (
    AssetCheckKey,
    AssetKey,
    ConfigurableResource,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunStatusSensorContext,
    ScheduleDefinition,
    SensorEvaluationContext,
    SkipReason,
    build_schedule_from_partitioned_job,
    run_status_sensor,
    sensor,
)

from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.guards import check_problems
from assets.partitions import daily_partitions
from resources.monitoring_store import MonitoringStore
from resources.tracking import ModelRegistry

TRAINING_TAGS = {"clickloop/kind": "training"}


class RetrainPolicy(ConfigurableResource):
    """Thresholds of the retraining sensors (set them in the resource config or the environment)."""

    drift_share_threshold: float = 0.25
    calibration_tolerance: float = 0.25
    normalized_entropy_tolerance: float = 0.05
    max_champion_age_days: int = 14


@dataclass(frozen=True)
class Trigger:
    """A threshold crossed on a day: what a sensor turns into one retraining request."""

    sensor: str
    day: str
    metric: str
    value: float
    threshold: float

    @property
    def reason(self) -> str:
        return f"{self.metric} = {self.value:.4g} crossed {self.threshold:.4g} on {self.day}"

    def run_request(self) -> RunRequest:
        return RunRequest(
            run_key=f"{self.sensor}:{self.day}",
            tags={
                **TRAINING_TAGS,
                "clickloop/trigger": self.sensor,
                "clickloop/day": self.day,
                "clickloop/metric": self.metric,
                "clickloop/value": f"{self.value:.6g}",
                "clickloop/threshold": f"{self.threshold:.6g}",
            },
        )


#: Columns that describe the request, not the ad: their distribution does not depend on which policy
#: ranked the ads. The ad-side features of served impressions move whenever the serving policy
#: changes (a champion shows other ads than the random policy it was trained on), so their drift
#: against the training window is expected and is no reason to retrain.
REQUEST_CONTEXT_COLUMNS: tuple[str, ...] = (
    "user_segment",
    "site_category",
    "device_type",
    "os",
    "country",
    "hour",
)


def context_drift_share(drift: dict) -> float:
    """The share of request-context columns that Evidently found drifted on the day."""
    drifted = set(drift.get("drifted_columns") or {})
    return len(drifted & set(REQUEST_CONTEXT_COLUMNS)) / len(REQUEST_CONTEXT_COLUMNS)


def drift_trigger(drift: dict | None, policy: RetrainPolicy) -> Trigger | None:
    """The share of drifted request-context columns on the day's report. (The CTR and the served
    predictions move with the serving policy too; their changes are the quality sensor's.)"""
    if drift is None:
        return None
    share = context_drift_share(drift)
    if share > policy.drift_share_threshold:
        return Trigger(
            "drift_sensor", drift["day"], "context_drift_share", share, policy.drift_share_threshold
        )
    return None


def quality_trigger(
    day_rows: Sequence[dict], baseline_rows: Sequence[dict], champion: str, policy: RetrainPolicy
) -> Trigger | None:
    """The champion's online calibration or normalized entropy on the day, against its first
    served day (its quality at promotion), beyond the tolerance."""
    today = next((r for r in day_rows if r["model_version"] == champion), None)
    base = next((r for r in baseline_rows if r["model_version"] == champion), None)
    if today is None or base is None or today["day"] == base["day"]:
        return None
    if today["calibration"] is not None and base["calibration"] is not None:
        drift = abs(today["calibration"] - base["calibration"])
        if drift > policy.calibration_tolerance:
            return Trigger("quality_sensor", today["day"], "calibration_change", drift, policy.calibration_tolerance)
    if today["normalized_entropy"] is not None and base["normalized_entropy"] is not None:
        worse = today["normalized_entropy"] - base["normalized_entropy"]
        if worse > policy.normalized_entropy_tolerance:
            return Trigger(
                "quality_sensor", today["day"], "normalized_entropy_increase", worse, policy.normalized_entropy_tolerance
            )
    return None


def staleness_trigger(day: str, promoted_day: str | None, policy: RetrainPolicy) -> Trigger | None:
    """The champion is older than ``max_champion_age_days`` partitions."""
    if promoted_day is None:
        return None
    keys = daily_partitions.get_partition_keys()
    if promoted_day not in keys or day not in keys:
        return None
    age = keys.index(day) - keys.index(promoted_day)
    if age > policy.max_champion_age_days:
        return Trigger("staleness_sensor", day, "champion_age_days", age, policy.max_champion_age_days)
    return None


def neighbour_partition(key: str | None, offset: int) -> str | None:
    """The daily partition ``offset`` places from ``key``, or None outside the partitions."""
    keys = daily_partitions.get_partition_keys()
    if key not in keys:
        return None
    index = keys.index(key) + offset
    return keys[index] if 0 <= index < len(keys) else None


#: The assets whose blocking checks vouch for a day's data before it is monitored or trained on.
DATA_ASSETS: tuple[str, ...] = ("raw_impressions", "raw_clicks", "ad_events")


def failed_data_checks(
    instance: DagsterInstance, days: Sequence[str], failed_only: bool = False
) -> list[str]:
    """Blocking checks of the days' raw and joined data that do not vouch for it (only those that
    failed with ``failed_only``; a partition that was never built is left out)."""
    problems = []
    for asset in DATA_ASSETS:
        key = AssetKey(asset)
        built = instance.get_materialized_partitions(key)
        wanted = [d for d in days if d in built]
        if not wanted:
            continue
        check = AssetCheckKey(key, f"{asset}_expectations")
        problems += [
            p
            for p in check_problems(instance, [check], {key: wanted})
            if p.problem == "failed" or not failed_only
        ]
    return [f"{p.check} on {p.partition}: {p.problem}" for p in problems]


def ingested_days_after(instance: DagsterInstance, day: str | None) -> list[str]:
    """The daily partitions of raw logs ingested after ``day`` (all of them when None), in order."""
    keys = daily_partitions.get_partition_keys()
    first = keys.index(day) + 1 if day in keys else 0
    ingested = set()
    for asset in DATA_ASSETS[:2]:
        ingested |= set(instance.get_materialized_partitions(AssetKey(asset)))
    return [k for k in keys[first:] if k in ingested]


def latest_monitored_day(store: MonitoringStore) -> str | None:
    rows = store.latest_online_metrics(limit=1)
    return rows[0]["day"] if rows else None


def evaluate_retraining(
    context: SensorEvaluationContext,
    store: MonitoringStore,
    registry: ModelRegistry,
    policy: RetrainPolicy,
    sensor_name: str,
) -> RunRequest | SkipReason:
    """The decision shared by the three sensors, on the newest monitored day."""
    day = latest_monitored_day(store)
    # a day ingested since then that failed its blocking checks stopped the refresh chain: its
    # events, features and monitoring were never built; nothing retrains until the logs are fixed
    stopped = failed_data_checks(
        context.instance, ingested_days_after(context.instance, day), failed_only=True
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
    champion = f"ctr_model-v{champion_version}"
    served = store.latest_online_metrics(model_version=champion)
    first_day = served[-1]["day"] if served else None
    if sensor_name == "drift_sensor":
        trigger = drift_trigger(store.drift_for(day), policy)
    elif sensor_name == "quality_sensor":
        trigger = quality_trigger(store.online_metrics_for(day), served[-1:], champion, policy)
    else:
        trigger = staleness_trigger(day, first_day, policy)
    if trigger is None:
        return SkipReason(f"{day}: no threshold crossed ({sensor_name}, champion {champion})")
    failed = failed_data_checks(context.instance, [day])
    if failed:
        return SkipReason(
            f"{trigger.reason}, but {day} failed blocking data checks ({'; '.join(failed)}): "
            "not retraining on bad data"
        )
    context.log.info(f"{sensor_name}: {trigger.reason}: requesting a retraining")
    return trigger.run_request()


def retraining_sensors(training_job: UnresolvedAssetJobDefinition) -> list:
    """The drift, quality and staleness sensors, each requesting ``training_job``."""

    def make(name: str, description: str):
        @sensor(
            name=name,
            job=training_job,
            minimum_interval_seconds=300,
            default_status=DefaultSensorStatus.STOPPED,
            description=description,
        )
        def _sensor(
            context: SensorEvaluationContext,
            monitoring_store: MonitoringStore,
            model_registry: ModelRegistry,
            retrain_policy: RetrainPolicy,
        ):
            return evaluate_retraining(context, monitoring_store, model_registry, retrain_policy, name)

        return _sensor

    return [
        make("drift_sensor", "Retrain when the share of drifted columns crosses its threshold."),
        make("quality_sensor", "Retrain when online calibration or NE worsen since promotion."),
        make("staleness_sensor", "Retrain when the champion has served too many days."),
    ]


@dataclass(frozen=True)
class ChainLink:
    """One link of the daily refresh: when a run of ``after`` ends with ``status`` for partition
    D, request ``then`` for the partition ``offset`` places from D."""

    sensor: str
    after: str
    status: DagsterRunStatus
    then: str
    offset: int
    description: str


#: The refresh chain. An ingest that failed its blocking checks still lets the day before be built
#: when that day's own inputs passed (a price bug in today's impressions does not spoil yesterday's
#: clicks); the assets' guards refuse whatever would read the failed partition.
CHAIN: tuple[ChainLink, ...] = (
    ChainLink(
        "events_after_ingest", "ingest_job", DagsterRunStatus.SUCCESS, "events_job", -1,
        "After day D's logs are ingested, build D-1's events, features and monitoring.",
    ),
    ChainLink(
        "events_after_failed_ingest", "ingest_job", DagsterRunStatus.FAILURE, "events_job", -1,
        "After day D's ingest failed (e.g. a blocking check), still try D-1: its guards refuse "
        "to build on any partition that failed its checks.",
    ),
    ChainLink(
        "serving_stats_after_events", "events_job", DagsterRunStatus.SUCCESS, "feature_stats_job", 2,
        "After day D's events, build the statistics serving D+2 may use.",
    ),
)


def chain_sensor(link: ChainLink, jobs: Mapping[str, UnresolvedAssetJobDefinition]):
    """The run-status sensor of one link of the chain."""

    @run_status_sensor(
        name=link.sensor,
        run_status=link.status,
        monitored_jobs=[jobs[link.after]],
        request_job=jobs[link.then],
        default_status=DefaultSensorStatus.STOPPED,
        description=link.description,
    )
    def _sensor(context: RunStatusSensorContext):
        return chain_request(link, context.dagster_run.tags.get("dagster/partition"))

    return _sensor


def chain_request(link: ChainLink, key: str | None) -> RunRequest | SkipReason:
    """What ``link`` requests after a run of partition ``key``."""
    target = neighbour_partition(key, link.offset)
    if target is None:
        return SkipReason(f"the partition {link.offset:+d} day(s) from {key} does not exist yet")
    return RunRequest(run_key=f"{link.then}:{target}", partition_key=target)


def refresh_automation(
    ingest_job: UnresolvedAssetJobDefinition,
    events_job: UnresolvedAssetJobDefinition,
    feature_stats_job: UnresolvedAssetJobDefinition,
    training_job: UnresolvedAssetJobDefinition,
) -> tuple[list[ScheduleDefinition], list]:
    """The daily refresh chain and the weekly retraining."""
    daily = build_schedule_from_partitioned_job(
        ingest_job,
        name="daily_refresh_schedule",
        hour_of_day=1,
        description=(
            "01:00 UTC: ingest yesterday's logs; the chain then builds the events, features, drift "
            "and online metrics of the day before (its attribution window just closed) and the "
            "statistics today's serving uses."
        ),
        default_status=DefaultScheduleStatus.STOPPED,
    )
    weekly = ScheduleDefinition(
        name="weekly_retraining_schedule",
        job=training_job,
        cron_schedule="0 3 * * 1",
        execution_timezone="UTC",
        tags=TRAINING_TAGS,
        description="Mondays 03:00 UTC: retrain on the latest window and let the gate decide.",
        default_status=DefaultScheduleStatus.STOPPED,
    )

    jobs = {job.name: job for job in (ingest_job, events_job, feature_stats_job)}
    return [daily, weekly], [chain_sensor(link, jobs) for link in CHAIN]
