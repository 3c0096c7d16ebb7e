"""The one ``Definitions`` of clickloop: assets, checks, jobs and resources."""

from dagster import (
    AssetSelection,
    Definitions,
    define_asset_job,
    in_process_executor,
)

from assets.evaluation import champion_model, model_evaluation
from assets.events import ad_events
from assets.expectations import expectation_checks
from assets.features import feature_checks, feature_stats, features
from assets.model import ctr_model, training_and_test_sets
from assets.monitoring import drift_report, online_metrics
from assets.partitions import daily_partitions
from assets.raw_logs import raw_clicks, raw_impressions
from pipelines.automation import RetrainPolicy, refresh_automation, retraining_sensors
from pipelines.settings import (
    data_dir,
    env_float,
    env_int,
    env_str,
    executor_kind,
    log_source_kind,
)
from resources.landing import LandingFolder, LogSource
from resources.monitoring_store import MonitoringStore
from resources.serving import ChampionServing
from resources.simulator import AdServerSimulator
from resources.tracking import ModelRegistry
from resources.warehouse import Warehouse


def build_log_source(serving: ChampionServing) -> LogSource:
    """The simulator by default (the champion serves it once promoted);
    ``CLICKLOOP_LOG_SOURCE=landing`` reads real logs instead."""
    if log_source_kind() == "landing":
        return LandingFolder(landing_dir=env_str("CLICKLOOP_LANDING_DIR", "landing"))
    return AdServerSimulator(
        landing_dir=env_str("CLICKLOOP_LANDING_DIR", str(data_dir() / "landing")),
        seed=env_int("CLICKLOOP_SEED", 7),
        requests_per_day=env_int("CLICKLOOP_REQUESTS_PER_DAY", 50_000),
        scenario=env_str("CLICKLOOP_SCENARIO", "stable"),
        scenario_start=env_str("CLICKLOOP_SCENARIO_START", "") or None,
        start_date=daily_partitions.start.date().isoformat(),
        serving=serving,
    )


def build_resources() -> dict[str, object]:
    warehouse = Warehouse(
        data_dir=env_str("CLICKLOOP_DATA_DIR", str(data_dir())),
        duckdb_threads=env_int("CLICKLOOP_DUCKDB_THREADS", 2),
    )
    registry = ModelRegistry(
        data_dir=env_str("CLICKLOOP_DATA_DIR", str(data_dir())),
        tracking_uri=env_str("MLFLOW_TRACKING_URI", ""),
        ui_url=env_str("MLFLOW_UI_URL", "http://127.0.0.1:5000"),
    )
    return {
        "warehouse": warehouse,
        "model_registry": registry,
        "monitoring_store": MonitoringStore(
            data_dir=env_str("CLICKLOOP_DATA_DIR", str(data_dir())),
            url=env_str("CLICKLOOP_MONITORING_DB_URL", ""),
        ),
        "log_source": build_log_source(ChampionServing(registry=registry, warehouse=warehouse)),
        "retrain_policy": RetrainPolicy(
            drift_share_threshold=env_float("CLICKLOOP_DRIFT_SHARE_THRESHOLD", 0.25),
            calibration_tolerance=env_float("CLICKLOOP_CALIBRATION_TOLERANCE", 0.25),
            normalized_entropy_tolerance=env_float("CLICKLOOP_NE_TOLERANCE", 0.05),
            max_champion_age_days=env_int("CLICKLOOP_MAX_CHAMPION_AGE_DAYS", 14),
        ),
    }


ingest_job = define_asset_job(
    "ingest_job",
    selection=AssetSelection.assets(raw_impressions, raw_clicks),
    partitions_def=daily_partitions,
    description="Parse one day of raw ad-server logs into typed Parquet (and run their checks).",
)
feature_stats_job = define_asset_job(
    "feature_stats_job",
    selection=AssetSelection.assets(feature_stats),
    partitions_def=daily_partitions,
    description=(
        "What the ad server may know about the past on day D (history whose labels were final "
        "when D began). Run before day D is served: the champion ranks with it."
    ),
)
events_job = define_asset_job(
    "events_job",
    selection=AssetSelection.assets(ad_events, features, drift_report, online_metrics),
    partitions_def=daily_partitions,
    description=(
        "Join one day's impressions to their clicks, compute its point-in-time features, its "
        "drift report and its online metrics; runs once the next day's clicks are ingested "
        "(the attribution window has closed)."
    ),
)
training_job = define_asset_job(
    "training_job",
    selection=AssetSelection.assets(
        training_and_test_sets, ctr_model, model_evaluation, champion_model
    ),
    description=(
        "Split the latest features by time, train and track a model, evaluate it against the "
        "champion, baselines and the ground truth, and promote it only if it earns it."
    ),
    tags={"clickloop/kind": "training"},
)

schedules, chain_sensors = refresh_automation(
    ingest_job, events_job, feature_stats_job, training_job
)


def build_defs(resources: dict[str, object] | None = None) -> Definitions:
    """The repository; tests pass their own resources (a small simulator, a temporary warehouse)."""
    return Definitions(
        assets=[
            raw_impressions,
            raw_clicks,
            ad_events,
            feature_stats,
            features,
            training_and_test_sets,
            ctr_model,
            model_evaluation,
            champion_model,
            drift_report,
            online_metrics,
        ],
        asset_checks=[*expectation_checks, *feature_checks],
        jobs=[feature_stats_job, ingest_job, events_job, training_job],
        schedules=schedules,
        sensors=[*chain_sensors, *retraining_sensors(training_job)],
        resources=resources if resources is not None else build_resources(),
        # None: Dagster's default executor (multiprocess; run config may still pick in_process)
        executor=in_process_executor if executor_kind() == "in_process" else None,
    )


defs = build_defs()
