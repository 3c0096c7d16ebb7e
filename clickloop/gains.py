"""Offline gain against online gain, per promoted model version.

Offline: when a version is evaluated, its normalized entropy (NE) on the test day and the NE of what
it would replace on the same rows are kept as tags of the registered version
(:func:`offline_gain_tags`): the champion's, or, before any champion, the base rate's (what the
random policy predicts). The offline gain is their difference (positive: the new model is better).

Online: once the version has served, the monitoring store holds its NE and revenue per 1000
requests per day. Its online gain compares its first :data:`ONLINE_WINDOW_DAYS` days of traffic
with the :data:`ONLINE_WINDOW_DAYS` days before it first served of the policy it displaced (the
version with most traffic on the last day before). Days are weighted by traffic (NE by impressions,
revenue by requests). Offline and online NE are on different rows (a test day against the rows each
policy chose to show), so the gains agree in sign and rough size when the offline evaluation
predicts the online effect; the table lets a person see when it did not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from clickloop.evaluation import BASE_RATE, CHAMPION, MODEL, Evaluation
from clickloop.model import served_version
from clickloop.presentation import fmt, markdown_table

#: Tags of a registered version: when it was promoted (set by the registry) and its offline numbers.
PROMOTED_AT_TAG = "promoted_at"
OFFLINE_NE_TAG = "offline_ne"
OFFLINE_REFERENCE_TAG = "offline_reference"
OFFLINE_REFERENCE_NE_TAG = "offline_reference_ne"
OFFLINE_TEST_DAY_TAG = "offline_test_day"
#: Days of traffic on each side of a version's first served day that its online gain compares.
ONLINE_WINDOW_DAYS = 7


def offline_gain_tags(evaluation: Evaluation) -> dict[str, str]:
    """The offline numbers of an evaluated version, as registry tags: its NE, and the NE of the
    champion it was compared with (the base rate's when there was none)."""
    metrics = evaluation.metrics
    if CHAMPION in metrics:
        reference, reference_ne = f"v{evaluation.champion_version}", metrics[CHAMPION].normalized_entropy
    else:
        reference, reference_ne = BASE_RATE, metrics[BASE_RATE].normalized_entropy
    return {
        OFFLINE_NE_TAG: repr(float(metrics[MODEL].normalized_entropy)),
        OFFLINE_REFERENCE_TAG: reference,
        OFFLINE_REFERENCE_NE_TAG: repr(float(reference_ne)),
        OFFLINE_TEST_DAY_TAG: evaluation.test_day,
    }


@dataclass(frozen=True)
class OnlineSide:
    """One policy's traffic-weighted online numbers over some days."""

    version: str
    days: int
    normalized_entropy: float | None
    revenue_per_1000_requests: float | None


@dataclass(frozen=True)
class GainRow:
    """A promoted version: its offline gain at promotion next to its online gain once it served."""

    version: str
    promoted_at: str
    offline_reference: str | None
    offline_ne: float | None
    offline_reference_ne: float | None
    before: OnlineSide | None
    after: OnlineSide | None

    @property
    def offline_ne_gain(self) -> float | None:
        return _minus(self.offline_reference_ne, self.offline_ne)

    @property
    def online_ne_gain(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return _minus(self.before.normalized_entropy, self.after.normalized_entropy)

    @property
    def online_revenue_gain(self) -> float | None:
        """The relative change of revenue per 1000 requests (+0.5: half as much again)."""
        if self.before is None or self.after is None:
            return None
        old, new = self.before.revenue_per_1000_requests, self.after.revenue_per_1000_requests
        return None if old is None or new is None or old <= 0 else new / old - 1.0


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _float(tags: Mapping[str, str], key: str) -> float | None:
    value = tags.get(key)
    return None if value in (None, "") else float(value)


def _day(row: Mapping[str, Any]) -> date:
    value = row["day"]
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _weighted(rows: Sequence[Mapping[str, Any]], metric: str, weight: str) -> float | None:
    pairs = [(r[metric], r[weight] or 0) for r in rows if r.get(metric) is not None]
    total = sum(w for _, w in pairs)
    return None if total <= 0 else sum(v * w for v, w in pairs) / total


def _side(version: str, rows: Sequence[Mapping[str, Any]]) -> OnlineSide | None:
    if not rows:
        return None
    return OnlineSide(
        version,
        len({_day(r) for r in rows}),
        _weighted(rows, "normalized_entropy", "impressions"),
        _weighted(rows, "revenue_per_1000_requests", "requests"),
    )


def _online(
    served: str, online: Sequence[Mapping[str, Any]], window_days: int
) -> tuple[OnlineSide | None, OnlineSide | None]:
    """(the displaced policy before ``served`` first served, ``served`` itself after)."""
    mine = [r for r in online if r["model_version"] == served and (r.get("requests") or 0) > 0]
    if not mine:
        return None, None
    first = min(_day(r) for r in mine)
    window = timedelta(days=window_days)
    after = [r for r in mine if _day(r) < first + window]
    earlier = [r for r in online if first - window <= _day(r) < first and r["model_version"] != served]
    if not earlier:
        return None, _side(served, after)
    last = max(_day(r) for r in earlier)
    displaced = max(
        (r for r in earlier if _day(r) == last), key=lambda r: (r.get("requests") or 0, r["model_version"])
    )["model_version"]
    return _side(displaced, [r for r in earlier if r["model_version"] == displaced]), _side(served, after)


def gain_rows(
    tags_by_version: Mapping[str, Mapping[str, str]],
    online: Iterable[Mapping[str, Any]],
    window_days: int = ONLINE_WINDOW_DAYS,
) -> list[GainRow]:
    """Every promoted version (a ``promoted_at`` tag), in the order promoted, with its offline and
    online gains; ``online`` are the monitoring store's rows (day, model_version, requests,
    impressions, normalized_entropy, revenue_per_1000_requests)."""
    rows = list(online)
    promoted = sorted(
        ((v, t) for v, t in tags_by_version.items() if t.get(PROMOTED_AT_TAG)),
        key=lambda item: item[1][PROMOTED_AT_TAG],
    )
    out = []
    for version, tags in promoted:
        before, after = _online(served_version(version), rows, window_days)
        out.append(
            GainRow(
                version=version,
                promoted_at=tags[PROMOTED_AT_TAG],
                offline_reference=tags.get(OFFLINE_REFERENCE_TAG),
                offline_ne=_float(tags, OFFLINE_NE_TAG),
                offline_reference_ne=_float(tags, OFFLINE_REFERENCE_NE_TAG),
                before=before,
                after=after,
            )
        )
    return out


def gains_markdown(rows: Sequence[GainRow]) -> str:
    """The table: one row per promoted version, offline then online (NE gain > 0: better)."""
    header = [
        "version",
        "promoted",
        "offline vs",
        "offline NE",
        "offline NE gain",
        "online vs",
        "days before / after",
        "online NE before → after",
        "online NE gain",
        "rev/1000 req before → after",
        "revenue gain",
    ]
    lines = []
    for r in rows:
        before, after = r.before, r.after
        lines.append(
            (
                f"v{r.version}",
                r.promoted_at[:10],
                r.offline_reference or "–",
                f"{fmt(r.offline_reference_ne)} → {fmt(r.offline_ne)}",
                fmt(r.offline_ne_gain, "+.4f"),
                before.version if before else ("not served yet" if after is None else "–"),
                f"{before.days if before else 0} / {after.days if after else 0}",
                f"{fmt(before and before.normalized_entropy)} → {fmt(after and after.normalized_entropy)}",
                fmt(r.online_ne_gain, "+.4f"),
                f"{fmt(before and before.revenue_per_1000_requests, '.1f')} → "
                f"{fmt(after and after.revenue_per_1000_requests, '.1f')}",
                fmt(r.online_revenue_gain, "+.1%"),
            )
        )
    if not lines:
        lines = [("no promoted version yet", *[""] * (len(header) - 1))]
    return markdown_table(header, lines, right=[3, 4, 7, 8, 9, 10])
