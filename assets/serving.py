"""What the ranking service reads, and whether what it served matches the model: the ad catalog,
the online feature store (Redis), its consistency check, and the training/serving skew check."""

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.events import AD_EVENTS
from assets.guards import require_upstream_checks_passed
from assets.partitions import Calendar
from clickloop.calibration import calibration_served
from clickloop.contract import LogContract
from clickloop.features import FeatureSpec
from clickloop.presentation import significant
from clickloop.ranking import STATS_TABLE
from clickloop.service.catalog import AD_CATALOG, build_ad_catalog, catalog_columns
from clickloop.service.consistency import DEFAULT_SAMPLE_ROWS, SKEW_TOLERANCE, compare_online, serving_skew
from clickloop.service.store import RedisSnapshot, current_snapshot, write_snapshot
from clickloop.split import FEATURES
from clickloop.storage import Warehouse, read_parquet
from resources.online_store import OnlineFeatureStore
from resources.tracking import ModelRegistry
from resources.warehouse import WarehouseResource

ONLINE_FEATURES = "online_features"


def ad_catalog_asset(calendar: Calendar, contract: LogContract) -> AssetsDefinition:
    columns = ", ".join(catalog_columns(contract)) or "none"

    @asset(
        name=AD_CATALOG,
        partitions_def=calendar.partitions,
        deps=[AssetDep(AD_EVENTS, partition_mapping=calendar.history_window)],
        group_name="serving",
        kinds={"parquet", "duckdb"},
        description=f"Each ad the ad server knew when day D began (the statistics' window) with its "
        f"latest logged own columns ({columns}): what /rank looks up for a bare ad id.",
    )
    def _ad_catalog(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        day = context.partition_key
        keys = context.asset_partition_keys_for_input(AD_EVENTS)
        require_upstream_checks_passed(context, {AD_EVENTS: keys})
        store = warehouse.get()
        events = store.require_partition_paths(AD_EVENTS, keys)
        target = store.partition_path(AD_CATALOG, day)
        with store.duckdb() as con:
            ads = build_ad_catalog(con, contract, events, target)
        context.log.info(f"ad_catalog {day}: {ads:,} ads from {len(keys)} day(s) of events")
        return MaterializeResult(
            metadata={
                "dagster/row_count": ads,
                "window": ", ".join(keys) or "none",
                "path": MetadataValue.path(str(target)),
            }
        )

    return _ad_catalog


def _day_stats_and_catalog(store: Warehouse, day: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Day D's statistics and ad catalog (an error naming a missing partition)."""
    stats_path, catalog_path = (store.require_partition_paths(t, [day])[0] for t in (STATS_TABLE, AD_CATALOG))
    return read_parquet(stats_path).to_pandas(), read_parquet(catalog_path).to_pandas()


def online_features_asset(calendar: Calendar, contract: LogContract) -> AssetsDefinition:
    spec = FeatureSpec.from_contract(contract)

    @asset(
        name=ONLINE_FEATURES,
        partitions_def=calendar.partitions,
        deps=[STATS_TABLE, AD_CATALOG],
        group_name="serving",
        kinds={"redis"},
        description="Day D's statistics and ad catalog in the online store (Redis), as a snapshot "
        "named by the partition; readers are switched to it atomically once it is complete.",
    )
    def _online_features(
        context: AssetExecutionContext, warehouse: WarehouseResource, online_store: OnlineFeatureStore
    ) -> MaterializeResult:
        day = context.partition_key
        stats, catalog = _day_stats_and_catalog(warehouse.get(), day)
        summary = write_snapshot(online_store.client(), spec, day, stats, catalog)
        context.log.info(
            f"online_features {day}: snapshot {summary.snapshot}, {sum(summary.rows.values()):,} keys, "
            f"{summary.ads:,} ads; deleted {list(summary.deleted_snapshots) or 'none'}"
        )
        table = "\n".join(
            ["| key type | keys |", "|---|---:|", *(f"| {k} | {n:,} |" for k, n in summary.rows.items())]
        )
        return MaterializeResult(
            metadata={
                "snapshot": summary.snapshot,
                "keys": MetadataValue.md(table),
                "ads": summary.ads,
                "prior_ctr": round(summary.prior, 5),
                "deleted_snapshots": MetadataValue.text(", ".join(summary.deleted_snapshots) or "none"),
            }
        )

    return _online_features


def online_features_check(calendar: Calendar, contract: LogContract) -> AssetChecksDefinition:
    spec = FeatureSpec.from_contract(contract)

    @calendar.daily_check(
        asset=ONLINE_FEATURES,
        name="online_matches_offline",
        blocking=True,
        description=f"Up to {DEFAULT_SAMPLE_ROWS:,} keys of each type and ads of the catalog read back "
        "from the store the service reads equal the day's Parquet partitions exactly.",
    )
    def _check(
        context: AssetCheckExecutionContext, warehouse: WarehouseResource, online_store: OnlineFeatureStore
    ) -> AssetCheckResult:
        day = context.partition_key
        store, client = warehouse.get(), online_store.client()
        snapshot = current_snapshot(client)
        online = RedisSnapshot(client, spec, snapshot) if snapshot else None
        if online is None or online.version != day:
            return AssetCheckResult(
                passed=False,
                metadata={
                    "problem": f"the store serves {online.version if online else 'nothing'}, not {day}"
                },
            )
        stats, catalog = _day_stats_and_catalog(store, day)
        result = compare_online(online, spec, stats, catalog)
        return AssetCheckResult(
            passed=result.passed,
            metadata={
                "sampled": result.sampled,
                "mismatches": result.mismatches,
                "worst_ctr_difference": significant(result.worst_difference),
                "snapshot": snapshot,
                "examples": MetadataValue.md("\n".join(f"- {e}" for e in result.examples) or "none"),
            },
        )

    return _check


def serving_skew_check(calendar: Calendar, contract: LogContract) -> AssetChecksDefinition:
    spec = FeatureSpec.from_contract(contract)

    @calendar.daily_check(
        asset=FEATURES,
        name="served_scores_match_model",
        blocking=True,
        description=f"Up to {DEFAULT_SAMPLE_ROWS:,} impressions a registered model served on day D, "
        "re-scored from their logged features with that version at the reference position, give "
        f"the logged predicted CTR within {SKEW_TOLERANCE:g}: no training/serving skew. Blocking: "
        "training stops on a skewed day.",
    )
    def _check(
        context: AssetCheckExecutionContext, warehouse: WarehouseResource, model_registry: ModelRegistry
    ) -> AssetCheckResult:
        day, store = context.partition_key, warehouse.get()
        (path,) = store.require_partition_paths(FEATURES, [day])
        with store.duckdb() as con:
            result = serving_skew(
                path,
                spec,
                model_registry.load_version,
                calibration_of=lambda v: calibration_served(store, day, v, model_registry.version_tags(v)),
                con=con,
            )
        by_version = pd.Series(result.by_version, dtype="int64")
        return AssetCheckResult(
            passed=result.passed,
            metadata={
                "served_by_a_model": result.served_rows,
                "sample_size": result.sampled,
                "worst_difference": significant(float(result.worst_difference)),
                "worst_impression": MetadataValue.text(result.worst_impression or "none"),
                "tolerance": result.tolerance,
                "rows_by_version": MetadataValue.json({k: int(v) for k, v in by_version.items()}),
            },
        )

    return _check
