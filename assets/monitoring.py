"""Monitoring: is today's traffic like the traffic the model learned from, and does the model earn?

Two assets, both daily partitioned on ``features``:

* ``drift_report`` (D): an Evidently report of day D against a reference sample: data drift of every
  model feature (``DataDriftPreset``), prediction drift (``predicted_ctr``, what the serving policy
  predicted) and target drift (``clicked``). The reference is the training window of the model that
  served D when the warehouse says which (the model manifest), else the window of the latest
  training set (the split manifest), else the ``reference_days`` days before D; only days before D
  that exist are used (:func:`choose_reference`). Current and reference are fixed-size samples
  (``sample_rows`` each, a seeded hash of ``impression_id``, so a rerun picks the same rows and the
  cost does not grow with traffic). ``weekday`` is left out: day D has one weekday by construction,
  so it would drift every day. The HTML report lands atomically in
  ``<data_dir>/reports/drift/date=D/drift_report.html``; the scores go to the monitoring store.

  Scores follow Evidently's methods: distances (Wasserstein, Jensen-Shannon: higher = more drift)
  for the features and the prediction by default; a two-proportion z-test for the click label
  (``target_method = "z"``: the score is a p-value, lower = more drift), because a distance barely
  moves when a 3 % CTR halves. Whether a score counts as drift is Evidently's own verdict (its
  per-column drift test), stored next to the score, so sensors need not know each method's
  direction.

* ``online_metrics`` (D): per model version that served D, from ``features`` (D) in DuckDB:
  requests, impressions, clicks, CTR, mean predicted CTR, calibration (mean predicted / observed
  CTR), normalized entropy of the served predictions (log loss / entropy of the observed CTR),
  revenue (Σ bid_cpc × clicked), revenue per 1000 requests, and the oracle capture: the share of the
  oracle policy's expected revenue that the served policy earned, when the log source knows the
  oracle (the simulator does; real logs do not; see :func:`oracle_captures` for the basis). The
  random policy predicts one constant prior: its calibration and normalized entropy are still
  defined (NE ≥ 1, = 1 when the prior equals the CTR).

``drift_report`` reads reference partitions other than D; they are chosen at run time, so the
graph shows only the dependency on ``features`` (D).
"""

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from dagster import (
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from evidently import DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset
from pydantic import Field

from assets.features import CATEGORICAL_FEATURES, LABEL, NUMERIC_FEATURES, features
from assets.guards import require_upstream_checks_passed
from assets.model import read_model_manifest, read_split_manifest
from assets.partitions import daily_partitions
from resources.landing import LogSource
from resources.monitoring_store import DriftRow, MonitoringStore, OnlineMetricsRow
from resources.warehouse import Warehouse, atomic_write_bytes, parquet_list_sql

FEATURES = "features"
PREDICTION = "predicted_ctr"
#: Left out of the drift report: one value per day by construction (always "drifts").
DRIFT_EXCLUDED: tuple[str, ...] = ("weekday",)
DRIFT_CATEGORICAL: tuple[str, ...] = tuple(
    c for c in CATEGORICAL_FEATURES if c not in DRIFT_EXCLUDED
)
DRIFT_NUMERIC: tuple[str, ...] = tuple(c for c in NUMERIC_FEATURES if c not in DRIFT_EXCLUDED)
DRIFT_FEATURES: tuple[str, ...] = DRIFT_CATEGORICAL + DRIFT_NUMERIC
#: Label of a missing categorical value (so a surge of nulls shows as drift).
MISSING = "(missing)"
#: Predictions are clipped to [EPS, 1 - EPS] in the log loss.
EPS = 1e-7
REPORT_NAME = "drift_report.html"

_VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
_DRIFTED_COLUMNS_COUNT = "evidently:metric_v2:DriftedColumnsCount"

# --- The reference window -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceChoice:
    """The partitions day D is compared with, and where the choice came from."""

    keys: tuple[str, ...]
    source: str


def choose_reference(
    day: str,
    partition_keys: Sequence[str],
    available: Sequence[str],
    training_keys: Sequence[str] | None = None,
    fallback_days: int = 7,
    training_source: str = "training window",
) -> ReferenceChoice:
    """The reference partitions of ``day``.

    The training window (``training_keys``) when it is known and lies wholly before ``day``: the
    days that exist of it. Otherwise the ``fallback_days`` partition keys just before ``day`` (by
    position in ``partition_keys``, no date arithmetic) that exist. Never ``day`` itself or a later
    day; an empty choice (the first day) has source ``"none"``.
    """
    if fallback_days < 1:
        raise ValueError(f"fallback_days must be >= 1, not {fallback_days}")
    present = set(available)
    if training_keys and max(training_keys) < day:
        keys = tuple(k for k in sorted(training_keys) if k in present)
        if keys:
            return ReferenceChoice(keys, training_source)
    keys_list = list(partition_keys)
    if day not in keys_list:
        raise ValueError(f"{day} is not a partition key")
    position = keys_list.index(day)
    before = keys_list[max(0, position - fallback_days) : position]
    keys = tuple(k for k in before if k in present)
    if keys:
        return ReferenceChoice(keys, f"{fallback_days} days before")
    return ReferenceChoice((), "none")


def known_training_window(
    warehouse: Warehouse, served_versions: Sequence[str]
) -> tuple[tuple[str, ...], str] | None:
    """The training days of the model that served the day (the model manifest, when its version
    is among ``served_versions``), else those of the latest training set (the split manifest);
    None when neither was materialized."""
    try:
        model = read_model_manifest(warehouse)
        # the version string the champion serves with (resources.serving.ChampionPolicy.version)
        if f"ctr_model-v{model.version}" in served_versions:
            return tuple(model.split.train), f"training window of ctr_model-v{model.version}"
    except FileNotFoundError:
        pass
    try:
        split = read_split_manifest(warehouse).split
    except FileNotFoundError:
        return None
    return tuple(split.train), "training window of the latest training set"


def reference_for(
    warehouse: Warehouse, con: duckdb.DuckDBPyConnection, day: str, fallback_days: int
) -> ReferenceChoice:
    """The reference of ``day`` given what the warehouse holds: the served versions of the day,
    the manifests of the model and the training set, and the ``features`` partitions present."""
    (path,) = warehouse.require_partition_paths(FEATURES, [day])
    served = [
        str(v)
        for (v,) in con.sql(f"SELECT DISTINCT model_version FROM read_parquet('{path}')").fetchall()
    ]
    window = known_training_window(warehouse, served)
    keys = daily_partitions.get_partition_keys()
    return choose_reference(
        day,
        keys,
        [k for k in keys if warehouse.has_partition(FEATURES, k)],
        training_keys=window[0] if window else None,
        fallback_days=fallback_days,
        training_source=window[1] if window else "training window",
    )


# --- Samples ------------------------------------------------------------------------------------


def sample_sql(
    paths: Sequence[Path], n: int, seed: int, columns: Sequence[str] = DRIFT_FEATURES
) -> str:
    """A deterministic uniform sample of at most ``n`` rows of the given partitions: the rows with
    the smallest seeded hash of ``impression_id`` (the same rows on every run, whatever the file
    order or thread count). Categoricals and the label become strings, numbers doubles."""
    if n < 1:
        raise ValueError(f"sample size must be >= 1, not {n}")
    select = []
    for name in dict.fromkeys([*columns, PREDICTION, LABEL]):
        if name in CATEGORICAL_FEATURES:
            select.append(f"coalesce(CAST({name} AS VARCHAR), '{MISSING}') AS {name}")
        elif name == LABEL:
            select.append(f"CAST({name} AS VARCHAR) AS {name}")
        else:
            select.append(f"CAST({name} AS DOUBLE) AS {name}")
    return (
        f"SELECT {', '.join(select)} FROM {parquet_list_sql(paths)} "
        f"ORDER BY hash(impression_id, {int(seed)}), impression_id LIMIT {int(n)}"
    )


def read_sample(
    con: duckdb.DuckDBPyConnection, paths: Sequence[Path], n: int, seed: int
) -> pd.DataFrame:
    """The sample of :func:`sample_sql` as a pandas frame."""
    return con.sql(sample_sql(paths, n, seed)).df()


def cap_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most ``max_rows`` rows of ``frame``: a seeded uniform sample when it has more."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, not {max_rows}")
    if len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=seed).sort_index()


# --- Drift (Evidently) --------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnDrift:
    """Evidently's verdict on one column: the score, its method and threshold, and whether the
    column drifted (the method knows whether high or low scores mean drift)."""

    column: str
    score: float
    method: str
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftSummary:
    """What one drift report found; ``snapshot`` is the Evidently run (for the HTML)."""

    features: tuple[ColumnDrift, ...]
    prediction: ColumnDrift | None
    target: ColumnDrift | None
    share_drifted_columns: float
    current_rows: int
    reference_rows: int
    suppressed_warnings: int = 0
    snapshot: Snapshot | None = field(default=None, repr=False, compare=False)

    @property
    def drifted(self) -> tuple[ColumnDrift, ...]:
        """The drifted feature columns, highest score first."""
        return tuple(sorted((c for c in self.features if c.drifted), key=lambda c: -c.score))

    def html(self) -> str:
        if self.snapshot is None:
            raise ValueError("this summary has no Evidently snapshot")
        return self.snapshot.get_html_str(as_iframe=False)


@contextmanager
def quiet_evidently() -> Iterator[list[warnings.WarningMessage]]:
    """Keep Evidently's (and scipy's, pandas') warnings and INFO chatter out of the run logs; the
    caught warnings are yielded so the caller can count them."""
    logger = logging.getLogger("evidently")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        logger.setLevel(level)


def _column_drifts(snapshot: Snapshot) -> tuple[dict[str, ColumnDrift], float | None]:
    """Per-column drift (ValueDrift scores + their drift tests) and DriftedColumnsCount's share,
    from the snapshot's exported dict."""
    exported = snapshot.dict()
    verdicts = {
        t["metric_config"]["metric_id"]: str(getattr(t["status"], "value", t["status"])) == "FAIL"
        for t in exported["tests"]
        if t["metric_config"]["params"].get("type") == _VALUE_DRIFT
    }
    drifts: dict[str, ColumnDrift] = {}
    share = None
    for metric in exported["metrics"]:
        config = metric["config"]
        if config["type"] == _DRIFTED_COLUMNS_COUNT:
            share = float(metric["value"]["share"])
        elif config["type"] == _VALUE_DRIFT:
            if metric["id"] not in verdicts:
                raise RuntimeError(f"Evidently gave no drift verdict for {config['column']}")
            drifts[config["column"]] = ColumnDrift(
                column=config["column"],
                score=float(metric["value"]),
                method=str(config["method"]),
                threshold=float(config["threshold"]),
                drifted=verdicts[metric["id"]],
            )
    return drifts, share


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    categorical: Sequence[str] = DRIFT_CATEGORICAL,
    numeric: Sequence[str] = DRIFT_NUMERIC,
    prediction: str | None = PREDICTION,
    target: str | None = LABEL,
    *,
    max_rows: int = 20_000,
    seed: int = 7,
    drift_share: float = 0.5,
    prediction_method: str | None = None,
    target_method: str | None = "z",
) -> DriftSummary:
    """Evidently drift of ``current`` against ``reference``: DataDriftPreset on the feature columns,
    ValueDrift on the prediction and on the target (treated as a category).

    Each frame is first capped to ``max_rows`` (seeded sample), so the cost is bounded whatever the
    inputs' size. Methods are Evidently's defaults unless given (``target_method`` defaults to the
    two-proportion z-test, see the module docstring). Logs without predictions (the prediction
    column empty on either side) get no prediction drift (``prediction`` None in the summary).
    """
    features_ = [*categorical, *numeric]
    if not features_:
        raise ValueError("compute_drift needs at least one feature column")
    needed = features_ + [c for c in (prediction, target) if c is not None]
    for name, frame in (("reference", reference), ("current", current)):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} frame lacks columns {missing}")
        if frame.empty:
            raise ValueError(f"{name} frame has no rows")
    if prediction is not None and (
        reference[prediction].isna().all() or current[prediction].isna().all()
    ):
        needed.remove(prediction)
        prediction = None
    reference = cap_rows(reference[needed], max_rows, seed)
    current = cap_rows(current[needed], max_rows, seed + 1)
    definition = DataDefinition(
        numerical_columns=[*numeric, *([prediction] if prediction else [])],
        categorical_columns=[*categorical, *([target] if target else [])],
    )
    metrics: list[Any] = [DataDriftPreset(columns=features_, drift_share=drift_share)]
    if prediction is not None:
        metrics.append(ValueDrift(column=prediction, method=prediction_method))
    if target is not None:
        metrics.append(ValueDrift(column=target, method=target_method))
    with quiet_evidently() as caught:
        snapshot = Report(metrics, include_tests=True).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
        drifts, share = _column_drifts(snapshot)
    columns = tuple(drifts[c] for c in features_)
    if share is None:
        share = sum(c.drifted for c in columns) / len(columns) if columns else 0.0
    return DriftSummary(
        features=columns,
        prediction=drifts.get(prediction) if prediction else None,
        target=drifts.get(target) if target else None,
        share_drifted_columns=share,
        current_rows=len(current),
        reference_rows=len(reference),
        suppressed_warnings=len(caught),
        snapshot=snapshot,
    )


def drift_markdown(summary: DriftSummary) -> str:
    """The drifted feature columns, then the prediction and the target, as a Markdown table."""
    lines = ["| column | score | method | threshold | drifted |", "|---|---:|---|---:|---|"]
    rows = list(summary.drifted)
    rows += [c for c in (summary.prediction, summary.target) if c is not None]
    for c in rows:
        lines.append(
            f"| {c.column} | {c.score:.4g} | {c.method} | {c.threshold:g} "
            f"| {'yes' if c.drifted else 'no'} |"
        )
    head = (
        f"{len(summary.drifted)} of {len(summary.features)} features drifted "
        f"(share {summary.share_drifted_columns:.2f})."
    )
    return head + "\n\n" + "\n".join(lines)


def drift_row(
    summary: DriftSummary, reference: ReferenceChoice, report_path: Path | None
) -> DriftRow:
    """The monitoring store's row of a drift summary."""
    prediction, target = summary.prediction, summary.target
    return DriftRow(
        share_drifted_columns=summary.share_drifted_columns,
        prediction_drift_score=prediction.score if prediction else None,
        target_drift_score=target.score if target else None,
        prediction_drifted=prediction.drifted if prediction else None,
        target_drifted=target.drifted if target else None,
        drifted_columns={
            c.column: {"score": c.score, "method": c.method, "threshold": c.threshold}
            for c in summary.drifted
        },
        reference_days=reference.keys,
        current_rows=summary.current_rows,
        reference_rows=summary.reference_rows,
        report_path=None if report_path is None else str(report_path),
    )


def report_path(warehouse: Warehouse, day: str) -> Path:
    """Where the HTML drift report of ``day`` lands."""
    return warehouse.root / "reports" / "drift" / f"date={day}" / REPORT_NAME


# --- Online metrics -----------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionTotals:
    """Additive totals of one model version's impressions on one day (the DuckDB aggregation)."""

    model_version: str
    requests: int
    impressions: int
    clicks: int
    #: impressions with a prediction, their clicks, the sum of their predictions and log loss
    scored_impressions: int
    scored_clicks: int
    predicted_sum: float
    log_loss_sum: float
    revenue: float


def ctr(clicks: int, impressions: int) -> float | None:
    """Clicks per impression; None without impressions."""
    return clicks / impressions if impressions else None


def calibration(mean_predicted: float | None, observed_ctr: float | None) -> float | None:
    """Mean predicted CTR / observed CTR (1 = calibrated, > 1 = over-predicts); None when either is
    unknown or nothing was clicked."""
    if mean_predicted is None or not observed_ctr:
        return None
    return mean_predicted / observed_ctr


def binary_entropy(p: float) -> float:
    """Entropy in nats of a Bernoulli(p): the log loss of always predicting the base rate p."""
    if not 0.0 < p < 1.0:
        return 0.0
    return -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))


def log_loss_sum(
    labels: Sequence[int] | np.ndarray, predictions: Sequence[float] | np.ndarray
) -> float:
    """Σ of the per-row log loss in nats, predictions clipped to [EPS, 1 - EPS] (as in the SQL)."""
    y = np.asarray(labels, dtype=np.float64)
    q = np.clip(np.asarray(predictions, dtype=np.float64), EPS, 1.0 - EPS)
    return float(-(y * np.log(q) + (1.0 - y) * np.log(1.0 - q)).sum())


def normalized_entropy(log_loss_total: float, n: int, clicks: int) -> float | None:
    """Mean log loss / entropy of the observed CTR (< 1: better than predicting the base rate).
    None when undefined: no rows, or no click or only clicks (zero entropy)."""
    if n == 0:
        return None
    entropy = binary_entropy(clicks / n)
    return (log_loss_total / n) / entropy if entropy > 0 else None


def revenue_per_1000_requests(revenue: float, requests: int) -> float | None:
    """Revenue per 1000 requests (page views); None without requests."""
    return 1000.0 * revenue / requests if requests else None


def oracle_capture(served: float | None, oracle: float | None) -> float | None:
    """Served revenue / oracle revenue; None when either is unknown or the oracle earns nothing."""
    if served is None or not oracle:
        return None
    return served / oracle


@dataclass(frozen=True)
class OracleTruth:
    """What the log source knows of the day's best possible revenue (simulated days only)."""

    oracle_expected_revenue: float
    #: the served policy's expected revenue on the same requests and the version that served it
    served_expected_revenue: float | None = None
    served_version: str | None = None


def oracle_truth(log_source: LogSource, day: str) -> OracleTruth | None:
    """The oracle revenue of ``day`` from a log source that knows it (the simulator), else None
    (real logs have no oracle). The served policy's expected revenue comes from its manifest."""
    oracle_revenue = getattr(log_source, "oracle_revenue", None)
    if oracle_revenue is None:
        return None
    oracle = oracle_revenue(day)
    if oracle is None:
        return None
    served, version = None, None
    manifest = getattr(log_source, "manifest", None)
    if manifest is not None:
        try:
            data = manifest(day)
        except FileNotFoundError:
            data = {}
        served, version = data.get("expected_revenue"), data.get("policy_version")
    return OracleTruth(float(oracle), None if served is None else float(served), version)


def oracle_captures(
    totals: Sequence[VersionTotals], truth: OracleTruth | None
) -> list[tuple[float | None, str | None]]:
    """(oracle capture, basis) per version.

    ``"expected"``: the day was served by one version, the one the manifest names, and both expected
    revenues are known: served expected / oracle expected, on the same requests (no click noise,
    and quarantined impressions do not count against the policy). ``"realized"`` otherwise: the
    version's revenue in the logs / the oracle's expected revenue on its share of the requests.
    """
    if truth is None or not truth.oracle_expected_revenue:
        return [(None, None) for _ in totals]
    versions = [t.model_version for t in totals]
    if truth.served_expected_revenue is not None and versions == [truth.served_version]:
        capture = oracle_capture(truth.served_expected_revenue, truth.oracle_expected_revenue)
        return [(capture, "expected")]
    all_requests = sum(t.requests for t in totals)
    share = [t.requests / all_requests if all_requests else 0.0 for t in totals]
    return [
        (oracle_capture(t.revenue, truth.oracle_expected_revenue * s), "realized")
        for t, s in zip(totals, share, strict=True)
    ]


def combine(totals: Sequence[VersionTotals], name: str = "all") -> VersionTotals:
    """The day's totals over every version."""
    return VersionTotals(
        model_version=name,
        requests=sum(t.requests for t in totals),
        impressions=sum(t.impressions for t in totals),
        clicks=sum(t.clicks for t in totals),
        scored_impressions=sum(t.scored_impressions for t in totals),
        scored_clicks=sum(t.scored_clicks for t in totals),
        predicted_sum=sum(t.predicted_sum for t in totals),
        log_loss_sum=sum(t.log_loss_sum for t in totals),
        revenue=sum(t.revenue for t in totals),
    )


def metrics_row(
    totals: VersionTotals, capture: float | None = None, basis: str | None = None
) -> OnlineMetricsRow:
    """The online metrics of one version from its totals. Calibration and normalized entropy use
    the impressions that carry a prediction."""
    scored_ctr = ctr(totals.scored_clicks, totals.scored_impressions)
    mean_predicted = (
        totals.predicted_sum / totals.scored_impressions if totals.scored_impressions else None
    )
    return OnlineMetricsRow(
        model_version=totals.model_version,
        requests=totals.requests,
        impressions=totals.impressions,
        clicks=totals.clicks,
        ctr=ctr(totals.clicks, totals.impressions),
        mean_predicted_ctr=mean_predicted,
        calibration=calibration(mean_predicted, scored_ctr),
        normalized_entropy=normalized_entropy(
            totals.log_loss_sum, totals.scored_impressions, totals.scored_clicks
        ),
        revenue=totals.revenue,
        revenue_per_1000_requests=revenue_per_1000_requests(totals.revenue, totals.requests),
        oracle_capture=capture,
        oracle_basis=basis,
    )


def online_metrics_rows(
    totals: Sequence[VersionTotals], truth: OracleTruth | None
) -> list[OnlineMetricsRow]:
    """One metrics row per version, with its oracle capture."""
    return [
        metrics_row(t, capture, basis)
        for t, (capture, basis) in zip(totals, oracle_captures(totals, truth), strict=True)
    ]


def day_row(totals: Sequence[VersionTotals], truth: OracleTruth | None) -> OnlineMetricsRow:
    """The whole day's metrics (every version together)."""
    total = combine(totals)
    rows = online_metrics_rows(totals, truth)
    if len(rows) == 1 and rows[0].oracle_basis == "expected":
        capture, basis = rows[0].oracle_capture, "expected"
    elif truth is not None:
        capture, basis = oracle_capture(total.revenue, truth.oracle_expected_revenue), "realized"
    else:
        capture, basis = None, None
    return metrics_row(total, capture, basis)


def aggregate_sql(paths: Sequence[Path]) -> str:
    """Per model version: requests, impressions, clicks and the sums the metrics need."""
    # DuckDB's least/greatest skip NULLs: an unscored row must stay NULL (out of the log loss)
    q = (
        "CASE WHEN predicted_ctr IS NOT NULL "
        f"THEN greatest(least(predicted_ctr, {1 - EPS}), {EPS}) END"
    )
    return f"""
        SELECT coalesce(CAST(model_version AS VARCHAR), '{MISSING}') AS model_version,
               count(DISTINCT request_id) AS requests,
               count(*) AS impressions,
               coalesce(sum(CAST(clicked AS BIGINT)), 0) AS clicks,
               count(predicted_ctr) AS scored_impressions,
               coalesce(sum(CAST(clicked AS BIGINT)) FILTER (predicted_ctr IS NOT NULL), 0)
                   AS scored_clicks,
               coalesce(sum(predicted_ctr), 0.0) AS predicted_sum,
               coalesce(sum(-(clicked * ln({q}) + (1 - clicked) * ln(1 - {q}))), 0.0)
                   AS log_loss_sum,
               coalesce(sum(bid_cpc * clicked), 0.0) AS revenue
        FROM {parquet_list_sql(paths)}
        GROUP BY 1 ORDER BY 1
    """


def aggregate_versions(
    con: duckdb.DuckDBPyConnection, paths: Sequence[Path]
) -> list[VersionTotals]:
    """The totals of every model version in the given ``features`` partitions."""
    return [
        VersionTotals(
            model_version=str(v),
            requests=int(r),
            impressions=int(i),
            clicks=int(c),
            scored_impressions=int(si),
            scored_clicks=int(sc),
            predicted_sum=float(ps),
            log_loss_sum=float(ll),
            revenue=float(rev),
        )
        for v, r, i, c, si, sc, ps, ll, rev in con.sql(aggregate_sql(paths)).fetchall()
    ]


def _cell(value: float | int | None, fmt: str = ".4g") -> str:
    return "" if value is None else format(value, fmt)


def online_markdown(rows: Sequence[OnlineMetricsRow], day: OnlineMetricsRow) -> str:
    """The metrics per version and for the whole day, as a Markdown table."""
    lines = [
        "| model version | requests | impressions | clicks | CTR | mean predicted | calibration "
        "| NE | revenue | revenue / 1000 req | oracle capture |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in [*rows, replace(day, model_version="**all**")]:
        lines.append(
            f"| {r.model_version} | {r.requests:,} | {r.impressions:,} | {r.clicks:,} "
            f"| {_cell(r.ctr)} | {_cell(r.mean_predicted_ctr)} | {_cell(r.calibration)} "
            f"| {_cell(r.normalized_entropy)} | {r.revenue:,.2f} "
            f"| {_cell(r.revenue_per_1000_requests, ',.2f')} | {_cell(r.oracle_capture, '.1%')} |"
        )
    return "\n".join(lines)


ORACLE_BASIS_TEXT = {
    "expected": "served policy's expected revenue / oracle's expected revenue, same requests and "
    "candidates (simulator manifest)",
    "realized": "revenue in the logs / oracle's expected revenue on the same share of requests",
    None: "no oracle: the log source does not know the best possible revenue (real logs)",
}


def online_metadata(rows: Sequence[OnlineMetricsRow], day: OnlineMetricsRow) -> dict[str, Any]:
    """What the UI shows: the table, and the day's numbers (they plot over time)."""
    return {
        "online_metrics": MetadataValue.md(online_markdown(rows, day)),
        "model_versions": MetadataValue.text(", ".join(r.model_version for r in rows) or "none"),
        "requests": day.requests,
        "impressions": day.impressions,
        "clicks": day.clicks,
        "ctr": day.ctr,
        "mean_predicted_ctr": day.mean_predicted_ctr,
        "calibration": day.calibration,
        "normalized_entropy": day.normalized_entropy,
        "revenue": day.revenue,
        "revenue_per_1000_requests": day.revenue_per_1000_requests,
        "oracle_capture": day.oracle_capture,
        "oracle_basis": MetadataValue.text(ORACLE_BASIS_TEXT[day.oracle_basis]),
    }


# --- Assets -------------------------------------------------------------------------------------


class DriftReportConfig(Config):
    sample_rows: int = Field(
        default=20_000,
        ge=100,
        description="Rows sampled from day D and from the reference (each): bounds the cost.",
    )
    seed: int = Field(default=7, description="Seed of the sampling hash.")
    reference_days: int = Field(
        default=7,
        ge=1,
        description="Days before D used as reference when no training window is known.",
    )
    drift_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of drifted features that makes the dataset drift.",
    )
    prediction_method: str | None = Field(
        default=None, description="Evidently drift method for predicted_ctr (None: Evidently's)."
    )
    target_method: str | None = Field(
        default="z",
        description="Evidently drift method for clicked (default: two-proportion z-test).",
    )

    def drift(self, reference: pd.DataFrame, current: pd.DataFrame) -> "DriftSummary":
        """:func:`compute_drift` of the two samples with this configuration."""
        return compute_drift(
            reference,
            current,
            max_rows=self.sample_rows,
            seed=self.seed,
            drift_share=self.drift_share,
            prediction_method=self.prediction_method,
            target_method=self.target_method,
        )


@asset(
    partitions_def=daily_partitions,
    deps=[features],
    group_name="monitoring",
    kinds={"evidently", "duckdb"},
)
def drift_report(
    context: AssetExecutionContext,
    config: DriftReportConfig,
    warehouse: Warehouse,
    monitoring_store: MonitoringStore,
) -> MaterializeResult:
    """Evidently drift of day D's features, served predictions and clicks against a sample of the
    training window (else the days before D); HTML report plus scores in the monitoring store."""
    day = context.partition_key
    (current_path,) = warehouse.require_partition_paths(FEATURES, [day])
    with warehouse.duckdb() as con:
        reference = reference_for(warehouse, con, day, config.reference_days)
        if not reference.keys:
            context.log.warning(
                f"drift_report {day}: no earlier features partition to compare with"
            )
            return MaterializeResult(
                metadata={"reference": MetadataValue.text("none (no earlier day)")}
            )
        require_upstream_checks_passed(context, {FEATURES: [day, *reference.keys]})
        reference_paths = warehouse.require_partition_paths(FEATURES, reference.keys)
        current = read_sample(con, [current_path], config.sample_rows, config.seed)
        ref = read_sample(con, reference_paths, config.sample_rows, config.seed)
    summary = config.drift(ref, current)
    path = atomic_write_bytes(report_path(warehouse, day), summary.html().encode("utf-8"))
    monitoring_store.write_drift(day, drift_row(summary, reference, path))
    quieted = summary.suppressed_warnings
    context.log.info(
        f"drift_report {day}: {len(summary.drifted)}/{len(summary.features)} features drifted "
        f"vs {reference.source} ({len(reference.keys)} day(s)); "
        f"{summary.current_rows:,} vs {summary.reference_rows:,} sampled rows"
        + (f"; {quieted} Evidently warning(s) suppressed" if quieted else "")
    )
    prediction, target = summary.prediction, summary.target
    return MaterializeResult(
        metadata={
            "report": MetadataValue.path(str(path)),
            "drifted_columns": MetadataValue.md(drift_markdown(summary)),
            "share_drifted_columns": summary.share_drifted_columns,
            "drifted_column_count": len(summary.drifted),
            "prediction_drift_score": prediction.score if prediction else None,
            "prediction_drifted": prediction.drifted if prediction else None,
            "prediction_drift_method": prediction.method if prediction else None,
            "target_drift_score": target.score if target else None,
            "target_drifted": target.drifted if target else None,
            "target_drift_method": target.method if target else None,
            "reference": MetadataValue.text(reference.source),
            "reference_days": MetadataValue.text(", ".join(reference.keys)),
            "current_rows": summary.current_rows,
            "reference_rows": summary.reference_rows,
        }
    )


@asset(
    partitions_def=daily_partitions,
    deps=[features],
    group_name="monitoring",
    kinds={"duckdb", "sql"},
)
def online_metrics(
    context: AssetExecutionContext,
    warehouse: Warehouse,
    monitoring_store: MonitoringStore,
    log_source: LogSource,
) -> MaterializeResult:
    """Per model version on day D: traffic, CTR, calibration, normalized entropy, revenue and the
    share of the oracle's revenue captured (simulated days); written to the monitoring store."""
    day = context.partition_key
    require_upstream_checks_passed(context, {FEATURES: [day]})
    paths = warehouse.require_partition_paths(FEATURES, [day])
    with warehouse.duckdb() as con:
        totals = aggregate_versions(con, paths)
    truth = oracle_truth(log_source, day)
    rows = online_metrics_rows(totals, truth)
    whole_day = day_row(totals, truth)
    monitoring_store.write_online_metrics(day, rows)
    context.log.info(
        f"online_metrics {day}: {', '.join(r.model_version for r in rows) or 'no traffic'}; "
        f"CTR {_cell(whole_day.ctr)}, revenue {whole_day.revenue:,.2f}, "
        f"oracle capture {_cell(whole_day.oracle_capture, '.1%') or 'n/a'}"
    )
    return MaterializeResult(metadata=online_metadata(rows, whole_day))


#: The assets of this module, for the one ``Definitions``.
monitoring_assets = [drift_report, online_metrics]
