"""The promotion gate: only a model that earns it becomes the champion.

The evaluated version is promoted only when every blocking data check upstream passed on the data it
was built from, it beats the champion and every baseline on normalized entropy by ``ne_margin`` on
the same test rows, and no important slice (enough rows and clicks) is worse than the champion's by
more than ``slice_tolerance``. Every criterion is recorded with its outcome and numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clickloop.evaluation import BASELINES, CHAMPION, MODEL, MODEL_EVALUATION, Evaluation
from clickloop.presentation import fmt


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
    #: NE the candidate must gain over the champion and the baselines
    ne_margin: float = 0.001
    #: most NE an important slice may lose against the champion
    slice_tolerance: float = 0.01
    #: rows and clicks that make a slice important
    slice_min_rows: int = 1000
    slice_min_clicks: int = 20


def _beats(name: str, candidate: float, other: float, margin: float) -> Criterion:
    """The candidate's NE is at least ``margin`` below ``other``'s."""
    passed = math.isfinite(candidate) and math.isfinite(other) and candidate <= other - margin
    return Criterion(
        f"beats {name} on NE",
        passed,
        f"NE {fmt(candidate)} vs {fmt(other)} (needs ≤ {fmt(other - margin)}, margin {margin:g})",
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
                    f"NE {fmt(s.candidate_ne)} vs {fmt(s.champion_ne)} (Δ {fmt(change, '+.4f')}, "
                    f"tolerance {policy.slice_tolerance:g}, {s.rows:,} rows)",
                )
            )
    return Decision(all(c.passed for c in criteria), tuple(criteria))


def slice_comparisons(slices: Iterable[Mapping[str, Any]]) -> list[SliceComparison]:
    """The candidate-vs-champion rows of an evaluation's slice table (empty without a champion)."""
    return [
        SliceComparison(
            str(r["slice"]),
            str(r["value"]),
            int(r["rows"]),
            int(r["clicks"]),
            float(r[f"{MODEL}_ne"]),
            float(r[f"{CHAMPION}_ne"]),
        )
        for r in slices
        if f"{CHAMPION}_ne" in r
    ]


@dataclass(frozen=True)
class CheckReport:
    """What the gate verified upstream: how many (check, partition) evaluations, and which failed."""

    verified: int
    failed: list[str]


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
