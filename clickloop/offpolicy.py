"""Off-policy estimates: what a policy that never served would have earned, from exploration logs.

The ad server ranks a small share of requests uniformly at random and logs, per shown ad, the
probability it had of that slot (``propensity``) and the whole candidate set of the request (the
exploration log, :mod:`clickloop.simulator.allocation`). A target policy (a challenger) is run on
those candidate sets; per slot, where its choice equals the shown ad the logged outcome counts with
weight 1 / propensity, elsewhere 0 (the item-position model: a click depends on the ad and its slot).

- **IPS** (inverse propensity scoring): the mean over requests of Σ_slots reward × match / propensity;
  unbiased when every ad the target can choose had a positive propensity; its interval is the CLT's.
- **SNIPS** (self-normalised IPS): per slot Σ reward × w / Σ w; a little biased, lower variance; its
  interval from the delta method (the ratio linearised per request).

Both estimate revenue per 1000 requests (Σ price × click) and CTR (clicks per shown ad); a request
shows one ad per slot, so CTR = clicks per request / slots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Protocol

import duckdb
import numpy as np
import pandas as pd

from clickloop.contract import AD_ID, BID, LABEL, POSITION, PROPENSITY, REQUEST_ID
from clickloop.presentation import significant
from clickloop.storage import parquet_sql

#: Two-sided 95 % intervals unless told otherwise.
DEFAULT_CONFIDENCE = 0.95


class Scorer(Protocol):
    """Anything with ``predict_ctr(candidates)``: a ranking policy."""

    version: str

    def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray: ...


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided confidence interval."""

    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def text(self, digits: int = 2) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def z_value(confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The normal quantile of a two-sided interval of ``confidence``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must lie in (0, 1)")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def mean_interval(values: np.ndarray, scale: float = 1.0, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """The mean of ``values`` × ``scale`` with its CLT interval."""
    n = len(values)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    mean = float(values.mean())
    half = z_value(confidence) * float(values.std(ddof=1)) / np.sqrt(n) if n > 1 else float("inf")
    return Interval(mean * scale, (mean - half) * scale, (mean + half) * scale)


@dataclass(frozen=True)
class OffPolicyEstimate:
    """A target policy's value estimated from exploration logs."""

    policy: str
    requests: int
    slots: int
    #: shown ads the target would have shown in the same slot
    matched: int
    ips_revenue_per_1000: Interval
    snips_revenue_per_1000: Interval
    ips_ctr: Interval
    snips_ctr: Interval
    confidence: float = DEFAULT_CONFIDENCE

    def metadata(self) -> dict[str, Any]:
        """Flat numbers for an asset's metadata or a table."""
        out: dict[str, Any] = {"policy": self.policy, "requests": self.requests, "matched": self.matched}
        for name in ("ips_revenue_per_1000", "snips_revenue_per_1000", "ips_ctr", "snips_ctr"):
            for part, value in asdict(getattr(self, name)).items():
                out[f"{name}_{part}" if part != "value" else name] = significant(float(value))
        return out


def target_choices(
    candidates: pd.DataFrame, policy: Scorer, slots: int = 2, by_bid: bool = True
) -> pd.DataFrame:
    """The ads ``policy`` would show per request (``request_id``, ``position``, ``ad_id``): the top
    ``slots`` of its candidates by predicted CTR × bid (or predicted CTR), best first; ties go to the
    earlier candidate."""
    if candidates.empty:
        return pd.DataFrame({REQUEST_ID: [], POSITION: [], AD_ID: []})
    predicted = np.asarray(policy.predict_ctr(candidates), dtype=np.float64)
    score = predicted * candidates[BID].to_numpy(dtype=np.float64) if by_bid else predicted
    codes, requests = pd.factorize(candidates[REQUEST_ID].astype(str), sort=False)
    order = np.lexsort((np.arange(len(candidates)), -score, codes))
    sorted_codes = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)])) + 1
    keep = rank <= slots
    return pd.DataFrame(
        {
            REQUEST_ID: np.asarray(requests)[sorted_codes[keep]],
            POSITION: rank[keep],
            AD_ID: candidates[AD_ID].astype(str).to_numpy()[order[keep]],
        }
    )


def estimate_policy(
    impressions: pd.DataFrame,
    choices: pd.DataFrame,
    policy: str,
    slots: int = 2,
    confidence: float = DEFAULT_CONFIDENCE,
) -> OffPolicyEstimate:
    """IPS and SNIPS of the policy whose ``choices`` (:func:`target_choices`) are given, from the
    explored requests' logged ``impressions`` (``request_id``, ``position``, ``ad_id``,
    ``propensity``, ``clicked``, ``bid_cpc``). Requests whose every slot was logged count; a
    request with a missing impression (quarantined) is left out."""
    missing = [
        c for c in (REQUEST_ID, POSITION, AD_ID, PROPENSITY, LABEL, BID) if c not in impressions.columns
    ]
    if missing:
        raise ValueError(f"the exploration impressions lack column(s) {missing}")
    logged = pd.DataFrame(
        {
            REQUEST_ID: impressions[REQUEST_ID].astype(str).to_numpy(),
            POSITION: impressions[POSITION].to_numpy(dtype=np.int64),
            AD_ID: impressions[AD_ID].astype(str).to_numpy(),
            PROPENSITY: impressions[PROPENSITY].to_numpy(dtype=np.float64),
            LABEL: impressions[LABEL].to_numpy(dtype=np.float64),
            BID: impressions[BID].to_numpy(dtype=np.float64),
        }
    )
    if (logged[PROPENSITY] <= 0).any() or logged[PROPENSITY].isna().any():
        raise ValueError("exploration impressions need a positive propensity on every row")
    complete = logged.groupby(REQUEST_ID)[POSITION].transform("nunique") == slots
    logged = logged[complete & logged[POSITION].between(1, slots)]
    target = choices.rename(columns={AD_ID: "target_ad"})
    target = target.assign(**{POSITION: target[POSITION].astype(np.int64)})
    merged = logged.merge(target, on=[REQUEST_ID, POSITION], how="left")
    w = np.where(merged["target_ad"].to_numpy() == merged[AD_ID].to_numpy(), 1.0 / merged[PROPENSITY], 0.0)
    merged = merged.assign(w=w, clicks_w=w * merged[LABEL], revenue_w=w * merged[LABEL] * merged[BID])
    per_request = merged.groupby(REQUEST_ID)[["clicks_w", "revenue_w"]].sum()
    n = len(per_request)
    ips_revenue = mean_interval(per_request["revenue_w"].to_numpy(), 1000.0, confidence)
    ips_ctr = mean_interval(per_request["clicks_w"].to_numpy(), 1.0 / slots, confidence)
    return OffPolicyEstimate(
        policy=policy,
        requests=n,
        slots=slots,
        matched=int((w > 0).sum()),
        ips_revenue_per_1000=ips_revenue,
        snips_revenue_per_1000=_snips(merged, "revenue_w", n, 1000.0, confidence),
        ips_ctr=ips_ctr,
        snips_ctr=_snips(merged, "clicks_w", n, 1.0 / slots, confidence),
        confidence=confidence,
    )


def _snips(merged: pd.DataFrame, reward_w: str, n: int, scale: float, confidence: float) -> Interval:
    """Σ over slots of Σ reward·w / Σ w, with the delta method's interval (per-request influence)."""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    value = 0.0
    influence = pd.Series(0.0, index=pd.Index(merged[REQUEST_ID].unique(), name=REQUEST_ID))
    for _, slot in merged.groupby(POSITION):
        total_w = slot["w"].sum() / n
        if total_w == 0:
            continue
        v = slot[reward_w].sum() / n / total_w
        value += v
        psi = ((slot[reward_w] - v * slot["w"]) / total_w).groupby(slot[REQUEST_ID]).sum()
        influence = influence.add(psi, fill_value=0.0)
    se = float(influence.std(ddof=1)) / np.sqrt(n) if n > 1 else float("inf")
    half = z_value(confidence) * se
    return Interval(value * scale, (value - half) * scale, (value + half) * scale)


def estimate_from_logs(
    impressions: pd.DataFrame,
    candidates: pd.DataFrame,
    policy: Scorer,
    slots: int = 2,
    confidence: float = DEFAULT_CONFIDENCE,
) -> OffPolicyEstimate:
    """The whole estimate: run ``policy`` on the logged candidate sets, then IPS and SNIPS over the
    impressions of those requests."""
    explored = impressions[impressions[REQUEST_ID].astype(str).isin(set(candidates[REQUEST_ID].astype(str)))]
    choices = target_choices(candidates, policy, slots=slots, by_bid=BID in candidates.columns)
    return estimate_policy(explored, choices, policy.version, slots=slots, confidence=confidence)


@dataclass(frozen=True)
class ExplorationDay:
    """One day's exploration evidence: its labelled impressions (a ``features`` or ``ad_events``
    partition) and its exploration log (the candidate sets of the explored requests)."""

    day: str
    impressions: Path
    candidates: Path


def read_exploration_day(day: ExplorationDay) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The explored requests' impressions and their candidates."""
    candidates = pd.read_parquet(day.candidates)
    columns = ", ".join((REQUEST_ID, POSITION, AD_ID, PROPENSITY, LABEL, BID))
    impressions = duckdb.sql(
        f"SELECT {columns} FROM {parquet_sql(day.impressions)} WHERE {PROPENSITY} < 1"
    ).df()
    wanted = set(candidates[REQUEST_ID].astype(str))
    return impressions[impressions[REQUEST_ID].astype(str).isin(wanted)], candidates


def estimate_over_days(
    days: Sequence[ExplorationDay],
    policy_for: Callable[[str], Scorer],
    name: str,
    slots: int = 2,
    confidence: float = DEFAULT_CONFIDENCE,
) -> OffPolicyEstimate:
    """One estimate over several days' exploration logs; ``policy_for(day)`` is the target policy
    as it would have served that day (its statistics of that day)."""
    impressions, choices = [], []
    for day in days:
        explored, candidates = read_exploration_day(day)
        impressions.append(explored)
        policy = policy_for(day.day)
        choices.append(target_choices(candidates, policy, slots=slots, by_bid=BID in candidates.columns))
    if not impressions:
        raise ValueError("no exploration logs to estimate from")
    return estimate_policy(
        pd.concat(impressions, ignore_index=True),
        pd.concat(choices, ignore_index=True),
        name,
        slots,
        confidence,
    )
