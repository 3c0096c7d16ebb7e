"""When to ask for a retraining: the thresholds the monitoring of a served day is held to.

* drift: the share of request-context columns (the contract's request-side categorical features,
  and the hour) that Evidently found drifted. Ad-side features, the CTR and the served predictions
  move whenever the serving policy changes (a champion shows other ads than the policy it was
  trained on), so their drift is not a reason to retrain;
* quality: the champion's online normalized entropy on the day against its first served day (its
  quality at promotion), and its online calibration against 1, beyond a tolerance. The champion is
  recalibrated daily (:mod:`clickloop.calibration`) on its own traffic from its third served day on;
  on the days before, its calibration (fitted on another policy's traffic, the winner's curse
  of a new ranking) is compared with its first served day's instead. A change of calibration
  counts only when the day's clicks rule out chance too: its exact Poisson interval
  (:func:`clickloop.metrics.calibration_interval`, stored with the day) leaves the reference out. On
  a day of a few dozen clicks a 1.3 is noise (40 clicks leave 0.96–1.82 around it); on a day of
  hundreds the tolerance alone decides, as it did before the interval was stored;
* novelty: the share of the champion's impressions whose ad had no history when it was served (a
  wave of new campaigns) against its first served day, beyond a tolerance: the history features
  are blind to them, and a model trained on recent days is not;
* staleness: the champion has served more than a number of days.

One episode asks for one retraining: for ``cooldown_days`` after a request no sensor asks again
(:func:`cooldown_reason`), whatever threshold the days in between cross; the retrained model needs
that long to serve and be monitored.

Each rule returns a :class:`Trigger` (what crossed which threshold on which day) or None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clickloop.calibration import CALIBRATION_LAG_DAYS
from clickloop.contract import LogContract

#: the tags a retraining request carries: the sensor that asked, and the day whose monitoring crossed
TRIGGER_TAG = "clickloop/trigger"
DAY_TAG = "clickloop/day"

#: The hour of the request is context too (not a categorical feature, but not chosen by the policy).
CONTEXT_NUMERIC = ("hour",)


@dataclass(frozen=True)
class RetrainThresholds:
    """The thresholds of the retraining sensors."""

    #: share of request-context columns drifted
    drift_share_threshold: float = 0.25
    #: change of the champion's online calibration since its first served day (and the day's
    #: interval leaving the reference out: not a change its clicks can explain)
    calibration_tolerance: float = 0.25
    #: increase of the champion's online normalized entropy since its first served day
    normalized_entropy_tolerance: float = 0.05
    #: increase of the share of the champion's impressions on ads without history
    cold_start_tolerance: float = 0.15
    #: days a champion may serve before a retraining is asked for
    max_champion_age_days: int = 14
    #: days after a retraining request in which no sensor asks again: one episode, one retraining
    #: (its model serves from the next day on; its first monitored day is two days later)
    cooldown_days: int = 3


@dataclass(frozen=True)
class Trigger:
    """A threshold crossed on a day: what a sensor turns into one retraining request."""

    sensor: str
    day: str
    metric: str
    value: float
    threshold: float

    @property
    def reason(self) -> str:
        return f"{self.metric} = {self.value:.4g} crossed {self.threshold:.4g} on {self.day}"

    @property
    def run_key(self) -> str:
        return f"{self.sensor}:{self.day}"

    def tags(self) -> dict[str, str]:
        return {
            TRIGGER_TAG: self.sensor,
            DAY_TAG: self.day,
            "clickloop/metric": self.metric,
            "clickloop/value": f"{self.value:.6g}",
            "clickloop/threshold": f"{self.threshold:.6g}",
        }


def request_context_columns(contract: LogContract) -> tuple[str, ...]:
    return (*contract.request_context, *CONTEXT_NUMERIC)


def context_drift_share(drift: Mapping[str, Any], columns: Sequence[str]) -> float:
    """The share of request-context columns that Evidently found drifted on the day."""
    drifted = set(drift.get("drifted_columns") or {})
    return len(drifted & set(columns)) / len(columns) if columns else 0.0


def drift_trigger(
    drift: Mapping[str, Any] | None, columns: Sequence[str], thresholds: RetrainThresholds
) -> Trigger | None:
    if drift is None:
        return None
    share = context_drift_share(drift, columns)
    if share > thresholds.drift_share_threshold:
        return Trigger(
            "drift_sensor", drift["day"], "context_drift_share", share, thresholds.drift_share_threshold
        )
    return None


def _champion_today_and_first(
    day_rows: Sequence[Mapping[str, Any]], baseline_rows: Sequence[Mapping[str, Any]], champion: str
) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
    """The champion's row of the day and of its first served day, None unless both exist and differ."""
    today = next((r for r in day_rows if r["model_version"] == champion), None)
    base = next((r for r in baseline_rows if r["model_version"] == champion), None)
    if today is None or base is None or today["day"] == base["day"]:
        return None
    return today, base


def beyond_chance(row: Mapping[str, Any], reference: float) -> bool:
    """Whether the day's calibration interval leaves ``reference`` out: the day's clicks cannot
    explain its calibration as the reference's plus chance. A row without an interval (stored before
    there was one) counts as beyond chance; a day without clicks has no upper bound."""
    low, high = row.get("calibration_low"), row.get("calibration_high")
    if low is None:
        return True
    return reference < low or (high is not None and reference > high)


def quality_trigger(
    day_rows: Sequence[Mapping[str, Any]],
    baseline_rows: Sequence[Mapping[str, Any]],
    champion: str,
    thresholds: RetrainThresholds,
    served_days: int = 0,
) -> Trigger | None:
    """The champion's online calibration (against 1 once ``served_days``, the days it has served up
    to this one, exceed :data:`CALIBRATION_LAG_DAYS`; against its first served day before) beyond
    the tolerance and beyond chance (:func:`beyond_chance`), or its normalized entropy (against its
    first served day) beyond the tolerance."""
    rows = _champion_today_and_first(day_rows, baseline_rows, champion)
    if rows is None:
        return None
    today, base = rows
    reference = 1.0 if served_days > CALIBRATION_LAG_DAYS else base["calibration"]
    if today["calibration"] is not None and reference is not None:
        change = abs(today["calibration"] - reference)
        if change > thresholds.calibration_tolerance and beyond_chance(today, reference):
            return Trigger(
                "quality_sensor", today["day"], "calibration_change", change, thresholds.calibration_tolerance
            )
    if today["normalized_entropy"] is not None and base["normalized_entropy"] is not None:
        worse = today["normalized_entropy"] - base["normalized_entropy"]
        if worse > thresholds.normalized_entropy_tolerance:
            return Trigger(
                "quality_sensor",
                today["day"],
                "normalized_entropy_increase",
                worse,
                thresholds.normalized_entropy_tolerance,
            )
    return None


def novelty_trigger(
    day_rows: Sequence[Mapping[str, Any]],
    baseline_rows: Sequence[Mapping[str, Any]],
    champion: str,
    thresholds: RetrainThresholds,
) -> Trigger | None:
    """The share of the champion's impressions on ads without history, against its first served
    day, up by more than the tolerance."""
    rows = _champion_today_and_first(day_rows, baseline_rows, champion)
    if rows is None:
        return None
    today, base = rows
    if today.get("cold_start_share") is None or base.get("cold_start_share") is None:
        return None
    increase = today["cold_start_share"] - base["cold_start_share"]
    if increase > thresholds.cold_start_tolerance:
        return Trigger(
            "novelty_sensor",
            today["day"],
            "cold_start_share_increase",
            increase,
            thresholds.cold_start_tolerance,
        )
    return None


def staleness_trigger(
    day: str, promoted_day: str | None, partition_keys: Sequence[str], thresholds: RetrainThresholds
) -> Trigger | None:
    """The champion is older than ``max_champion_age_days`` partitions."""
    keys = list(partition_keys)
    if promoted_day is None or promoted_day not in keys or day not in keys:
        return None
    age = keys.index(day) - keys.index(promoted_day)
    if age > thresholds.max_champion_age_days:
        return Trigger("staleness_sensor", day, "champion_age_days", age, thresholds.max_champion_age_days)
    return None


def cooldown_reason(
    day: str, last_request_day: str | None, partition_keys: Sequence[str], thresholds: RetrainThresholds
) -> str | None:
    """Why no retraining is asked for on ``day``: a request made on ``last_request_day`` (the day
    whose monitoring crossed a threshold) at most ``cooldown_days`` before it; None otherwise."""
    keys = list(partition_keys)
    if last_request_day is None or last_request_day not in keys or day not in keys:
        return None
    since = keys.index(day) - keys.index(last_request_day)
    if 0 <= since <= thresholds.cooldown_days:
        return (
            f"cool-down: a retraining was requested for {last_request_day}, {since} day(s) before "
            f"{day} (cool-down {thresholds.cooldown_days} days)"
        )
    return None
