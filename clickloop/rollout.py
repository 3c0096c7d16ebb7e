"""The rollout of a challenger: online evidence per served version, and the decision it earns.

A model that passed the offline gate becomes the *challenger* (not the champion): it first serves
in shadow (scored on every request, logged, not shown), then as a canary on a share of the requests
chosen by a hash of the request id (:mod:`clickloop.simulator.allocation`). From the served
impressions (the ``features`` partitions, which carry every logged column) this module aggregates
per request and version — clicks, revenue, predictions, log loss — and compares the challenger's
canary requests with the champion's requests of the same days:

- revenue per 1000 requests and CTR: the difference of means, with Welch's CLT interval;
- normalized entropy and calibration: the difference, with a bootstrap interval over requests
  (Poisson weights, a fixed seed).

:func:`decide` turns a :class:`CanaryReport` into the next step: move from shadow to canary; roll
back when the difference on any decision metric (revenue per 1000 requests, CTR) is below zero
beyond its interval; promote when it is above zero beyond its interval on one of them and below on
none; roll back a canary that ran its longest without proving itself; else wait for another day.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np

from clickloop.contract import (
    BID,
    LABEL,
    MODEL_VERSION,
    PREDICTED_CTR,
    REQUEST_ID,
    SHADOW_CTR,
    SHADOW_VERSION,
)
from clickloop.metrics import (
    calibration_from_totals,
    ctr,
    log_loss_sql,
    normalized_entropy_from_totals,
    revenue_per_1000_requests,
)
from clickloop.offpolicy import DEFAULT_CONFIDENCE, Interval, z_value
from clickloop.presentation import significant
from clickloop.storage import parquet_list_sql, parquet_sql

Action = Literal["wait", "to_canary", "promote", "rollback"]
#: The metrics compared, and those that decide: the business metric and its proxy. Higher is better.
METRICS: tuple[str, ...] = ("revenue_per_1000_requests", "ctr", "normalized_entropy", "calibration")
DECISION_METRICS: tuple[str, ...] = ("revenue_per_1000_requests", "ctr")
_BOOTSTRAP_SEED = 20261126


@dataclass(frozen=True)
class RolloutPolicy:
    """How a challenger earns its traffic."""

    #: the share of requests the canary serves (by the hash of the request id)
    canary_share: float = 0.2
    #: days served in shadow before the canary starts
    shadow_days: int = 1
    #: canary days before a decision may be taken, and after which an undecided canary is rolled back
    min_canary_days: int = 1
    max_canary_days: int = 5
    confidence: float = DEFAULT_CONFIDENCE
    bootstrap_samples: int = 300

    def __post_init__(self) -> None:
        if not 0.0 < self.canary_share < 1.0:
            raise ValueError(f"canary_share={self.canary_share} must lie in (0, 1)")
        if self.shadow_days < 0 or self.min_canary_days < 1 or self.max_canary_days < self.min_canary_days:
            raise ValueError("need shadow_days >= 0 and 1 <= min_canary_days <= max_canary_days")
        z_value(self.confidence)


@dataclass(frozen=True)
class RequestStats:
    """Per-request totals of one version's requests (arrays of equal length)."""

    version: str
    impressions: np.ndarray
    clicks: np.ndarray
    revenue: np.ndarray
    predicted: np.ndarray
    log_loss: np.ndarray

    @property
    def requests(self) -> int:
        return len(self.clicks)


def request_stats_sql(paths: Sequence[Path], has_bid: bool = True) -> str:
    """Per request and served version: impressions, clicks, revenue, Σ prediction, Σ log loss."""
    revenue = f"sum({BID} * {LABEL})" if has_bid else "0.0"
    return f"""
        SELECT CAST({MODEL_VERSION} AS VARCHAR) AS version, {REQUEST_ID} AS request,
               count(*) AS impressions, sum(CAST({LABEL} AS DOUBLE)) AS clicks,
               {revenue} AS revenue, sum({PREDICTED_CTR}) AS predicted,
               sum({log_loss_sql(LABEL, PREDICTED_CTR)}) AS log_loss
        FROM {parquet_list_sql(paths)}
        WHERE {PREDICTED_CTR} IS NOT NULL
        GROUP BY ALL ORDER BY version, request
    """


def read_request_stats(
    paths: Sequence[Path], versions: Sequence[str], has_bid: bool = True
) -> dict[str, RequestStats]:
    """The per-request totals of ``versions`` in the served days ``paths`` (a version that did not
    serve has no entry)."""
    if not paths:
        return {}
    frame = duckdb.sql(request_stats_sql(paths, has_bid)).df()
    out = {}
    for version in versions:
        rows = frame[frame["version"] == version]
        if len(rows):
            out[version] = RequestStats(
                version,
                *(
                    rows[c].to_numpy(np.float64)
                    for c in ("impressions", "clicks", "revenue", "predicted", "log_loss")
                ),
            )
    return out


def stage_days(paths_by_day: dict[str, Path], served: str) -> tuple[list[str], list[str]]:
    """The days (with events) on which the version named ``served`` in the logs ran in shadow
    and those on which it served as canary, from the logged columns."""
    if not paths_by_day:
        return [], []
    name = served.replace("'", "''")
    union = " UNION ALL ".join(
        f"SELECT '{day}' AS day, count(*) FILTER ({SHADOW_VERSION} = '{name}') AS shadow, "
        f"count(*) FILTER ({MODEL_VERSION} = '{name}') AS canary FROM {parquet_sql(path)}"
        for day, path in sorted(paths_by_day.items())
    )
    rows = duckdb.sql(union).fetchall()
    return [d for d, shadow, _ in rows if shadow], [d for d, _, canary in rows if canary]


def shadow_metrics(paths: Sequence[Path], served: str) -> dict[str, float]:
    """On the shadow days' impressions (``paths``) where ``served`` scored in shadow: NE and
    calibration of its shadow scores next to those of the serving model's own predictions on the
    same impressions (which the serving model chose: its own scores there are the optimistic ones)."""
    if not paths:
        return {}
    name = served.replace("'", "''")
    rows, clicks, shadow_ll, served_ll, shadow_sum, served_sum = duckdb.sql(
        f"""SELECT count(*), coalesce(sum({LABEL}), 0), sum({log_loss_sql(LABEL, SHADOW_CTR)}),
                   sum({log_loss_sql(LABEL, PREDICTED_CTR)}), sum({SHADOW_CTR}), sum({PREDICTED_CTR})
            FROM {parquet_list_sql(paths)}
            WHERE {SHADOW_VERSION} = '{name}' AND {SHADOW_CTR} IS NOT NULL AND {PREDICTED_CTR} IS NOT NULL"""
    ).fetchall()[0]
    if not rows:
        return {}
    return {
        "shadow_impressions": int(rows),
        "shadow_challenger_normalized_entropy": normalized_entropy_from_totals(shadow_ll, rows, clicks),
        "shadow_champion_normalized_entropy": normalized_entropy_from_totals(served_ll, rows, clicks),
        "shadow_challenger_calibration": calibration_from_totals(shadow_sum, clicks),
        "shadow_champion_calibration": calibration_from_totals(served_sum, clicks),
    }


def _metrics(
    requests: float, impressions: float, clicks: float, revenue: float, predicted: float, log_loss: float
) -> dict[str, float]:
    """The compared metrics from totals (the definitions of :mod:`clickloop.metrics`)."""
    return {
        "revenue_per_1000_requests": revenue_per_1000_requests(revenue, requests),  # type: ignore[arg-type]
        "ctr": ctr(clicks, impressions),  # type: ignore[arg-type]
        "normalized_entropy": normalized_entropy_from_totals(log_loss, impressions, clicks),  # type: ignore[arg-type]
        "calibration": calibration_from_totals(predicted, clicks),
    }


def _totals(stats: RequestStats, weights: np.ndarray | None = None) -> list[dict[str, float]]:
    """The metrics of ``stats`` (one entry), or of each bootstrap replicate when ``weights`` is
    ``(B, n)`` (per-request totals reweighted)."""
    columns = (stats.impressions, stats.clicks, stats.revenue, stats.predicted, stats.log_loss)
    if weights is None:
        return [_metrics(stats.requests, *(float(c.sum()) for c in columns))]
    sums = np.stack([weights.sum(axis=1), *(weights @ c for c in columns)], axis=1)
    return [_metrics(*(float(v) for v in row)) for row in sums]


@dataclass(frozen=True)
class VersionSummary:
    version: str
    requests: int
    impressions: int
    clicks: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class CanaryReport:
    """The champion's and the challenger's online metrics on the same days, and the differences
    challenger − champion with their intervals (None when a version did not serve)."""

    champion: VersionSummary | None
    challenger: VersionSummary | None
    difference: dict[str, Interval] = field(default_factory=dict)
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def complete(self) -> bool:
        return self.champion is not None and self.challenger is not None and bool(self.difference)

    def metadata(self) -> dict[str, Any]:
        """Flat numbers for an asset's metadata."""
        out: dict[str, Any] = {}
        for role in ("champion", "challenger"):
            summary = getattr(self, role)
            if summary is None:
                continue
            out[f"{role}_requests"] = summary.requests
            out.update({f"{role}_{name}": _round(v) for name, v in summary.metrics.items()})
        for name, interval in self.difference.items():
            out.update(
                {
                    f"diff_{name}{'' if k == 'value' else '_' + k}": _round(v)
                    for k, v in asdict(interval).items()
                }
            )
        return out


def _round(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else significant(float(value))


def _summary(stats: RequestStats) -> VersionSummary:
    return VersionSummary(
        stats.version,
        stats.requests,
        int(stats.impressions.sum()),
        int(stats.clicks.sum()),
        _totals(stats)[0],
    )


def _welch(a: np.ndarray, b: np.ndarray, scale: float, z: float) -> Interval:
    """mean(b) − mean(a) (× scale) with Welch's normal interval."""
    diff = b.mean() - a.mean()
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if min(len(a), len(b)) > 1 else np.inf
    return Interval(float(diff * scale), float((diff - z * se) * scale), float((diff + z * se) * scale))


def compare_versions(
    champion: RequestStats | None, challenger: RequestStats | None, policy: RolloutPolicy = RolloutPolicy()
) -> CanaryReport:
    """The :class:`CanaryReport` of two versions' requests."""
    if champion is None or challenger is None or min(champion.requests, challenger.requests) < 2:
        return CanaryReport(
            _summary(champion) if champion else None,
            _summary(challenger) if challenger else None,
            confidence=policy.confidence,
        )
    z = z_value(policy.confidence)
    difference = {
        "revenue_per_1000_requests": _welch(champion.revenue, challenger.revenue, 1000.0, z),
        "ctr": _welch(
            champion.clicks / champion.impressions, challenger.clicks / challenger.impressions, 1.0, z
        ),
    }
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    samples = policy.bootstrap_samples
    boot_a = _totals(champion, rng.poisson(1.0, (samples, champion.requests)).astype(np.float64))
    boot_b = _totals(challenger, rng.poisson(1.0, (samples, challenger.requests)).astype(np.float64))
    point_a, point_b = _totals(champion)[0], _totals(challenger)[0]
    tail = (1 - policy.confidence) / 2
    for name in ("normalized_entropy", "calibration"):
        diffs = np.array([b[name] - a[name] for a, b in zip(boot_a, boot_b, strict=True)])
        diffs = diffs[np.isfinite(diffs)]
        low, high = np.quantile(diffs, [tail, 1 - tail]) if len(diffs) else (np.nan, np.nan)
        difference[name] = Interval(float(point_b[name] - point_a[name]), float(low), float(high))
    return CanaryReport(_summary(champion), _summary(challenger), difference, policy.confidence)


@dataclass(frozen=True)
class Decision:
    """What the rollout does next, and why."""

    action: Action
    reason: str
    stage: str
    shadow_days: int
    canary_days: int


def decide(
    stage: str, shadow_days: int, canary_days: int, report: CanaryReport, policy: RolloutPolicy
) -> Decision:
    """The next step of a challenger in ``stage`` after ``shadow_days`` / ``canary_days`` served
    days with their events (see the module docstring)."""

    def made(action: Action, reason: str) -> Decision:
        return Decision(action, reason, stage, shadow_days, canary_days)

    if stage == "shadow":
        if shadow_days >= policy.shadow_days:
            return made(
                "to_canary", f"{shadow_days} shadow day(s) served: the canary takes {policy.canary_share:.0%}"
            )
        return made("wait", f"{shadow_days} of {policy.shadow_days} shadow day(s) served")
    if stage != "canary":
        raise ValueError(f"unknown rollout stage {stage!r}")
    if canary_days < policy.min_canary_days or not report.complete:
        return made("wait", f"{canary_days} of at least {policy.min_canary_days} canary day(s) with events")
    diffs = {name: report.difference[name] for name in DECISION_METRICS}
    text = "; ".join(f"{name} challenger − champion {d.text(4)}" for name, d in diffs.items())
    text += f" ({report.confidence:.0%})"
    worse = [name for name, d in diffs.items() if d.high < 0]
    better = [name for name, d in diffs.items() if d.low > 0]
    if worse:
        return made("rollback", f"worse beyond the interval on {', '.join(worse)}: {text}")
    if better:
        return made("promote", f"better beyond the interval on {', '.join(better)}: {text}")
    if canary_days >= policy.max_canary_days:
        return made("rollback", f"not better after {canary_days} canary days: {text}")
    return made("wait", f"undecided: {text}")


def rollout_markdown(decision: Decision, report: CanaryReport, estimates: dict[str, Any]) -> str:
    """The decision for the UI: the counterfactual estimates, the canary against the champion on the
    same days, the differences with their intervals."""
    lines = [f"**{decision.action}** ({decision.stage}): {decision.reason}", ""]
    if any(e is not None for e in estimates.values()):
        lines += [
            "| counterfactual (exploration logs) | requests | IPS revenue / 1000 req | SNIPS revenue / 1000 req | SNIPS CTR |",
            "|---|---:|---:|---:|---:|",
        ]
        for role, e in estimates.items():
            if e is not None:
                lines.append(
                    f"| {role} {e.policy} | {e.requests:,} | {e.ips_revenue_per_1000.text(1)} | "
                    f"{e.snips_revenue_per_1000.text(1)} | {e.snips_ctr.text(4)} |"
                )
        lines.append("")
    summaries = [s for s in (report.champion, report.challenger) if s is not None]
    if summaries:
        lines += [
            "| served (canary days) | requests | revenue / 1000 req | CTR | NE | calibration |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for s in summaries:
            m = s.metrics
            lines.append(
                f"| {s.version} | {s.requests:,} | {m['revenue_per_1000_requests']:.1f} | {m['ctr']:.4f} | "
                f"{m['normalized_entropy']:.4f} | {m['calibration']:.3f} |"
            )
        lines.append("")
    if report.difference:
        lines += [f"| challenger − champion | difference [{report.confidence:.0%} interval] |", "|---|---|"]
        lines += [f"| {name} | {interval.text(4)} |" for name, interval in report.difference.items()]
    return "\n".join(lines)
