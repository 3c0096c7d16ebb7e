"""What exists: the Dagster assets and checks of the loop, one module per stage.

The graph's shape depends on two settings, so it is built by :func:`loop_assets`: the calendar (the
first day, the history window of the features) and the log contract (a click log or labelled
impressions).
"""

from dagster import AssetChecksDefinition, AssetsDefinition

from assets.calibration import serving_calibration_asset
from assets.evaluation import champion_model, model_evaluation_asset
from assets.events import ad_events_asset, ad_events_check
from assets.features import feature_stats_asset, features_asset, features_check
from assets.model import ctr_model_asset, training_and_test_sets
from assets.monitoring import drift_report_asset, online_metrics_asset
from assets.partitions import Calendar
from assets.raw_logs import raw_log_assets
from assets.rollout import rollout_decision_asset
from assets.serving import (
    ad_catalog_asset,
    online_features_asset,
    online_features_check,
    serving_skew_check,
)
from assets.validation import learned_suite_check, validation_suite_asset
from clickloop.contract import LogContract


def loop_assets(
    calendar: Calendar, contract: LogContract
) -> tuple[list[AssetsDefinition], list[AssetChecksDefinition]]:
    """Every asset and asset check of the loop, for one calendar and one log contract."""
    raw, raw_checks = raw_log_assets(calendar, contract)
    assets = [
        *raw,
        ad_events_asset(calendar, contract),
        feature_stats_asset(calendar, contract),
        serving_calibration_asset(calendar, contract),
        features_asset(calendar, contract),
        training_and_test_sets,
        ctr_model_asset(contract),
        model_evaluation_asset(contract),
        champion_model,
        validation_suite_asset(contract),
        drift_report_asset(calendar, contract),
        online_metrics_asset(calendar, contract),
        rollout_decision_asset(contract),
        ad_catalog_asset(calendar, contract),
        online_features_asset(calendar, contract),
    ]
    checks = [
        *raw_checks,
        ad_events_check(calendar, contract),
        features_check(calendar, contract),
        learned_suite_check(calendar),
        online_features_check(calendar, contract),
    ]
    if contract.has_served_predictions:  # the logs say which version served and what it predicted
        checks.append(serving_skew_check(calendar, contract))
    return assets, checks
