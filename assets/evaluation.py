"""Model evaluation on the test day, and the promotion gate.

``model_evaluation`` scores the test day (never seen in training) with every contender, on the
same rows:

==================  ===================================================================
contender           prediction
==================  ===================================================================
``model``           the newly trained ``ctr_model`` version (downsampling corrected)
``champion``        the version the registry's ``champion`` alias points at, if any
``base_rate``       the training days' click-through rate, for every row
``historical_ctr``  the smoothed historical CTR of the ad (``hist_ad_ctr``), a one-feature model
``ground_truth``    the simulator's true click probability (only with the simulator): the best
                    any model could do
==================  ===================================================================

Metrics: AUC, log loss, normalized entropy (NE = log loss / entropy of the test day's observed
CTR: 1 is "knows the CTR and nothing else", lower is better), calibration (mean predicted / observed
CTR), a reliability curve over quantile bins, and precision/recall at the operating point that flags
the top ``top_fraction`` of impressions by predicted CTR (ties in time order). The same metrics per
slice: device, country, position, site category and whether the ad was seen in the training days.

``champion_model`` is the promotion gate: the evaluated version becomes champion only when every
blocking asset check upstream passed on the latest data of the partitions used (read from the
Dagster instance), it beats the champion and both baselines on NE by ``ne_margin``, and no
important slice is worse than the champion by more than ``slice_tolerance``. Every criterion is
in the metadata, with its outcome.
"""

import base64
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xgboost as xgb
from dagster import (
    AssetExecutionContext,
    AssetKey,
    Config,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
    asset,
)
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import Field

from assets.features import LABEL
from assets.guards import (
    CheckProblem,
    blocking_checks_on,
    check_problems,
    code_location_graph,
    upstream_partitions,
)
from assets.model import (
    CTR_MODEL,
    FEATURES,
    SPLIT_COLUMN,
    TEST_SET,
    TRAIN,
    TRAINING_SET,
    TimeSplit,
    load_booster,
    predict_ctr,
    read_model_manifest,
    read_split_manifest,
    set_path,
)
from resources.landing import LogSource
from resources.tracking import ModelRegistry
from resources.warehouse import Warehouse, atomic_write_bytes

MODEL_EVALUATION = "model_evaluation"
CHAMPION_MODEL = "champion_model"
MODEL = "model"
CHAMPION = "champion"
BASE_RATE = "base_rate"
HISTORICAL_CTR = "historical_ctr"
GROUND_TRUTH = "ground_truth"
#: The feature used as the historical-CTR baseline: the ad's smoothed CTR before the day.
HISTORICAL_CTR_FEATURE = "hist_ad_ctr"
BASELINES = (BASE_RATE, HISTORICAL_CTR)
SEEN_AD = "ad_seen_in_training"
DEFAULT_SLICES = ("device_type", "country", "position", "site_category", SEEN_AD)
NULL_VALUE = "(null)"
_EPS = 1e-15
#: Labels, scores or probabilities: any 1-d sequence of numbers.
Floats = Sequence[float] | np.ndarray


# --- Metrics (pure) -------------------------------------------------------------------------------


def _arrays(labels: Floats, scores: Floats) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(scores, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels and predictions must be 1-d of one length: {y.shape} vs {p.shape}")
    return y, p


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def auc(labels: Floats, scores: Floats) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted as one half); NaN with one class."""
    y, s = _arrays(labels, scores)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    rank_sum = _average_ranks(s)[y == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def log_loss(labels: Floats, probabilities: Floats) -> float:
    """Mean binary cross-entropy (natural log); probabilities are clipped to [1e-15, 1 - 1e-15]."""
    y, p = _arrays(labels, probabilities)
    if len(y) == 0:
        return float("nan")
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def entropy(rate: float) -> float:
    """Binary entropy (nats) of a click-through rate: the log loss of predicting it everywhere."""
    if not 0.0 < rate < 1.0:
        return 0.0
    return float(-(rate * math.log(rate) + (1.0 - rate) * math.log(1.0 - rate)))


def normalized_entropy(labels: Floats, probabilities: Floats) -> float:
    """Log loss divided by the entropy of the observed CTR of the same rows (NaN if it is 0 or 1)."""
    y, _ = _arrays(labels, probabilities)
    base = entropy(float(y.mean())) if len(y) else 0.0
    return log_loss(labels, probabilities) / base if base > 0 else float("nan")


def calibration(labels: Floats, probabilities: Floats) -> float:
    """Mean predicted CTR / observed CTR (1 is calibrated on average; NaN without clicks)."""
    y, p = _arrays(labels, probabilities)
    clicks = y.sum()
    return float(p.sum() / clicks) if clicks > 0 else float("nan")


def precision_recall_at_top(
    labels: Floats, scores: Floats, fraction: float
) -> tuple[float, float, float]:
    """Precision and recall when the top ``fraction`` of rows by score are flagged.

    Returns (precision, recall, threshold score). Exactly ceil(fraction * n) rows are flagged;
    ties at the threshold are taken in row order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    y, s = _arrays(labels, scores)
    if len(y) == 0:
        return float("nan"), float("nan"), float("nan")
    k = max(1, math.ceil(fraction * len(y)))
    top = np.argsort(-s, kind="stable")[:k]
    hits = y[top].sum()
    clicks = y.sum()
    return float(hits / k), float(hits / clicks) if clicks > 0 else float("nan"), float(s[top[-1]])


def reliability_curve(
    labels: Floats, probabilities: Floats, bins: int = 10
) -> pd.DataFrame:
    """Observed CTR against mean predicted CTR in quantile bins of the prediction.

    Quantile bins hold about equally many rows (CTR predictions crowd near 0); rows with equal
    predictions always share a bin, so there may be fewer bins than asked.
    """
    y, p = _arrays(labels, probabilities)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, not {bins}")
    columns = ["bin", "lower", "upper", "rows", "mean_predicted", "observed_ctr"]
    if len(y) == 0:
        return pd.DataFrame(columns=columns)
    edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, bins + 1)))
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    frame = pd.DataFrame({"bin": index, "p": p, "y": y})
    grouped = frame.groupby("bin", sort=True).agg(
        lower=("p", "min"), upper=("p", "max"), rows=("p", "size"), mean_predicted=("p", "mean"),
        observed_ctr=("y", "mean"),
    )
    grouped = grouped.reset_index()
    grouped["bin"] = range(len(grouped))
    return grouped[columns]


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


def compute_metrics(
    labels: Floats, probabilities: Floats, top_fraction: float = 0.1
) -> Metrics:
    y, p = _arrays(labels, probabilities)
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


# --- Presentation -------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


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
            f"| {labels.get(name, name)} | {_fmt(m.normalized_entropy)} | {_fmt(m.log_loss)} "
            f"| {_fmt(m.auc)} | {_fmt(m.calibration, '.3f')} | {_fmt(m.mean_predicted)} "
            f"| {_fmt(m.precision_at_top)} | {_fmt(m.recall_at_top)} |"
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
        cells = [row["slice"], row["value"], f"{row['rows']:,}", _fmt(row["ctr"])]
        cells += [_fmt(row.get(f"{c}_ne")) for c in contenders]
        if has_champion:
            cells.append(_fmt(row[f"{MODEL}_ne"] - row[f"{CHAMPION}_ne"], "+.4f"))
        cells.append(_fmt(row[f"{MODEL}_calibration"], ".3f"))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def reliability_png(curves: Mapping[str, pd.DataFrame], title: str) -> bytes:
    """A PNG of observed against predicted CTR per contender (log axes, diagonal = calibrated)."""
    figure = Figure(figsize=(6.0, 4.5), dpi=90)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    points = [c for c in curves.values() if len(c)]
    values = np.concatenate(
        [np.r_[c["mean_predicted"].to_numpy(), c["observed_ctr"].to_numpy()] for c in points]
    ) if points else np.array([0.01, 0.1])
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
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def embedded_png_markdown(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


# --- The evaluation -------------------------------------------------------------------------------


class EvaluationConfig(Config):
    top_fraction: float = Field(
        default=0.1, gt=0.0, le=1.0, description="Operating point: flag this share of impressions."
    )
    reliability_bins: int = Field(default=10, ge=1, le=100)
    slice_columns: list[str] = Field(default=list(DEFAULT_SLICES))


@dataclass(frozen=True)
class Evaluation:
    """The evaluation record the gate reads (JSON under ``<data_dir>/evaluation``)."""

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
        data = asdict(self)
        return json.dumps(data, indent=2, default=float)

    @classmethod
    def from_json(cls, text: str) -> "Evaluation":
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


def training_ads(training_set: Path) -> set[str]:
    """The ad ids of the training days (what 'seen in training' means for a test row)."""
    table = pq.read_table(training_set, columns=["ad_id", SPLIT_COLUMN])
    train = table.filter(pc.equal(table.column(SPLIT_COLUMN), TRAIN))
    return set(pc.unique(train.column("ad_id")).to_pylist())


def slice_frame(test: pa.Table, columns: Sequence[str], seen_ads: set[str]) -> pd.DataFrame:
    """The slice columns of the test rows; ``ad_seen_in_training`` is derived from ``seen_ads``."""
    frame = pd.DataFrame(index=range(test.num_rows))
    for column in columns:
        if column == SEEN_AD:
            ads = test.column("ad_id").to_pylist()
            frame[column] = ["seen" if a in seen_ads else "unseen" for a in ads]
        else:
            frame[column] = test.column(column).to_pandas()
    return frame


def contender_predictions(
    test: pa.Table,
    model: xgb.Booster,
    train_base_rate: float,
    ground_truth: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The model's, the baselines' and (with a simulator) the true CTR of the test rows."""
    predictions = {
        MODEL: predict_ctr(model, test),
        BASE_RATE: np.full(test.num_rows, train_base_rate, dtype=np.float64),
        HISTORICAL_CTR: test.column(HISTORICAL_CTR_FEATURE).to_numpy().astype(np.float64),
    }
    if ground_truth is not None:
        predictions[GROUND_TRUTH] = np.asarray(ground_truth, dtype=np.float64)
    return predictions


def evaluate(
    labels: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    slices: pd.DataFrame,
    top_fraction: float,
) -> tuple[dict[str, Metrics], pd.DataFrame]:
    """Overall metrics per contender, and the per-slice table."""
    overall = {name: compute_metrics(labels, p, top_fraction) for name, p in predictions.items()}
    return overall, slice_metrics(slices, labels, predictions, list(slices.columns))


def _ground_truth(log_source: LogSource, test: pa.Table) -> np.ndarray | None:
    """The simulator's true CTR of the test rows; None for a log source without ground truth."""
    oracle = getattr(log_source, "ground_truth_ctr", None)
    if oracle is None:
        return None
    return np.asarray(oracle(test.to_pandas()), dtype=np.float64)


def score_champion(
    registry: ModelRegistry, test: pa.Table
) -> tuple[str | None, np.ndarray | None, str | None]:
    """(champion version, its predictions, why it could not score) for the test rows.

    A champion trained on other features than today's cannot score them: that is reported (the
    gate then refuses), not raised, so the evaluation of the new model is still recorded.
    """
    found = registry.champion()
    if found is None:
        return None, None, None
    version, booster = found
    try:
        return version, predict_ctr(booster, test), None
    except (ValueError, KeyError, xgb.core.XGBoostError) as exc:
        return version, None, f"champion v{version} cannot score the test set: {exc}"


@asset(
    deps=[CTR_MODEL, TEST_SET, TRAINING_SET],
    group_name="model",
    kinds={"xgboost", "matplotlib"},
)
def model_evaluation(
    context: AssetExecutionContext,
    config: EvaluationConfig,
    warehouse: Warehouse,
    model_registry: ModelRegistry,
    log_source: LogSource,
) -> MaterializeResult:
    """The new model, the champion, two baselines and the ground truth on the same test rows:
    AUC, log loss, normalized entropy, calibration, reliability, precision/recall, per slice."""
    manifest = read_model_manifest(warehouse)
    split_manifest = read_split_manifest(warehouse)
    if split_manifest.split != manifest.split:
        raise ValueError(
            f"test_set was rebuilt ({split_manifest.split.to_dict()}) after ctr_model v"
            f"{manifest.version} was trained on {manifest.split.to_dict()}: rematerialize ctr_model"
        )
    test = pq.read_table(set_path(warehouse, TEST_SET))
    labels = test.column(LABEL).to_numpy().astype(np.float64)
    predictions = contender_predictions(
        test,
        load_booster(Path(manifest.model_path)),
        split_manifest.train_base_rate,
        _ground_truth(log_source, test),
    )
    champion_version, champion_scores, champion_error = score_champion(model_registry, test)
    if champion_scores is not None:
        predictions[CHAMPION] = champion_scores
    if champion_error:
        context.log.warning(champion_error)
    seen = training_ads(set_path(warehouse, TRAINING_SET))
    slices = slice_frame(test, config.slice_columns, seen)
    overall, slice_table = evaluate(labels, predictions, slices, config.top_fraction)
    evaluation = Evaluation(
        version=manifest.version,
        run_id=manifest.run_id,
        test_day=manifest.split.test,
        split=manifest.split.to_dict(),
        champion_version=champion_version,
        champion_error=champion_error,
        train_base_rate=split_manifest.train_base_rate,
        metrics=overall,
        slices=slice_table.to_dict("records"),
    )
    atomic_write_bytes(evaluation_path(warehouse), evaluation.to_json().encode())
    names = contender_labels(manifest.version, champion_version)
    curves = {
        names[n]: reliability_curve(labels, p, config.reliability_bins) for n, p in predictions.items()
    }
    png = reliability_png(curves, f"Reliability on {manifest.split.test}")
    plot_path = evaluation_dir(warehouse) / f"reliability-v{manifest.version}.png"
    atomic_write_bytes(plot_path, png)
    context.log.info(
        f"model_evaluation v{manifest.version} on {manifest.split.test}: "
        + ", ".join(f"{n} NE {m.normalized_entropy:.4f}" for n, m in overall.items())
    )
    metadata = evaluation_metadata(evaluation, names, slice_table, png, plot_path)
    return MaterializeResult(metadata=metadata)


def contender_labels(version: str, champion_version: str | None) -> dict[str, str]:
    return {
        MODEL: f"model v{version}",
        CHAMPION: f"champion v{champion_version}",
        BASE_RATE: "base rate (training CTR)",
        HISTORICAL_CTR: "historical ad CTR",
        GROUND_TRUTH: "ground truth (oracle)",
    }


def evaluation_metadata(
    evaluation: Evaluation,
    names: Mapping[str, str],
    slice_table: pd.DataFrame,
    png: bytes,
    plot_path: Path,
) -> dict[str, Any]:
    """Numeric metadata (plotted over time by the UI) and the comparison, plot and slice tables."""
    model = evaluation.metrics[MODEL]
    metadata: dict[str, Any] = {
        "model_version": evaluation.version,
        "test_day": evaluation.test_day,
        "dagster/row_count": model.rows,
        "auc": model.auc,
        "log_loss": model.log_loss,
        "normalized_entropy": model.normalized_entropy,
        "calibration": model.calibration,
        "precision_at_top": model.precision_at_top,
        "recall_at_top": model.recall_at_top,
        "test_ctr": model.observed_ctr,
        "comparison": MetadataValue.md(comparison_markdown(evaluation.metrics, names)),
        "reliability": MetadataValue.md(embedded_png_markdown(png, "reliability curve")),
        "reliability_plot": MetadataValue.path(str(plot_path)),
        "slices": MetadataValue.md(slices_markdown(slice_table, list(evaluation.metrics))),
    }
    for name in (CHAMPION, BASE_RATE, HISTORICAL_CTR, GROUND_TRUTH):
        if name in evaluation.metrics:
            metadata[f"{name}_normalized_entropy"] = evaluation.metrics[name].normalized_entropy
            metadata[f"{name}_auc"] = evaluation.metrics[name].auc
    if CHAMPION in evaluation.metrics:
        champion_ne = evaluation.metrics[CHAMPION].normalized_entropy
        metadata["ne_change_vs_champion"] = model.normalized_entropy - champion_ne
    metadata["champion_version"] = evaluation.champion_version or "none"
    if evaluation.champion_error:
        metadata["champion_error"] = evaluation.champion_error
    return metadata


# --- The promotion gate ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    """One condition of the gate and its outcome."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    """Whether to promote, and every criterion behind it."""

    promote: bool
    criteria: tuple[Criterion, ...]

    @property
    def failed(self) -> tuple[Criterion, ...]:
        return tuple(c for c in self.criteria if not c.passed)

    def markdown(self) -> str:
        lines = ["| criterion | outcome | detail |", "|---|---|---|"]
        for c in self.criteria:
            lines.append(f"| {c.name} | {'✅ pass' if c.passed else '❌ fail'} | {c.detail} |")
        return "\n".join(lines)


@dataclass(frozen=True)
class SliceComparison:
    """The candidate's and the champion's NE on one slice value."""

    slice: str
    value: str
    rows: int
    clicks: int
    candidate_ne: float
    champion_ne: float


@dataclass(frozen=True)
class GatePolicy:
    ne_margin: float = 0.001
    slice_tolerance: float = 0.01
    slice_min_rows: int = 1000
    slice_min_clicks: int = 20


def _beats(name: str, candidate: float, other: float, margin: float) -> Criterion:
    """The candidate's NE is at least ``margin`` below ``other``'s."""
    passed = math.isfinite(candidate) and math.isfinite(other) and candidate <= other - margin
    return Criterion(
        f"beats {name} on NE",
        passed,
        f"NE {_fmt(candidate)} vs {_fmt(other)} (needs ≤ {_fmt(other - margin)}, margin {margin:g})",
    )


def important(slice_: SliceComparison, policy: GatePolicy) -> bool:
    return slice_.rows >= policy.slice_min_rows and slice_.clicks >= policy.slice_min_clicks


def decide_promotion(
    candidate_ne: float,
    baseline_ne: Mapping[str, float],
    champion_ne: float | None,
    slices: Sequence[SliceComparison],
    failed_checks: Sequence[str],
    policy: GatePolicy = GatePolicy(),
    checks_verified: int | None = None,
) -> Decision:
    """Promote only if no blocking check failed, the candidate beats every baseline and the
    champion (when there is one) on NE by ``policy.ne_margin``, and no important slice (enough rows
    and clicks) is worse than the champion's by more than ``policy.slice_tolerance`` NE."""
    counted = "" if checks_verified is None else f" ({checks_verified} check evaluations verified)"
    criteria = [
        Criterion(
            "upstream blocking checks passed",
            not failed_checks,
            ("all passed" if not failed_checks else "; ".join(failed_checks)) + counted,
        )
    ]
    if not baseline_ne:
        criteria.append(Criterion("baselines evaluated", False, "no baseline was evaluated"))
    criteria += [_beats(name, candidate_ne, ne, policy.ne_margin) for name, ne in baseline_ne.items()]
    if champion_ne is None:
        criteria.append(Criterion("beats champion on NE", True, "no champion yet"))
    else:
        criteria.append(_beats("champion", candidate_ne, champion_ne, policy.ne_margin))
        for s in slices:
            if not important(s, policy):
                continue
            change = s.candidate_ne - s.champion_ne
            ok = math.isfinite(change) and change <= policy.slice_tolerance
            criteria.append(
                Criterion(
                    f"slice {s.slice}={s.value} not worse than champion",
                    ok,
                    f"NE {_fmt(s.candidate_ne)} vs {_fmt(s.champion_ne)} (Δ {_fmt(change, '+.4f')}, "
                    f"tolerance {policy.slice_tolerance:g}, {s.rows:,} rows)",
                )
            )
    return Decision(all(c.passed for c in criteria), tuple(criteria))


def slice_comparisons(slices: Iterable[Mapping[str, Any]]) -> list[SliceComparison]:
    """The candidate-vs-champion rows of an evaluation's slice table (empty without a champion)."""
    return [
        SliceComparison(
            str(r["slice"]), str(r["value"]), int(r["rows"]), int(r["clicks"]),
            float(r[f"{MODEL}_ne"]), float(r[f"{CHAMPION}_ne"]),
        )
        for r in slices
        if f"{CHAMPION}_ne" in r
    ]


# --- Reading the upstream checks from the instance --------------------------------------------------


@dataclass(frozen=True)
class CheckReport:
    """What the gate verified upstream: how many (check, partition) evaluations, and which failed."""

    verified: int
    problems: list[CheckProblem]

    @property
    def failed(self) -> list[str]:
        return [f"{p.check} on {p.partition}: {p.problem}" for p in self.problems]


def upstream_check_report(
    instance: DagsterInstance, graph: BaseAssetGraph, gate: AssetKey, feature_keys: Sequence[str]
) -> CheckReport:
    """Every upstream blocking check of the gate on the data it used: the partitions the split's
    ``features`` days were built from (through the partition mappings) and the non-partitioned
    assets upstream of the gate. A check that failed, never ran, is still running or is older
    than the latest materialization of its partition is a problem."""
    partitions = upstream_partitions(graph, AssetKey(FEATURES), feature_keys)
    partitioned_checks = blocking_checks_on(graph, partitions)
    plain = [k for k in graph.get_ancestor_asset_keys(gate) if not graph.get(k).is_partitioned]
    plain_checks = blocking_checks_on(graph, plain)
    problems = check_problems(instance, partitioned_checks, partitions) + check_problems(
        instance, plain_checks
    )
    verified = sum(len(partitions[k.asset_key]) for k in partitioned_checks) + len(plain_checks)
    return CheckReport(verified, problems)


class PromotionConfig(Config):
    ne_margin: float = Field(
        default=0.001, ge=0.0, description="NE the candidate must gain over the champion and baselines."
    )
    slice_tolerance: float = Field(
        default=0.01, ge=0.0, description="Most NE an important slice may lose against the champion."
    )
    slice_min_rows: int = Field(default=1000, ge=1, description="Rows that make a slice important.")
    slice_min_clicks: int = Field(default=20, ge=0, description="Clicks that make a slice important.")

    def policy(self) -> GatePolicy:
        return GatePolicy(
            self.ne_margin, self.slice_tolerance, self.slice_min_rows, self.slice_min_clicks
        )


def gate_decision(
    evaluation: Evaluation, checks: CheckReport, current_champion: str | None, policy: GatePolicy
) -> Decision:
    """The gate on an evaluation record; an evaluation against another champion than the current
    one, or one whose champion could not be scored, is refused."""
    metrics = evaluation.metrics
    champion = metrics.get(CHAMPION)
    decision = decide_promotion(
        metrics[MODEL].normalized_entropy,
        {name: metrics[name].normalized_entropy for name in BASELINES if name in metrics},
        None if champion is None else champion.normalized_entropy,
        slice_comparisons(evaluation.slices),
        checks.failed,
        policy,
        checks.verified,
    )
    extra = []
    if current_champion != evaluation.champion_version:
        extra.append(
            Criterion(
                "evaluated against the current champion",
                False,
                f"evaluated against {evaluation.champion_version or 'none'}, champion is now "
                f"{current_champion or 'none'}: rematerialize {MODEL_EVALUATION}",
            )
        )
    if evaluation.champion_error:
        extra.append(Criterion("champion scored on the test set", False, evaluation.champion_error))
    criteria = decision.criteria + tuple(extra)
    return Decision(all(c.passed for c in criteria), criteria)


@asset(deps=[MODEL_EVALUATION], group_name="model", kinds={"mlflow"})
def champion_model(
    context: AssetExecutionContext,
    config: PromotionConfig,
    warehouse: Warehouse,
    model_registry: ModelRegistry,
) -> MaterializeResult:
    """The promotion gate: the evaluated version becomes the registry's champion only if every
    upstream blocking check passed and it beats the champion and the baselines, overall and on
    every important slice."""
    evaluation = read_evaluation(warehouse)
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
        TimeSplit.from_dict(evaluation.split).keys,
    )
    decision = gate_decision(evaluation, checks, current, config.policy())
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
