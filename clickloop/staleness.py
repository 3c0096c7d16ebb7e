"""The cost of staleness (ML Test Score M4): the same drifting days served by a frozen champion and by
the loop that retrains it, compared day by day and week by week.

Each arm gives one :class:`ArmDay` per served day, read from the online metrics (the definitions of
:mod:`clickloop.metrics`): oracle capture, normalized entropy and calibration of the served
predictions. :func:`compare_arms` pairs the days, :func:`weekly` averages them per week of drift and
:func:`cost_per_day_of_age` fits the capture the frozen champion loses per day it gets older. Plain
functions: ``pipelines/cli/staleness.py`` runs the arms and calls them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

import numpy as np

from clickloop.presentation import fmt, markdown_table

#: The days of a week of drift (the weekly rows).
WEEK_DAYS = 7


@dataclass(frozen=True)
class ArmDay:
    """One served day of one arm (None where the metric is undefined or the day was not served)."""

    day: str
    served_by: str
    oracle_capture: float | None
    normalized_entropy: float | None
    calibration: float | None


@dataclass(frozen=True)
class StalenessDay:
    """One day of drift, both arms side by side; ``capture_lost`` = loop − frozen."""

    day: str
    #: days since the drift started (0 on its first day)
    drift_day: int
    #: days since the frozen champion's first served day (its age)
    age: int
    frozen: ArmDay
    loop: ArmDay

    @property
    def capture_lost(self) -> float | None:
        if self.frozen.oracle_capture is None or self.loop.oracle_capture is None:
            return None
        return self.loop.oracle_capture - self.frozen.oracle_capture


@dataclass(frozen=True)
class StalenessWeek:
    """Means of a week of drift (days ``first_drift_day`` … ``+6``) over the days both arms served."""

    week: int
    first_day: str
    last_day: str
    days: int
    frozen_capture: float | None
    loop_capture: float | None
    capture_lost: float | None
    frozen_ne: float | None
    loop_ne: float | None
    frozen_calibration: float | None
    loop_calibration: float | None


def _days_between(first: str, last: str) -> int:
    return (date.fromisoformat(last) - date.fromisoformat(first)).days


def compare_arms(
    frozen: Sequence[ArmDay], loop: Sequence[ArmDay], drift_start: str, first_served: str
) -> list[StalenessDay]:
    """The days of drift (from ``drift_start`` on) both arms hold, in order; a day one arm lacks is an
    error naming it (the arms must serve the same days)."""
    by_day = {d.day: d for d in loop}
    frozen_days = [d for d in frozen if d.day >= drift_start]
    missing = sorted({d.day for d in frozen_days} ^ {d.day for d in loop if d.day >= drift_start})
    if missing:
        raise ValueError(f"the arms must serve the same days of drift; only one arm has {missing}")
    return [
        StalenessDay(
            day=d.day,
            drift_day=_days_between(drift_start, d.day),
            age=_days_between(first_served, d.day),
            frozen=d,
            loop=by_day[d.day],
        )
        for d in sorted(frozen_days, key=lambda d: d.day)
    ]


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(defined)) if defined else None


def weekly(days: Sequence[StalenessDay]) -> list[StalenessWeek]:
    """Week ``w`` (1, 2, …) holds drift days ``7(w-1)`` … ``7w-1``; each metric is the mean of its
    days (every day serves the same number of requests, so the mean capture is the week's)."""
    weeks: dict[int, list[StalenessDay]] = {}
    for d in days:
        weeks.setdefault(d.drift_day // WEEK_DAYS + 1, []).append(d)
    return [
        StalenessWeek(
            week=w,
            first_day=rows[0].day,
            last_day=rows[-1].day,
            days=len(rows),
            frozen_capture=_mean([r.frozen.oracle_capture for r in rows]),
            loop_capture=_mean([r.loop.oracle_capture for r in rows]),
            capture_lost=_mean([r.capture_lost for r in rows]),
            frozen_ne=_mean([r.frozen.normalized_entropy for r in rows]),
            loop_ne=_mean([r.loop.normalized_entropy for r in rows]),
            frozen_calibration=_mean([r.frozen.calibration for r in rows]),
            loop_calibration=_mean([r.loop.calibration for r in rows]),
        )
        for w, rows in sorted(weeks.items())
    ]


def cost_per_day_of_age(days: Sequence[StalenessDay]) -> dict[str, float | None]:
    """Least-squares slopes against the frozen champion's age, in capture (a share of the oracle's
    revenue) per day: ``frozen_capture`` (how fast the frozen champion decays) and ``capture_lost``
    (how fast the gap to the retrained loop grows). None with fewer than 2 defined days."""

    def slope(pairs: list[tuple[int, float | None]]) -> float | None:
        points = [(x, y) for x, y in pairs if y is not None and np.isfinite(y)]
        if len({x for x, _ in points}) < 2:
            return None
        x, y = np.array(points, dtype=np.float64).T
        return float(np.polyfit(x, y, 1)[0])

    return {
        "frozen_capture": slope([(d.age, d.frozen.oracle_capture) for d in days]),
        "capture_lost": slope([(d.age, d.capture_lost) for d in days]),
    }


def report(days: Sequence[StalenessDay]) -> dict[str, Any]:
    """Everything the experiment reports, JSON-ready: the days, the weeks and the slopes."""
    return {
        "days": [{**asdict(d), "capture_lost": d.capture_lost} for d in days],
        "weeks": [asdict(w) for w in weekly(days)],
        "cost_per_day_of_age": cost_per_day_of_age(days),
        "mean_capture_lost": _mean([d.capture_lost for d in days]),
    }


def markdown(days: Sequence[StalenessDay]) -> str:
    """The daily and weekly tables and the fitted cost, as Markdown."""
    pct = ".1%"
    daily = markdown_table(
        [
            "day",
            "drift day",
            "age",
            "frozen",
            "capture",
            "NE",
            "calib.",
            "loop",
            "capture",
            "NE",
            "calib.",
            "lost",
        ],
        [
            [
                d.day,
                d.drift_day,
                d.age,
                d.frozen.served_by,
                fmt(d.frozen.oracle_capture, pct),
                fmt(d.frozen.normalized_entropy, ".3f"),
                fmt(d.frozen.calibration, ".3f"),
                d.loop.served_by,
                fmt(d.loop.oracle_capture, pct),
                fmt(d.loop.normalized_entropy, ".3f"),
                fmt(d.loop.calibration, ".3f"),
                fmt(None if d.capture_lost is None else 100 * d.capture_lost, "+.1f"),
            ]
            for d in days
        ],
        right=[1, 2, 4, 5, 6, 8, 9, 10, 11],
    )
    weeks = markdown_table(
        [
            "week",
            "days",
            "frozen capture",
            "loop capture",
            "lost (points)",
            "frozen NE",
            "loop NE",
            "frozen calib.",
            "loop calib.",
        ],
        [
            [
                f"{w.week} ({w.first_day} … {w.last_day})",
                w.days,
                fmt(w.frozen_capture, pct),
                fmt(w.loop_capture, pct),
                fmt(None if w.capture_lost is None else 100 * w.capture_lost, "+.1f"),
                fmt(w.frozen_ne, ".3f"),
                fmt(w.loop_ne, ".3f"),
                fmt(w.frozen_calibration, ".3f"),
                fmt(w.loop_calibration, ".3f"),
            ]
            for w in weekly(days)
        ],
        right=list(range(1, 9)),
    )
    cost = cost_per_day_of_age(days)
    per_day = (
        "frozen champion's capture: "
        + fmt(None if cost["frozen_capture"] is None else 100 * cost["frozen_capture"], "+.2f")
        + " points per day of age; capture lost against the loop: "
        + fmt(None if cost["capture_lost"] is None else 100 * cost["capture_lost"], "+.2f")
        + " points per day of age (least-squares slopes)"
    )
    return f"### Per day\n\n{daily}\n\n### Per week of drift\n\n{weeks}\n\n{per_day}\n"
