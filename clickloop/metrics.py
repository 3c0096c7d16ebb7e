"""The one definition of every model metric, offline (evaluation) and online (served traffic) alike.

Every metric is defined on additive totals (rows, clicks, the sum of predictions, the sum of the log
loss), so the evaluation of a test day in numpy and the online metrics of a served day aggregated in
DuckDB (:func:`log_loss_sql`) give the same number for the same rows. An undefined metric (no rows,
no clicks, a one-class set) is NaN.

* log loss: mean binary cross-entropy in nats, predictions clipped to
  [``PROBABILITY_EPS``, 1 − ``PROBABILITY_EPS``];
* normalized entropy (NE): log loss / entropy of the observed CTR of the same rows (1 = "knows the
  CTR and nothing else", lower is better);
* calibration: Σ predicted / Σ clicks (1 = calibrated on average, > 1 over-predicts), with the
  interval the day's clicks leave it (:func:`calibration_interval`);
* AUC: Mann–Whitney U with ties counted as one half;
* revenue per 1000 requests and the oracle capture (served revenue / the oracle's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: Predictions are clipped to [EPS, 1 - EPS] in the log loss, offline and online.
PROBABILITY_EPS = 1e-7
#: Labels, scores or probabilities: any 1-d sequence of numbers.
Floats = Sequence[float] | np.ndarray
NAN = float("nan")


def as_arrays(labels: Floats, scores: Floats) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(scores, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels and predictions must be 1-d of one length: {y.shape} vs {p.shape}")
    return y, p


def is_defined(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def or_none(value: float | None) -> float | None:
    """NaN as None (what a database column or a JSON document holds for 'undefined')."""
    return value if is_defined(value) else None


# --- From totals ---------------------------------------------------------------------------------


def ctr(clicks: float, impressions: float) -> float:
    """Clicks per impression; NaN without impressions."""
    return clicks / impressions if impressions else NAN


def binary_entropy(rate: float) -> float:
    """Entropy in nats of a Bernoulli(rate): the log loss of predicting the rate everywhere."""
    if not 0.0 < rate < 1.0:
        return 0.0
    return float(-(rate * math.log(rate) + (1.0 - rate) * math.log(1.0 - rate)))


def normalized_entropy_from_totals(log_loss_total: float, rows: int, clicks: float) -> float:
    """Mean log loss / entropy of the observed CTR; NaN with no rows, no click or only clicks."""
    if rows == 0:
        return NAN
    base = binary_entropy(clicks / rows)
    return (log_loss_total / rows) / base if base > 0 else NAN


def calibration_from_totals(predicted_sum: float, clicks: float) -> float:
    """Σ predicted / Σ clicks; NaN without clicks."""
    return predicted_sum / clicks if clicks > 0 else NAN


#: the confidence of the calibration's interval
CALIBRATION_CONFIDENCE = 0.95


def calibration_interval(
    predicted_sum: float, clicks: float, confidence: float = CALIBRATION_CONFIDENCE
) -> tuple[float, float]:
    """The interval of the calibration Σ predicted / E[Σ clicks] that ``clicks`` clicks leave open:
    Σ predicted over the exact (Garwood) Poisson interval of the expected clicks. A day's clicks
    are a count: 400 of them leave the calibration ±10 % open, so a day's 0.90 on 400 clicks is not
    evidence of a miscalibrated model, and a calibration fitted on a day inherits that day's count
    too. (Clicks are Bernoulli, with a variance a little under the Poisson one at a CTR of a few
    per cent: the interval is a little conservative.) NaN bounds without a prediction; the upper
    bound is NaN without a click."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must lie in (0, 1)")
    if predicted_sum <= 0 or clicks < 0:
        return NAN, NAN
    from scipy.stats import chi2  # (only when computed: the code location stays light)

    tail = (1.0 - confidence) / 2.0
    low_clicks = float(chi2.ppf(tail, 2.0 * clicks)) / 2.0 if clicks > 0 else 0.0
    high_clicks = float(chi2.ppf(1.0 - tail, 2.0 * clicks + 2.0)) / 2.0
    return predicted_sum / high_clicks, (predicted_sum / low_clicks if low_clicks > 0 else NAN)


def revenue_per_1000_requests(revenue: float, requests: int) -> float:
    return 1000.0 * revenue / requests if requests else NAN


def clicks_per_1000_requests(clicks: float, requests: int) -> float:
    """The business metric of logs without a price: clicks per 1000 requests."""
    return 1000.0 * clicks / requests if requests else NAN


def oracle_capture(served: float | None, oracle: float | None) -> float:
    """Served revenue / oracle revenue; NaN when either is unknown or the oracle earns nothing."""
    if served is None or not oracle:
        return NAN
    return served / oracle


# --- From rows -----------------------------------------------------------------------------------


def clipped(probabilities: Floats) -> np.ndarray:
    return np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)


def row_log_losses(labels: Floats, probabilities: Floats) -> np.ndarray:
    """Each row's log loss in nats (clipped as in :func:`log_loss_sql`)."""
    y, p = as_arrays(labels, probabilities)
    q = clipped(p)
    return -(y * np.log(q) + (1.0 - y) * np.log(1.0 - q))


def log_loss_sum(labels: Floats, probabilities: Floats) -> float:
    """Σ of the per-row log loss in nats (:func:`row_log_losses`)."""
    return float(row_log_losses(labels, probabilities).sum())


def log_loss(labels: Floats, probabilities: Floats) -> float:
    y, _ = as_arrays(labels, probabilities)
    return log_loss_sum(labels, probabilities) / len(y) if len(y) else NAN


def normalized_entropy(labels: Floats, probabilities: Floats) -> float:
    y, _ = as_arrays(labels, probabilities)
    return normalized_entropy_from_totals(log_loss_sum(labels, probabilities), len(y), float(y.sum()))


def calibration(labels: Floats, probabilities: Floats) -> float:
    y, p = as_arrays(labels, probabilities)
    return calibration_from_totals(float(p.sum()), float(y.sum()))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def auc(labels: Floats, scores: Floats) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted as one half); NaN with one class."""
    y, s = as_arrays(labels, scores)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return NAN
    rank_sum = _average_ranks(s)[y == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def precision_recall_at_top(labels: Floats, scores: Floats, fraction: float) -> tuple[float, float, float]:
    """Precision and recall when the top ``fraction`` of rows by score are flagged.

    Returns (precision, recall, threshold score). Exactly ceil(fraction * n) rows are flagged;
    ties at the threshold are taken in row order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    y, s = as_arrays(labels, scores)
    if len(y) == 0:
        return NAN, NAN, NAN
    k = max(1, math.ceil(fraction * len(y)))
    top = np.argsort(-s, kind="stable")[:k]
    hits = y[top].sum()
    clicks = y.sum()
    return float(hits / k), float(hits / clicks) if clicks > 0 else NAN, float(s[top[-1]])


def reliability_curve(labels: Floats, probabilities: Floats, bins: int = 10) -> pd.DataFrame:
    """Observed CTR against mean predicted CTR in quantile bins of the prediction.

    Quantile bins hold about equally many rows (CTR predictions crowd near 0); rows with equal
    predictions always share a bin, so there may be fewer bins than asked.
    """
    y, p = as_arrays(labels, probabilities)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, not {bins}")
    columns = ["bin", "lower", "upper", "rows", "mean_predicted", "observed_ctr"]
    if len(y) == 0:
        return pd.DataFrame(columns=columns)
    edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, bins + 1)))
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    frame = pd.DataFrame({"bin": index, "p": p, "y": y})
    grouped = frame.groupby("bin", sort=True).agg(
        lower=("p", "min"),
        upper=("p", "max"),
        rows=("p", "size"),
        mean_predicted=("p", "mean"),
        observed_ctr=("y", "mean"),
    )
    grouped = grouped.reset_index()
    grouped["bin"] = range(len(grouped))
    return grouped[columns]


# --- The same definitions in SQL -----------------------------------------------------------------


def log_loss_sql(label: str, prediction: str) -> str:
    """DuckDB expression of one row's log loss, clipped as :func:`log_loss_sum`; NULL when the
    prediction is NULL (DuckDB's least/greatest skip NULLs, so the CASE keeps it out)."""
    eps = PROBABILITY_EPS
    q = f"CASE WHEN {prediction} IS NOT NULL THEN greatest(least({prediction}, {1 - eps!r}), {eps!r}) END"
    return f"-({label} * ln({q}) + (1 - {label}) * ln(1 - {q}))"
