"""Point-in-time features: ``feature_stats`` (what the ad server may know on day D) and ``features``."""

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

from assets.checks import partition_check
from assets.compute import k8s_op_tags
from assets.events import AD_EVENTS
from assets.guards import require_upstream_checks_passed
from assets.partitions import Calendar
from clickloop.checks import features_rules
from clickloop.contract import LogContract
from clickloop.features import (
    PRIOR_STRENGTH,
    FeatureSpec,
    build_feature_stats,
    build_features,
    features_summary,
)
from clickloop.ranking import STATS_TABLE
from clickloop.split import FEATURES
from resources.warehouse import WarehouseResource


def feature_stats_asset(calendar: Calendar, contract: LogContract) -> AssetsDefinition:
    spec = FeatureSpec.from_contract(contract)
    entities = ", ".join(e.name for e in spec.entities) or "no entity"

    @asset(
        name=STATS_TABLE,
        op_tags=k8s_op_tags(STATS_TABLE),
        partitions_def=calendar.partitions,
        deps=[AssetDep(AD_EVENTS, partition_mapping=calendar.history_window)],
        group_name="features",
        kinds={"parquet", "duckdb"},
        description=f"What the ad server may know about the past on day D: impressions, clicks and "
        f"smoothed CTR per key ({entities}) over the {calendar.feature_window_days} days before D "
        "whose labels were final when D began (D-1 is still collecting clicks), and each user's "
        "impressions on D-2. With the contract's `policy_invariant_history`, CTRs are at the top "
        "slot (slot effects fitted on the window) and a request-side key's CTR is relative to the "
        "ads it was shown, so they keep their meaning when the serving policy changes.",
    )
    def _feature_stats(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        day = context.partition_key
        keys = context.asset_partition_keys_for_input(AD_EVENTS)
        require_upstream_checks_passed(context, {AD_EVENTS: keys})
        store = warehouse.get()
        history = list(zip(keys, store.require_partition_paths(AD_EVENTS, keys), strict=True))
        target = store.partition_path(STATS_TABLE, day)
        with store.duckdb() as con:
            summary = build_feature_stats(con, spec, day, history, target)
        context.log.info(
            f"feature_stats {day}: {len(history)} day(s) of history, {summary.history_rows:,} rows, "
            f"prior CTR {summary.prior:.4f}"
        )
        return MaterializeResult(
            metadata={
                "history_days": len(summary.history_days),
                "history_window": ", ".join(summary.history_days) or "none (first day: default prior)",
                "history_rows": summary.history_rows,
                "history_clicks": summary.history_clicks,
                "prior_ctr": round(summary.prior, 5),
                "prior_strength": PRIOR_STRENGTH,
                **{f"slot_{p}_factor": round(f, 4) for p, f in summary.position_factors.items()},
                "window_days": calendar.feature_window_days,
                "keys": MetadataValue.md(summary.markdown()),
                "path": MetadataValue.path(str(target)),
            }
        )

    return _feature_stats


def features_asset(calendar: Calendar, contract: LogContract) -> AssetsDefinition:
    spec = FeatureSpec.from_contract(contract)

    @asset(
        name=FEATURES,
        op_tags=k8s_op_tags(FEATURES),
        partitions_def=calendar.partitions,
        deps=[AD_EVENTS, STATS_TABLE],
        group_name="features",
        kinds={"parquet", "duckdb"},
        description="One row per event of day D: its columns, its label and the model's features "
        "(history from before D only).",
    )
    def _features(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        day = context.partition_key
        require_upstream_checks_passed(context, {AD_EVENTS: [day]})
        store = warehouse.get()
        (events_path,) = store.require_partition_paths(AD_EVENTS, [day])
        (stats_path,) = store.require_partition_paths(STATS_TABLE, [day])
        target = store.partition_path(FEATURES, day)
        with store.duckdb() as con:
            build_features(con, spec, events_path, stats_path, target)
            summary = features_summary(con, spec, target)
        unseen = summary["unseen_share"]
        context.log.info(
            f"features {day}: {summary['rows']:,} rows, CTR {summary['ctr']:.4f}"
            + (f", unseen {summary['unseen_entity']} {unseen:.1%}" if unseen is not None else "")
        )
        metadata = {
            "dagster/row_count": summary["rows"],
            "ctr": round(summary["ctr"], 5),
            "numeric_features": MetadataValue.md(summary["numeric_markdown"]),
            "path": MetadataValue.path(str(target)),
        }
        if unseen is not None:
            metadata[f"unseen_{summary['unseen_entity']}_share"] = round(unseen, 4)
        return MaterializeResult(metadata=metadata)

    return _features


def features_check(calendar: Calendar, contract: LogContract) -> AssetChecksDefinition:
    spec = FeatureSpec.from_contract(contract)

    @calendar.daily_check(
        asset=FEATURES,
        name=f"{FEATURES}_expectations",
        blocking=True,
        description="Great Expectations on the day's features: ids, label and features present and "
        "non-null, CTRs in [0, 1], counts ≥ 0, hour, weekday and position in range. Blocking: "
        "training stops on a bad day.",
    )
    def _check(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        return partition_check(
            context,
            warehouse,
            FEATURES,
            lambda store, con, relation, present: features_rules(spec, contract, present),
        )

    return _check
