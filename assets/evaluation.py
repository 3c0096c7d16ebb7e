"""Model evaluation on the test day, and the promotion gate (``champion_model``)."""

from typing import Any

import pandas as pd
from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets.guards import code_location_graph, upstream_check_report
from clickloop.ablation import ablate_test_set, ablation_markdown
from clickloop.calibration import PROMOTION_TAGS, fit_day
from clickloop.contract import LogContract
from clickloop.evaluation import (
    BASE_RATE,
    CHAMPION,
    GROUND_TRUTH,
    HISTORICAL_CTR,
    MODEL,
    MODEL_EVALUATION,
    EvaluationOutcome,
    EvaluationParams,
    comparison_markdown,
    evaluate_model,
    read_evaluation,
    slices_markdown,
)
from clickloop.explanations import mean_abs_contributions, shap_markdown, shap_summary_png
from clickloop.features import FeatureSpec
from clickloop.gains import offline_gain_tags
from clickloop.model import CTR_MODEL, load_booster, model_file, read_model_manifest
from clickloop.presentation import png_markdown, significant
from clickloop.promotion import GatePolicy, gate_decision
from clickloop.split import FEATURES, TEST_SET, TRAINING_SET, TimeSplit, read_split_manifest, set_path
from clickloop.storage import read_parquet
from resources.landing import LogSource
from resources.rollout import RolloutResource
from resources.tracking import ModelRegistry
from resources.warehouse import WarehouseResource

CHAMPION_MODEL = "champion_model"
_EVALUATION = EvaluationParams()
_GATE = GatePolicy()


class EvaluationConfig(Config):
    top_fraction: float = Field(
        default=_EVALUATION.top_fraction, gt=0.0, le=1.0, description="Operating point: flag this share."
    )
    reliability_bins: int = Field(default=_EVALUATION.reliability_bins, ge=1, le=100)
    slice_columns: list[str] | None = Field(
        default=None, description="Slice columns; default: the log contract's slices and ad seen in training."
    )

    def params(self) -> EvaluationParams:
        columns = None if self.slice_columns is None else tuple(self.slice_columns)
        return EvaluationParams(self.top_fraction, self.reliability_bins, columns)


class PromotionConfig(Config):
    ne_margin: float = Field(
        default=_GATE.ne_margin, ge=0.0, description="NE to gain over champion and baselines."
    )
    slice_tolerance: float = Field(
        default=_GATE.slice_tolerance, ge=0.0, description="Most NE an important slice may lose."
    )
    slice_min_rows: int = Field(
        default=_GATE.slice_min_rows, ge=1, description="Rows that make a slice important."
    )
    slice_min_clicks: int = Field(
        default=_GATE.slice_min_clicks, ge=0, description="Clicks that make it important."
    )

    def policy(self) -> GatePolicy:
        return GatePolicy(self.ne_margin, self.slice_tolerance, self.slice_min_rows, self.slice_min_clicks)


def evaluation_metadata(outcome: EvaluationOutcome) -> dict[str, Any]:
    """Numbers that plot over time in the UI, the comparison, the reliability plot and the slices."""
    evaluation = outcome.evaluation
    model = evaluation.metrics[MODEL]
    metadata: dict[str, Any] = {
        "model_version": evaluation.version,
        "test_day": evaluation.test_day,
        "dagster/row_count": model.rows,
        "auc": round(model.auc, 4),
        "log_loss": significant(model.log_loss),
        "normalized_entropy": round(model.normalized_entropy, 4),
        "calibration": round(model.calibration, 3),
        "precision_at_top": round(model.precision_at_top, 4),
        "recall_at_top": round(model.recall_at_top, 4),
        "test_ctr": round(model.observed_ctr, 5),
        "comparison": MetadataValue.md(comparison_markdown(evaluation.metrics, outcome.labels)),
        "reliability": MetadataValue.md(png_markdown(outcome.reliability_png, "reliability curve")),
        "reliability_plot": MetadataValue.path(str(outcome.reliability_path)),
        "slices": MetadataValue.md(slices_markdown(outcome.slice_table, list(evaluation.metrics))),
        "champion_version": evaluation.champion_version or "none",
    }
    for name in (CHAMPION, BASE_RATE, HISTORICAL_CTR, GROUND_TRUTH):
        if name in evaluation.metrics:
            metadata[f"{name}_normalized_entropy"] = round(evaluation.metrics[name].normalized_entropy, 4)
            metadata[f"{name}_auc"] = round(evaluation.metrics[name].auc, 4)
    if CHAMPION in evaluation.metrics:
        change = model.normalized_entropy - evaluation.metrics[CHAMPION].normalized_entropy
        metadata["ne_change_vs_champion"] = round(change, 5)
    if evaluation.champion_error:
        metadata["champion_error"] = evaluation.champion_error
    return metadata


def model_evaluation_asset(contract: LogContract):
    spec = FeatureSpec.from_contract(contract)

    @asset(
        name=MODEL_EVALUATION,
        deps=[CTR_MODEL, TEST_SET, TRAINING_SET],
        group_name="model",
        kinds={"xgboost", "matplotlib"},
        description="The new model, the champion, two baselines and (where known) the ground truth "
        "on the same test rows: AUC, log loss, normalized entropy, calibration, reliability, "
        "precision/recall, per slice.",
    )
    def _model_evaluation(
        context: AssetExecutionContext,
        config: EvaluationConfig,
        warehouse: WarehouseResource,
        model_registry: ModelRegistry,
        log_source: LogSource,
    ) -> MaterializeResult:
        store = warehouse.get()
        outcome = evaluate_model(
            store,
            spec,
            contract.evaluation_slices,
            read_model_manifest(store),
            read_split_manifest(store),
            model_registry.champion(),
            log_source.ground_truth,
            config.params(),
        )
        for warning in outcome.warnings:
            context.log.warning(warning)
        evaluation = outcome.evaluation
        context.log.info(
            f"model_evaluation v{evaluation.version} on {evaluation.test_day}: "
            + ", ".join(f"{n} NE {m.normalized_entropy:.4f}" for n, m in evaluation.metrics.items())
        )
        booster = load_booster(model_file(store, read_model_manifest(store)))
        test = read_parquet(set_path(store, TEST_SET))
        importance = mean_abs_contributions(booster, test)
        ablation = ablate_test_set(booster, test)
        # what the ad server applies to this version's scores until it has served a labelled day
        calibration = fit_day(booster, test, spec, evaluation.version, evaluation.test_day)
        # kept on the version, in one registry write: the offline side of online_metrics'
        # offline-vs-online gain table, and the calibration fitted at evaluation
        tags = {**offline_gain_tags(evaluation), **calibration.to_tags(PROMOTION_TAGS)}
        model_registry.set_version_tags(evaluation.version, tags)
        png = shap_summary_png(importance, f"Mean |SHAP| of v{evaluation.version} on {evaluation.test_day}")
        return MaterializeResult(
            metadata={
                **evaluation_metadata(outcome),
                "shap_summary": MetadataValue.md(png_markdown(png, "mean |SHAP value| per feature")),
                "shap_values": MetadataValue.md(shap_markdown(importance)),
                "feature_ablation": MetadataValue.md(ablation_markdown(ablation)),
                "features_not_improving_ne": MetadataValue.text(", ".join(ablation.flagged) or "none"),
                "serving_calibration": MetadataValue.json(calibration.summary()),
            }
        )

    return _model_evaluation


@asset(name=CHAMPION_MODEL, deps=[MODEL_EVALUATION], group_name="model", kinds={"mlflow"})
def champion_model(
    context: AssetExecutionContext,
    config: PromotionConfig,
    warehouse: WarehouseResource,
    model_registry: ModelRegistry,
    rollout: RolloutResource,
) -> MaterializeResult:
    """The promotion gate: the evaluated version becomes the registry's champion only if every
    upstream blocking check passed and it beats the champion and the baselines, overall and on
    every important slice. With the rollout on (and a champion to compare with) it becomes the
    challenger instead, and earns its traffic in shadow and canary (``rollout_decision``)."""
    evaluation = read_evaluation(warehouse.get())
    current = model_registry.champion_version()
    if current == evaluation.version:
        context.log.info(f"v{evaluation.version} is already the champion")
        return MaterializeResult(
            metadata={"decision": "already champion", "champion_version": current, "promoted": False}
        )
    checks = upstream_check_report(
        context.instance,
        code_location_graph(context),
        context.asset_key,
        AssetKey(FEATURES),
        TimeSplit.from_dict(evaluation.split).keys,
    )
    decision = gate_decision(evaluation, checks, current, config.policy())
    if decision.promote and rollout.enabled and current is not None:
        model_registry.set_challenger(evaluation.version, "shadow", pd.Timestamp.now(tz="UTC").isoformat())
        context.log.info(f"v{evaluation.version} passed the gate: challenger in shadow (champion v{current})")
        return MaterializeResult(
            metadata={
                "decision": "challenger",
                "promoted": False,
                "candidate_version": evaluation.version,
                "challenger_version": evaluation.version,
                "champion_version": current,
                "previous_champion_version": current,
                "failed_criteria": 0,
                "upstream_checks_verified": checks.verified,
                "criteria": MetadataValue.md(decision.markdown()),
            }
        )
    if decision.promote:
        model_registry.promote(evaluation.version, reason=f"gate passed on {evaluation.test_day}")
        champion = evaluation.version
        context.log.info(f"promoted v{evaluation.version} (previous champion: {current or 'none'})")
    else:
        champion = current
        context.log.warning(
            f"v{evaluation.version} not promoted: " + "; ".join(c.name for c in decision.failed)
        )
    return MaterializeResult(
        metadata={
            "decision": "promoted" if decision.promote else "refused",
            "promoted": decision.promote,
            "candidate_version": evaluation.version,
            "champion_version": champion or "none",
            "previous_champion_version": current or "none",
            "failed_criteria": len(decision.failed),
            "upstream_checks_verified": checks.verified,
            "criteria": MetadataValue.md(decision.markdown()),
            "champion_page": MetadataValue.url(model_registry.model_version_url(champion))
            if champion
            else MetadataValue.text("no champion"),
        }
    )
