"""The champion's daily recalibration: what the ad server applies to its scores on day D."""

from dagster import AssetDep, AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset

from assets.guards import require_upstream_checks_passed
from assets.partitions import Calendar
from clickloop.calibration import DAILY_TAGS, SERVING_CALIBRATION, fit_day, write_serving_calibration
from clickloop.contract import LogContract
from clickloop.features import FeatureSpec
from clickloop.presentation import markdown_table
from clickloop.split import FEATURES
from resources.tracking import ModelRegistry
from resources.warehouse import WarehouseResource


def serving_calibration_asset(calendar: Calendar, contract: LogContract) -> AssetsDefinition:
    spec = FeatureSpec.from_contract(contract)

    @asset(
        name=SERVING_CALIBRATION,
        partitions_def=calendar.partitions,
        deps=[AssetDep(FEATURES, partition_mapping=calendar.newest_labelled_day)],
        group_name="serving",
        kinds={"xgboost", "parquet"},
        description="The champion's Platt calibration for serving day D, fitted on the newest day "
        "whose labels were final when D began (D-2): its score of each impression as the ad server "
        "computed it, against the click. The ad server applies it on D; the newest one is also on the "
        "model version's page in the registry (tags daily_calibration.*).",
    )
    def _serving_calibration(
        context: AssetExecutionContext, warehouse: WarehouseResource, model_registry: ModelRegistry
    ) -> MaterializeResult:
        day = context.partition_key
        store = warehouse.get()
        labelled = [
            k for k in context.asset_partition_keys_for_input(FEATURES) if store.has_partition(FEATURES, k)
        ]
        champion = model_registry.champion()
        if champion is None or not labelled:
            why = "no champion yet" if champion is None else "no labelled day before it yet"
            context.log.info(f"{SERVING_CALIBRATION} {day}: {why}; the champion serves its raw scores")
            return MaterializeResult(metadata={"status": f"not fitted: {why}"})
        require_upstream_checks_passed(context, {FEATURES: labelled})
        version, booster = champion
        fitted = fit_day(booster, store.read_partition(FEATURES, labelled[0]), spec, version, labelled[0])
        path = write_serving_calibration(store, day, fitted)
        model_registry.set_version_tags(version, fitted.to_tags(DAILY_TAGS))
        summary = fitted.summary()
        context.log.info(f"{SERVING_CALIBRATION} {day}: {summary}")
        return MaterializeResult(
            metadata={
                "status": "fitted" if not fitted.is_identity else "identity (too few clicks to fit)",
                "model_version": version,
                "fitted_on": fitted.fitted_on,
                "slope": round(fitted.slope, 4),
                "intercept": round(fitted.intercept, 4),
                "calibration_before": summary["calibration_before"],
                "calibration_after": summary["calibration_after"],
                "summary": MetadataValue.md(markdown_table(list(summary), [list(summary.values())])),
                "path": MetadataValue.path(str(path)),
            }
        )

    return _serving_calibration
