"""Online metrics: how each served model version did on a day, from the logged impressions.

Per model version that served day D, aggregated in DuckDB from ``features`` (D): requests,
impressions, clicks, CTR, mean predicted CTR, calibration (with the interval the day's clicks leave
it) and normalized entropy of the served predictions (the definitions of :mod:`clickloop.metrics`,
on the impressions that carry a prediction), revenue (Σ bid × clicked), revenue per 1000 requests,
and the oracle capture: the share of the oracle policy's expected revenue the served policy earned, when the log source knows the
oracle (the simulator does; real logs do not; see :func:`oracle_captures`). Logs without a price
have no revenue: their business metric is clicks per 1000 requests, and the metadata says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from clickloop.contract import BID, LABEL, MODEL_VERSION, PREDICTED_CTR, REQUEST_ID, LogContract
from clickloop.features import FeatureSpec, impressions_feature
from clickloop.metrics import (
    CALIBRATION_CONFIDENCE,
    calibration_from_totals,
    calibration_interval,
    clicks_per_1000_requests,
    ctr,
    log_loss_sql,
    normalized_entropy_from_totals,
    or_none,
    oracle_capture,
    revenue_per_1000_requests,
)
from clickloop.presentation import figure_png, fmt, markdown_table, new_figure
from clickloop.storage import parquet_list_sql

#: The version of impressions logged without one (a policy that does not say what it is).
UNKNOWN_VERSION = "(missing)"


@dataclass(frozen=True)
class OnlineMetricsRow:
    """The online metrics of one model version on one day (None where a metric is undefined)."""

    model_version: str
    requests: int
    impressions: int
    clicks: int
    ctr: float | None
    mean_predicted_ctr: float | None
    calibration: float | None
    normalized_entropy: float | None
    #: None for logs without a price
    revenue: float | None
    revenue_per_1000_requests: float | None
    oracle_capture: float | None
    #: how ``oracle_capture`` was computed ("expected" or "realized"); None without an oracle
    oracle_basis: str | None = None
    clicks_per_1000_requests: float | None = None
    #: share of impressions whose ad had no history when it was served (cold start)
    cold_start_share: float | None = None
    #: the interval the day's clicks leave the calibration (:func:`clickloop.metrics.calibration_interval`)
    calibration_low: float | None = None
    calibration_high: float | None = None


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
    revenue: float | None
    #: impressions whose ad had no history in the serving day's statistics (None: not known)
    cold_impressions: int | None = None


@dataclass(frozen=True)
class OracleTruth:
    """What the log source knows of the day's best possible revenue (simulated days only)."""

    oracle_expected_revenue: float
    #: the served policy's expected revenue on the same requests and the version that served it
    served_expected_revenue: float | None = None
    served_version: str | None = None


@dataclass(frozen=True)
class OnlineColumns:
    """Which of the loop's columns the logs have (from the contract)."""

    request: str | None = REQUEST_ID
    bid: str | None = BID
    model_version: str | None = MODEL_VERSION
    prediction: str | None = PREDICTED_CTR
    #: the history count of the served ad (a feature): 0 means the ad was new to the statistics
    history: str | None = None

    @classmethod
    def of(cls, contract: LogContract) -> OnlineColumns:
        has = contract.impressions.has
        seen = FeatureSpec.from_contract(contract).seen_entity
        return cls(
            request=REQUEST_ID if has(REQUEST_ID) else None,
            bid=BID if has(BID) else None,
            model_version=MODEL_VERSION if has(MODEL_VERSION) else None,
            prediction=PREDICTED_CTR if has(PREDICTED_CTR) else None,
            history=None if seen is None else impressions_feature(seen),
        )


def aggregate_sql(paths: Sequence[Path], columns: OnlineColumns = OnlineColumns()) -> str:
    """Per model version: requests, impressions, clicks and the sums the metrics need. Without a
    request id every impression is its own request."""
    version = (
        f"coalesce(CAST({columns.model_version} AS VARCHAR), '{UNKNOWN_VERSION}')"
        if columns.model_version
        else f"'{UNKNOWN_VERSION}'"
    )
    requests = f"count(DISTINCT {columns.request})" if columns.request else "count(*)"
    p = columns.prediction or "NULL::DOUBLE"
    revenue = f"sum({columns.bid} * {LABEL})" if columns.bid else "NULL::DOUBLE"
    cold = f"count(*) FILTER ({columns.history} = 0)" if columns.history else "NULL::BIGINT"
    return f"""
        SELECT {version} AS model_version,
               {requests} AS requests,
               count(*) AS impressions,
               coalesce(sum(CAST({LABEL} AS BIGINT)), 0) AS clicks,
               count({p}) AS scored_impressions,
               coalesce(sum(CAST({LABEL} AS BIGINT)) FILTER ({p} IS NOT NULL), 0) AS scored_clicks,
               coalesce(sum({p}), 0.0) AS predicted_sum,
               coalesce(sum({log_loss_sql(LABEL, p)}), 0.0) AS log_loss_sum,
               coalesce({revenue}, {"0.0" if columns.bid else "NULL"}) AS revenue,
               {cold} AS cold_impressions
        FROM {parquet_list_sql(paths)}
        GROUP BY 1 ORDER BY 1
    """


def aggregate_versions(
    con: duckdb.DuckDBPyConnection, paths: Sequence[Path], columns: OnlineColumns = OnlineColumns()
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
            revenue=None if rev is None else float(rev),
            cold_impressions=None if cold is None else int(cold),
        )
        for v, r, i, c, si, sc, ps, ll, rev, cold in con.sql(aggregate_sql(paths, columns)).fetchall()
    ]


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
        return [
            (
                or_none(oracle_capture(truth.served_expected_revenue, truth.oracle_expected_revenue)),
                "expected",
            )
        ]
    all_requests = sum(t.requests for t in totals)
    return [
        (
            or_none(oracle_capture(t.revenue, truth.oracle_expected_revenue * (t.requests / all_requests))),
            "realized",
        )
        if all_requests
        else (None, None)
        for t in totals
    ]


def combine(totals: Sequence[VersionTotals], name: str = "all") -> VersionTotals:
    """The day's totals over every version."""
    revenues = [t.revenue for t in totals]
    colds = [t.cold_impressions for t in totals]
    return VersionTotals(
        model_version=name,
        requests=sum(t.requests for t in totals),
        impressions=sum(t.impressions for t in totals),
        clicks=sum(t.clicks for t in totals),
        scored_impressions=sum(t.scored_impressions for t in totals),
        scored_clicks=sum(t.scored_clicks for t in totals),
        predicted_sum=sum(t.predicted_sum for t in totals),
        log_loss_sum=sum(t.log_loss_sum for t in totals),
        revenue=None if any(r is None for r in revenues) else sum(r for r in revenues if r is not None),
        cold_impressions=None if any(c is None for c in colds) else sum(c for c in colds if c is not None),
    )


def metrics_row(
    totals: VersionTotals, capture: float | None = None, basis: str | None = None
) -> OnlineMetricsRow:
    """The online metrics of one version from its totals. Calibration and normalized entropy use
    the impressions that carry a prediction."""
    mean_predicted = totals.predicted_sum / totals.scored_impressions if totals.scored_impressions else None
    # (NaN bounds, stored as None, without a prediction)
    low, high = calibration_interval(totals.predicted_sum, totals.scored_clicks)
    return OnlineMetricsRow(
        model_version=totals.model_version,
        requests=totals.requests,
        impressions=totals.impressions,
        clicks=totals.clicks,
        ctr=or_none(ctr(totals.clicks, totals.impressions)),
        mean_predicted_ctr=mean_predicted,
        calibration=or_none(calibration_from_totals(totals.predicted_sum, totals.scored_clicks))
        if totals.scored_impressions
        else None,
        normalized_entropy=or_none(
            normalized_entropy_from_totals(
                totals.log_loss_sum, totals.scored_impressions, totals.scored_clicks
            )
        ),
        revenue=totals.revenue,
        revenue_per_1000_requests=None
        if totals.revenue is None
        else or_none(revenue_per_1000_requests(totals.revenue, totals.requests)),
        oracle_capture=capture,
        oracle_basis=basis,
        clicks_per_1000_requests=or_none(clicks_per_1000_requests(totals.clicks, totals.requests)),
        cold_start_share=None
        if totals.cold_impressions is None
        else or_none(ctr(totals.cold_impressions, totals.impressions)),
        calibration_low=or_none(low),
        calibration_high=or_none(high),
    )


def online_metrics_rows(totals: Sequence[VersionTotals], truth: OracleTruth | None) -> list[OnlineMetricsRow]:
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
    elif truth is not None and total.revenue is not None:
        capture, basis = or_none(oracle_capture(total.revenue, truth.oracle_expected_revenue)), "realized"
    else:
        capture, basis = None, None
    return metrics_row(total, capture, basis)


ORACLE_BASIS_TEXT = {
    "expected": "served policy's expected revenue / oracle's expected revenue, same requests and "
    "candidates (simulator manifest)",
    "realized": "revenue in the logs / oracle's expected revenue on the same share of requests",
    None: "no oracle: the log source does not know the best possible revenue (real logs)",
}


def online_markdown(rows: Sequence[OnlineMetricsRow], day: OnlineMetricsRow) -> str:
    """The metrics per version and for the whole day, as a Markdown table."""
    with_revenue = day.revenue is not None
    header = [
        "model version",
        "requests",
        "impressions",
        "clicks",
        "CTR",
        "mean predicted",
        "calibration",
        f"calibration {CALIBRATION_CONFIDENCE:.0%} interval",
        "NE",
    ]
    header += ["revenue", "revenue / 1000 req", "oracle capture"] if with_revenue else ["clicks / 1000 req"]
    table = []
    for r in [*rows, replace(day, model_version="**all**")]:
        cells = [
            r.model_version,
            f"{r.requests:,}",
            f"{r.impressions:,}",
            f"{r.clicks:,}",
            fmt(r.ctr, ".4g"),
            fmt(r.mean_predicted_ctr, ".4g"),
            fmt(r.calibration, ".3f"),
            interval_text(r.calibration_low, r.calibration_high),
            fmt(r.normalized_entropy, ".4f"),
        ]
        if with_revenue:
            cells += [
                fmt(r.revenue, ",.2f"),
                fmt(r.revenue_per_1000_requests, ",.2f"),
                fmt(r.oracle_capture, ".1%"),
            ]
        else:
            cells.append(fmt(r.clicks_per_1000_requests, ",.2f"))
        table.append(cells)
    return markdown_table(header, table, right=range(1, len(header)))


def interval_text(low: float | None, high: float | None) -> str:
    """An interval as "0.89–1.13" ("-" when unknown, "≥ 0.89" without an upper bound)."""
    if low is None:
        return "-"
    return f"≥ {low:.2f}" if high is None else f"{low:.2f}–{high:.2f}"


def calibration_text(calibration: float | None, low: float | None, high: float | None) -> str:
    """A served calibration and the interval its clicks leave it: "1.120 (0.98–1.27)"."""
    if calibration is None:
        return "-"
    return f"{calibration:.3f} ({interval_text(low, high)})"


def business_metric(day: OnlineMetricsRow) -> tuple[str, float | None]:
    """The metric the business is judged on: revenue per 1000 requests where there is a price,
    clicks per 1000 requests where there is none."""
    if day.revenue is not None:
        return "revenue_per_1000_requests", day.revenue_per_1000_requests
    return "clicks_per_1000_requests", day.clicks_per_1000_requests


def summary_numbers(day: OnlineMetricsRow) -> dict[str, Any]:
    """The day's numbers (what plots over time in the UI)."""
    name, value = business_metric(day)
    return {
        "requests": day.requests,
        "impressions": day.impressions,
        "clicks": day.clicks,
        "ctr": day.ctr,
        "mean_predicted_ctr": day.mean_predicted_ctr,
        "calibration": day.calibration,
        "calibration_low": day.calibration_low,
        "calibration_high": day.calibration_high,
        "normalized_entropy": day.normalized_entropy,
        "revenue": day.revenue,
        "revenue_per_1000_requests": day.revenue_per_1000_requests,
        "clicks_per_1000_requests": day.clicks_per_1000_requests,
        "oracle_capture": day.oracle_capture,
        "cold_start_share": day.cold_start_share,
        "business_metric": name,
        "business_value": value,
    }


#: The online metrics plotted over days: (column, axis label, a reference line: calibration 1 is
#: calibrated, normalized entropy 1 is no better than predicting the base rate).
HISTORY_PANELS: tuple[tuple[str, str, float | None], ...] = (
    ("calibration", "calibration (predicted / observed)", 1.0),
    ("normalized_entropy", "normalized entropy", 1.0),
    ("oracle_capture", "oracle revenue captured", None),
)


def online_history_png(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """A PNG of calibration (with the band its clicks leave open), normalized entropy and oracle
    capture over days, a line per model version; ``rows`` are the monitoring store's online metrics
    rows (``day``, ``model_version`` and the metrics; None where undefined)."""
    bands = {"calibration": ("calibration_low", "calibration_high")}
    columns = [c for c, _, _ in HISTORY_PANELS] + [b for pair in bands.values() for b in pair]
    frame = pd.DataFrame([{c: r.get(c) for c in ["day", "model_version", *columns]} for r in rows])
    frame = frame.reindex(columns=["day", "model_version", *columns])
    frame["day"] = pd.to_datetime(frame["day"])
    figure = new_figure(7.0, 6.5)
    axes = figure.subplots(len(HISTORY_PANELS), 1, sharex=True)
    for ax, (column, label, reference) in zip(axes, HISTORY_PANELS, strict=True):
        for version, part in frame.sort_values("day").groupby("model_version", sort=True):
            values = pd.to_numeric(part[column], errors="coerce")
            if values.notna().any():
                (line,) = ax.plot(part["day"], values, marker="o", markersize=3, label=str(version))
                if column in bands:  # what the day's clicks leave open
                    low, high = (pd.to_numeric(part[b], errors="coerce") for b in bands[column])
                    ax.fill_between(part["day"], low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel(label, fontsize=8)
    axes[0].set_title("online metrics per model version")
    labelled = [ax for ax in axes if ax.get_legend_handles_labels()[0]]
    if labelled:  # on the first panel with a line (logs without predictions have no calibration)
        labelled[0].legend(loc="best", fontsize=7)
    figure.autofmt_xdate()
    return figure_png(figure)
