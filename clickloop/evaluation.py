"""Model evaluation on the test day: every contender on the same rows, overall and per slice.

==================  ===================================================================
contender           prediction
==================  ===================================================================
``model``           the newly trained version (downsampling corrected)
``champion``        the version the registry's ``champion`` alias points at, if any
``base_rate``       the training days' click-through rate, for every row
``historical_ctr``  the ad's smoothed historical CTR, a one-feature model
``ground_truth``    the true click probability, when the log source knows it (the simulator):
                    the best any model could do
==================  ===================================================================

Metrics (:mod:`clickloop.metrics`): AUC, log loss, normalized entropy, calibration, a reliability
curve, and precision/recall when the top ``top_fraction`` of impressions by predicted CTR are
flagged. The same per slice: the contract's slices and whether the ad was seen in training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import xgboost as xgb

from clickloop.contract import AD_ID, LABEL
from clickloop.features import FeatureSpec, ctr_feature
from clickloop.metrics import (
    Floats,
    as_arrays,
    auc,
    calibration,
    log_loss,
    normalized_entropy,
    precision_recall_at_top,
    reliability_curve,
)
from clickloop.model import ModelManifest, load_booster, model_file, predict_ctr
from clickloop.presentation import figure_png, fmt, new_figure
from clickloop.split import SPLIT_COLUMN, TEST_SET, TRAIN, TRAINING_SET, SplitManifest, set_path
from clickloop.storage import StoragePath, Warehouse, atomic_write_bytes, atomic_write_text, read_parquet

MODEL_EVALUATION = "model_evaluation"
MODEL = "model"
CHAMPION = "champion"
BASE_RATE = "base_rate"
HISTORICAL_CTR = "historical_ctr"
GROUND_TRUTH = "ground_truth"
BASELINES = (BASE_RATE, HISTORICAL_CTR)
SEEN_AD = "ad_seen_in_training"
NULL_VALUE = "(null)"
#: The true click probability of rows of a features table, where the log source knows it.
GroundTruth = Callable[[pa.Table], np.ndarray]


@dataclass(frozen=True)
class EvaluationParams:
    #: the operating point: flag this share of impressions
    top_fraction: float = 0.1
    reliability_bins: int = 10
    #: slice columns; None: the contract's slices, and whether the ad was seen in training
    slice_columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Metrics:
    """Every metric of one contender on one set of rows."""

    rows: int
    clicks: int
    observed_ctr: float
    mean_predicted: float
    auc: float
    log_loss: float
    normalized_entropy: float
    calibration: float
    precision_at_top: float
    recall_at_top: float
    top_fraction: float


def compute_metrics(labels: Floats, probabilities: Floats, top_fraction: float = 0.1) -> Metrics:
    y, p = as_arrays(labels, probabilities)
    precision, recall, _ = precision_recall_at_top(y, p, top_fraction)
    return Metrics(
        rows=len(y),
        clicks=int(y.sum()),
        observed_ctr=float(y.mean()) if len(y) else float("nan"),
        mean_predicted=float(p.mean()) if len(p) else float("nan"),
        auc=auc(y, p),
        log_loss=log_loss(y, p),
        normalized_entropy=normalized_entropy(y, p),
        calibration=calibration(y, p),
        precision_at_top=precision,
        recall_at_top=recall,
        top_fraction=top_fraction,
    )


def slice_metrics(
    slices: pd.DataFrame,
    labels: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    columns: Sequence[str],
) -> pd.DataFrame:
    """NE, AUC and calibration of every contender on every value of every slice column.

    One row per (slice, value): ``rows``, ``clicks``, ``ctr`` and ``<contender>_ne``,
    ``<contender>_auc``, ``<contender>_calibration``. Each slice's NE uses its own CTR.
    """
    records = []
    for column in columns:
        values = slices[column].astype("object").where(slices[column].notna(), NULL_VALUE).astype(str)
        for value in sorted(values.unique()):
            mask = (values == value).to_numpy()
            y = labels[mask]
            record: dict[str, Any] = {
                "slice": column,
                "value": value,
                "rows": int(mask.sum()),
                "clicks": int(y.sum()),
                "ctr": float(y.mean()),
            }
            for name, p in predictions.items():
                record[f"{name}_ne"] = normalized_entropy(y, p[mask])
                record[f"{name}_auc"] = auc(y, p[mask])
                record[f"{name}_calibration"] = calibration(y, p[mask])
            records.append(record)
    return pd.DataFrame.from_records(records)


# --- Presentation ---------------------------------------------------------------------------------


def comparison_markdown(metrics: Mapping[str, Metrics], labels: Mapping[str, str]) -> str:
    """The contenders side by side (rows: contenders; best NE first)."""
    top = next(iter(metrics.values())).top_fraction if metrics else 0.1
    lines = [
        f"| contender | NE | log loss | AUC | calibration | mean pred | precision@top{top:.0%} "
        f"| recall@top{top:.0%} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def rank(name: str) -> tuple[bool, float]:
        ne = metrics[name].normalized_entropy
        return math.isnan(ne), ne

    order = sorted(metrics, key=rank)
    for name in order:
        m = metrics[name]
        lines.append(
            f"| {labels.get(name, name)} | {fmt(m.normalized_entropy)} | {fmt(m.log_loss)} "
            f"| {fmt(m.auc)} | {fmt(m.calibration, '.3f')} | {fmt(m.mean_predicted)} "
            f"| {fmt(m.precision_at_top)} | {fmt(m.recall_at_top)} |"
        )
    return "\n".join(lines)


def slices_markdown(table: pd.DataFrame, contenders: Sequence[str]) -> str:
    """Per-slice NE of every contender, with the model's change against the champion."""
    has_champion = f"{CHAMPION}_ne" in table.columns
    header = ["slice", "value", "rows", "CTR", *(f"{c} NE" for c in contenders)]
    if has_champion:
        header.append("Δ NE vs champion")
    header.append("model calibration")
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in table.to_dict("records"):
        cells = [row["slice"], row["value"], f"{row['rows']:,}", fmt(row["ctr"])]
        cells += [fmt(row.get(f"{c}_ne")) for c in contenders]
        if has_champion:
            cells.append(fmt(row[f"{MODEL}_ne"] - row[f"{CHAMPION}_ne"], "+.4f"))
        cells.append(fmt(row[f"{MODEL}_calibration"], ".3f"))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def reliability_png(curves: Mapping[str, pd.DataFrame], title: str) -> bytes:
    """A PNG of observed against predicted CTR per contender (log axes, diagonal = calibrated)."""
    figure = new_figure()
    ax = figure.add_subplot(1, 1, 1)
    points = [c for c in curves.values() if len(c)]
    values = (
        np.concatenate([np.r_[c["mean_predicted"].to_numpy(), c["observed_ctr"].to_numpy()] for c in points])
        if points
        else np.array([0.01, 0.1])
    )
    positive = values[values > 0]
    low = max(float(positive.min()) / 1.5, 1e-5) if len(positive) else 1e-3
    high = min(float(values.max()) * 1.5, 1.0) if len(values) else 1.0
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for name, curve in curves.items():
        if len(curve):
            observed = curve["observed_ctr"].clip(lower=low)  # an empty bin's 0 sits on the axis
            ax.plot(curve["mean_predicted"], observed, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("mean predicted CTR (quantile bin)")
    ax.set_ylabel("observed CTR")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return figure_png(figure)


# --- The evaluation record (what the gate reads) --------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """The evaluation of one model version (JSON under ``<data_dir>/evaluation``)."""

    version: str
    run_id: str
    test_day: str
    split: dict[str, Any]
    champion_version: str | None
    champion_error: str | None
    train_base_rate: float
    metrics: dict[str, Metrics]
    slices: list[dict[str, Any]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=float)

    @classmethod
    def from_json(cls, text: str) -> Evaluation:
        data = json.loads(text)
        data["metrics"] = {k: Metrics(**v) for k, v in data["metrics"].items()}
        return cls(**data)


def evaluation_dir(warehouse: Warehouse) -> Path:
    return warehouse.root / "evaluation"


def evaluation_path(warehouse: Warehouse) -> Path:
    return evaluation_dir(warehouse) / f"{MODEL_EVALUATION}.json"


def read_evaluation(warehouse: Warehouse) -> Evaluation:
    path = evaluation_path(warehouse)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialize {MODEL_EVALUATION} first")
    return Evaluation.from_json(path.read_text())


# --- Contenders and slices ------------------------------------------------------------------------


def training_ads(training_set: StoragePath) -> set[str]:
    """The ad ids of the training days (what 'seen in training' means for a test row)."""
    table = read_parquet(training_set, columns=[AD_ID, SPLIT_COLUMN])
    train = table.filter(pc.equal(table.column(SPLIT_COLUMN), TRAIN))
    return set(pc.unique(train.column(AD_ID)).to_pylist())


def slice_frame(test: pa.Table, columns: Sequence[str], seen_ads: set[str]) -> pd.DataFrame:
    """The slice columns of the test rows; ``ad_seen_in_training`` is derived from ``seen_ads``."""
    frame = pd.DataFrame(index=range(test.num_rows))
    for column in columns:
        if column == SEEN_AD:
            ads = test.column(AD_ID).to_pylist()
            frame[column] = ["seen" if a in seen_ads else "unseen" for a in ads]
        else:
            frame[column] = test.column(column).to_pandas()
    return frame


def historical_ctr_feature(spec: FeatureSpec) -> str | None:
    """The baseline's one feature: the ad's smoothed historical CTR (else the first entity's)."""
    entity = next((e for e in spec.entities if e.columns == (AD_ID,)), spec.seen_entity)
    return None if entity is None else ctr_feature(entity)


def contender_predictions(
    spec: FeatureSpec,
    test: pa.Table,
    model: xgb.Booster,
    train_base_rate: float,
    ground_truth: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The model's, the baselines' and (where known) the true CTR of the test rows."""
    predictions = {
        MODEL: predict_ctr(model, test),
        BASE_RATE: np.full(test.num_rows, train_base_rate, dtype=np.float64),
    }
    feature = historical_ctr_feature(spec)
    if feature is not None:
        predictions[HISTORICAL_CTR] = test.column(feature).to_numpy().astype(np.float64)
    if ground_truth is not None:
        predictions[GROUND_TRUTH] = np.asarray(ground_truth, dtype=np.float64)
    return predictions


def score_champion(
    champion: tuple[str, xgb.Booster] | None, test: pa.Table
) -> tuple[str | None, np.ndarray | None, str | None]:
    """(champion version, its predictions, why it could not score) for the test rows.

    A champion trained on other features than today's cannot score them: that is reported (the
    gate then refuses), not raised, so the evaluation of the new model is still recorded.
    """
    if champion is None:
        return None, None, None
    version, booster = champion
    try:
        return version, predict_ctr(booster, test), None
    except (ValueError, KeyError, xgb.core.XGBoostError) as exc:
        return version, None, f"champion v{version} cannot score the test set: {exc}"


def evaluate(
    labels: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    slices: pd.DataFrame,
    top_fraction: float,
) -> tuple[dict[str, Metrics], pd.DataFrame]:
    """Overall metrics per contender, and the per-slice table."""
    overall = {name: compute_metrics(labels, p, top_fraction) for name, p in predictions.items()}
    return overall, slice_metrics(slices, labels, predictions, list(slices.columns))


def contender_labels(version: str, champion_version: str | None) -> dict[str, str]:
    return {
        MODEL: f"model v{version}",
        CHAMPION: f"champion v{champion_version}",
        BASE_RATE: "base rate (training CTR)",
        HISTORICAL_CTR: "historical ad CTR",
        GROUND_TRUTH: "ground truth (oracle)",
    }


@dataclass(frozen=True)
class EvaluationOutcome:
    """An evaluation with what the UI shows of it."""

    evaluation: Evaluation
    labels: dict[str, str]
    slice_table: pd.DataFrame
    reliability_png: bytes
    reliability_path: Path
    warnings: list[str] = field(default_factory=list)


def evaluate_model(
    warehouse: Warehouse,
    spec: FeatureSpec,
    slice_columns: Sequence[str],
    model: ModelManifest,
    split: SplitManifest,
    champion: tuple[str, xgb.Booster] | None,
    ground_truth: GroundTruth | None,
    params: EvaluationParams = EvaluationParams(),
) -> EvaluationOutcome:
    """Score the test set with every contender, write the evaluation record and its reliability
    plot (atomically), and return them."""
    if split.split != model.split:
        raise ValueError(
            f"test_set was rebuilt ({split.split.to_dict()}) after ctr_model v{model.version} was "
            f"trained on {model.split.to_dict()}: rematerialize ctr_model"
        )
    test = read_parquet(set_path(warehouse, TEST_SET))
    labels = test.column(LABEL).to_numpy().astype(np.float64)
    truth = None if ground_truth is None else ground_truth(test)
    predictions = contender_predictions(
        spec, test, load_booster(model_file(warehouse, model)), split.train_base_rate, truth
    )
    champion_version, champion_scores, champion_error = score_champion(champion, test)
    if champion_scores is not None:
        predictions[CHAMPION] = champion_scores
    columns = list(params.slice_columns or (*slice_columns, SEEN_AD))
    slices = slice_frame(test, columns, training_ads(set_path(warehouse, TRAINING_SET)))
    overall, slice_table = evaluate(labels, predictions, slices, params.top_fraction)
    evaluation = Evaluation(
        version=model.version,
        run_id=model.run_id,
        test_day=model.split.test,
        split=model.split.to_dict(),
        champion_version=champion_version,
        champion_error=champion_error,
        train_base_rate=split.train_base_rate,
        metrics=overall,
        slices=slice_table.to_dict("records"),
    )
    atomic_write_text(evaluation_path(warehouse), evaluation.to_json())
    names = contender_labels(model.version, champion_version)
    curves = {names[n]: reliability_curve(labels, p, params.reliability_bins) for n, p in predictions.items()}
    png = reliability_png(curves, f"Reliability on {model.split.test}")
    plot_path = atomic_write_bytes(evaluation_dir(warehouse) / f"reliability-v{model.version}.png", png)
    return EvaluationOutcome(
        evaluation, names, slice_table, png, plot_path, [champion_error] if champion_error else []
    )
