"""The one ``Definitions`` of clickloop: assets, checks, jobs and resources."""

from dagster import AssetSelection, Definitions, define_asset_job

from assets.events import ad_events
from assets.expectations import expectation_checks
from assets.features import feature_checks, feature_stats, features
from assets.partitions import daily_partitions
from assets.raw_logs import raw_clicks, raw_impressions
from pipelines.settings import data_dir, env_float, env_int, env_str, log_source_kind
from resources.landing import LandingFolder, LogSource
from resources.simulator import AdServerSimulator
from resources.warehouse import Warehouse


def build_log_source() -> LogSource:
    """The simulator by default; ``CLICKLOOP_LOG_SOURCE=landing`` reads real logs instead."""
    if log_source_kind() == "landing":
        return LandingFolder(landing_dir=env_str("CLICKLOOP_LANDING_DIR", "landing"))
    return AdServerSimulator(
        landing_dir=env_str("CLICKLOOP_LANDING_DIR", str(data_dir() / "landing")),
        seed=env_int("CLICKLOOP_SEED", 7),
        requests_per_day=env_int("CLICKLOOP_REQUESTS_PER_DAY", 50_000),
        scenario=env_str("CLICKLOOP_SCENARIO", "stable"),
        scenario_start=env_str("CLICKLOOP_SCENARIO_START", "") or None,
        start_date=daily_partitions.start.date().isoformat(),
    )


def build_resources() -> dict[str, object]:
    return {
        "warehouse": Warehouse(
            data_dir=env_str("CLICKLOOP_DATA_DIR", str(data_dir())),
            duckdb_threads=env_int("CLICKLOOP_DUCKDB_THREADS", 2),
        ),
        "log_source": build_log_source(),
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
    selection=AssetSelection.assets(ad_events, features),
    partitions_def=daily_partitions,
    description=(
        "Join one day's impressions to their clicks and compute its point-in-time features; "
        "runs once the next day's clicks are ingested (the attribution window has closed)."
    ),
)

def build_defs(resources: dict[str, object] | None = None) -> Definitions:
    """The repository; tests pass their own resources (a small simulator, a temporary warehouse)."""
    return Definitions(
        assets=[raw_impressions, raw_clicks, ad_events, feature_stats, features],
        asset_checks=[*expectation_checks, *feature_checks],
        jobs=[feature_stats_job, ingest_job, events_job],
        resources=resources if resources is not None else build_resources(),
    )


defs = build_defs()
