"""The champion's daily recalibration: what the ad server applies to its scores on day D."""

import pyarrow as pa
import xgboost as xgb
from dagster import AssetDep, AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset

from assets.events import AD_EVENTS
from assets.guards import require_upstream_checks_passed
from assets.partitions import IMPRESSIONS_OF_STATISTICS_SHIFT, STATISTICS_OF_LABELLED_DAY, Calendar
from assets.raw_logs import RAW_TABLES
from clickloop.calibration import (
    DAILY_TAGS,
    POOLED_DAYS,
    SERVING_CALIBRATION,
    Calibration,
    carried_to_serving_statistics,
    fit_serving_day,
    impressions_features,
    rescored_features,
    write_serving_calibration,
)
from clickloop.contract import LogContract
from clickloop.features import FeatureSpec
from clickloop.model import TEST_DAY_TAG, VALIDATION_DAY_TAG
from clickloop.presentation import markdown_table
from clickloop.ranking import STATS_TABLE
from clickloop.storage import Warehouse
from resources.tracking import ModelRegistry
from resources.warehouse import WarehouseResource


def serving_calibration_asset(calendar: Calendar, contract: LogContract) -> AssetsDefinition:
    spec = FeatureSpec.from_contract(contract)

    @asset(
        name=SERVING_CALIBRATION,
        partitions_def=calendar.partitions,
        deps=[
            AssetDep(AD_EVENTS, partition_mapping=calendar.recalibration_days),
            AssetDep(STATS_TABLE, partition_mapping=calendar.statistics_of_recalibration),
            AssetDep(RAW_TABLES["impressions"], partition_mapping=IMPRESSIONS_OF_STATISTICS_SHIFT),
        ],
        group_name="serving",
        kinds={"xgboost", "parquet"},
        description="The champion's Platt calibration for serving day D, fitted on the newest day "
        "whose labels were final when D began (D-2): its score of each impression as the ad server "
        "computed it, against the click, with the features of D-1's statistics (the newest that "
        "leave D-2 out, one day behind those D is served with). A version that did not serve D-2 "
        f"(its first served days) is fitted on up to {POOLED_DAYS} such days pooled, from its "
        "validation day on. Its intercept is then carried to D's statistics (statistics_shift): "
        "D-1's impressions keep their calibrated total when scored with them. The ad server "
        "applies it on D; the newest one is also on the model version's page in the registry "
        "(tags daily_calibration.*).",
    )
    def _serving_calibration(
        context: AssetExecutionContext, warehouse: WarehouseResource, model_registry: ModelRegistry
    ) -> MaterializeResult:
        day = context.partition_key
        store = warehouse.get()
        window = {name: context.asset_partition_keys_for_input(name) for name in (AD_EVENTS, STATS_TABLE)}
        labelled, stats = ([k for k in window[name] if store.has_partition(name, k)] for name in window)
        newest = max(window[AD_EVENTS], default=None)  # D-2, built or not
        # each labelled day with the statistics it is re-scored with, the newest (D-2) first
        pairs = [
            (k, after)
            for k in sorted(labelled, reverse=True)
            for after in calendar.upstream_days(STATISTICS_OF_LABELLED_DAY, k)
            if after in stats
        ]
        champion = model_registry.champion()
        missing = {
            "no champion yet": champion is None,
            "no labelled day before it yet": not labelled,
            f"no events of {newest} or no statistics of the day after it": not pairs or pairs[0][0] != newest,
        }
        if champion is None or any(missing.values()):
            why = next(reason for reason, true in missing.items() if true)
            context.log.info(f"{SERVING_CALIBRATION} {day}: {why}; the champion keeps its last calibration")
            return MaterializeResult(metadata={"status": f"not fitted: {why}"})
        require_upstream_checks_passed(context, {AD_EVENTS: [k for k, _ in pairs]})
        version, booster = champion
        statistics_of = dict(pairs)

        def features_of(labelled_day: str) -> pa.Table:
            (events_path,) = store.require_partition_paths(AD_EVENTS, [labelled_day])
            (stats_path,) = store.require_partition_paths(STATS_TABLE, [statistics_of[labelled_day]])
            with store.duckdb() as con:
                return rescored_features(con, spec, events_path, stats_path)

        tags = model_registry.version_tags(version)
        first_unseen = tags.get(VALIDATION_DAY_TAG) or tags.get(TEST_DAY_TAG)
        fitted = fit_serving_day(booster, spec, version, [k for k, _ in pairs], features_of, first_unseen)
        fitted, shifted_on = _carried_to_day(context, store, spec, booster, fitted, stats_of_fit=pairs[0][1])
        path = write_serving_calibration(store, day, fitted)
        model_registry.set_version_tags(version, fitted.to_tags(DAILY_TAGS))
        summary = fitted.summary()
        context.log.info(f"{SERVING_CALIBRATION} {day}: {summary}")
        return MaterializeResult(
            metadata={
                "status": "fitted" if not fitted.is_identity else "identity (too few clicks to fit)",
                "model_version": version,
                "fitted_on": fitted.fitted_on,
                "statistics_of": pairs[0][1],
                "statistics_shift": round(fitted.statistics_shift, 4),
                "shift_measured_on": shifted_on,
                "slope": round(fitted.slope, 4),
                "intercept": round(fitted.intercept, 4),
                "calibration_before": summary["calibration_before"],
                "calibration_after": summary["calibration_after"],
                "summary": MetadataValue.md(markdown_table(list(summary), [list(summary.values())])),
                "path": MetadataValue.path(str(path)),
            }
        )

    return _serving_calibration


def _carried_to_day(
    context: AssetExecutionContext,
    store: Warehouse,
    spec: FeatureSpec,
    booster: xgb.Booster,
    fitted: Calibration,
    stats_of_fit: str,
) -> tuple[Calibration, str]:
    """``fitted`` carried to the statistics of the serving day on the impressions of the day before
    it, and what it was measured on; as fitted when either is not built yet (or it is the identity)."""
    day, raw = context.partition_key, RAW_TABLES["impressions"]
    (previous,) = context.asset_partition_keys_for_input(raw) or [None]
    if fitted.is_identity:
        return fitted, "not carried: the identity (too few clicks to fit)"
    if previous is None or not store.has_partition(raw, previous):
        return fitted, f"not carried: no impressions of {previous or 'the day before'}"
    if not store.has_partition(STATS_TABLE, day):
        return fitted, f"not carried: no statistics of {day}"
    (impressions,) = store.require_partition_paths(raw, [previous])
    stats = store.require_partition_paths(STATS_TABLE, [stats_of_fit, day])
    with store.duckdb() as con:
        before, after = (impressions_features(con, spec, impressions, path) for path in stats)
    carried = carried_to_serving_statistics(booster, spec, fitted, before, after)
    return carried, f"impressions of {previous} ({before.num_rows:,}), statistics of {stats_of_fit} → {day}"
