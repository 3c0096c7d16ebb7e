"""Dirt in the written logs: how often each fault happens and which lines it hits.

A fault plan turns a clean frame into the lines of one file: the order of the rows (duplicates and
orphan clicks inserted), and per output line an edit (truncated, mistyped or nulled). The plan is
drawn from the day's own fault stream, so the clean records do not depend on the fault rates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

import numpy as np
import pandas as pd

from clickloop.simulator.clock import MS_PER_DAY, day_start_ms
from clickloop.simulator.vocabulary import MIN_DELAY_MS
from clickloop.simulator.world import id_strings

IMPRESSION_FAULTS = ("duplicate_impression", "malformed_line", "wrong_type", "null_field")
CLICK_FAULTS = (
    "duplicate_click",
    "orphan_click",
    "click_before_impression",
    "malformed_line",
    "wrong_type",
    "null_field",
)
IMPRESSION_NULLABLE_IDS = ("impression_id", "user_id", "ad_id", "site_id")
CLICK_NULLABLE_IDS = ("click_id", "impression_id")
IMPRESSION_WRONG_TYPES = ("position", "bid_cpc", "ts")
CLICK_WRONG_TYPES = ("ts_word", "ts_epoch")


@dataclass(frozen=True)
class FaultRates:
    """Per-record probability of each kind of dirt in the written logs (0 = clean logs).

    - duplicate_impression: an impression line repeated verbatim later in the file;
    - duplicate_click: a click line repeated verbatim, or a second click (new click_id) on the
      same impression a few seconds later;
    - orphan_click: an extra click whose impression_id never existed;
    - click_before_impression: a click whose ts is earlier than its impression's ts;
    - malformed_line: a truncated line (broken JSON);
    - wrong_type: a field with the wrong type (position "first", bid_cpc "0.4USD", ts "yesterday",
      a click ts as an epoch-milliseconds number);
    - null_field: a required id (impression_id, user_id, ad_id, site_id, click_id) is null.
    """

    duplicate_impression: float = 0.005
    duplicate_click: float = 0.01
    orphan_click: float = 0.005
    click_before_impression: float = 0.005
    malformed_line: float = 0.002
    wrong_type: float = 0.002
    null_field: float = 0.002

    def __post_init__(self) -> None:
        for name, rate in asdict(self).items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate {name}={rate} must lie in [0, 1]")

    @classmethod
    def clean(cls) -> FaultRates:
        """All rates 0: perfectly clean logs."""
        return cls(**{name: 0.0 for name in asdict(cls())})


@dataclass
class FilePlan:
    """How a clean frame becomes the lines of one file: order of rows, per-line edits, counts."""

    frame: pd.DataFrame
    order: np.ndarray
    edits: dict[int, tuple[str, str, float]]
    faults: dict[str, int]
    altered_rows: np.ndarray
    details: dict[str, int] = field(default_factory=dict)


def _split_counts(rng: np.random.Generator, eligible: int, rates: Sequence[float]) -> list[int]:
    """Exact fault counts (binomial draws), capped so that they never exceed ``eligible``."""
    counts, left = [], eligible
    for rate in rates:
        count = min(int(rng.binomial(eligible, rate)), left)
        counts.append(count)
        left -= count
    return counts


def _line_order(n: int, insert_after: np.ndarray, extra_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Final line order: rows ``0..n-1`` with ``extra_rows[i]`` inserted after row ``insert_after[i]``.

    Returns (row index of every output line, output line of every clean row).
    """
    keys = np.concatenate([2 * np.arange(n), 2 * insert_after + 1])
    rows = np.concatenate([np.arange(n), extra_rows])
    order = np.argsort(keys, kind="stable")
    clean_line = np.searchsorted(keys[order], 2 * np.arange(n))
    return rows[order], clean_line


def _edit_plan(
    rng: np.random.Generator,
    clean_line: np.ndarray,
    rows: dict[str, np.ndarray],
    variants: Mapping[str, Sequence[str]],
) -> dict[int, tuple[str, str, float]]:
    """Per output line: (fault, variant, random number) for malformed / wrong_type / null rows."""
    edits: dict[int, tuple[str, str, float]] = {}
    for fault, chosen in rows.items():
        picks = rng.integers(0, len(variants[fault]), len(chosen))
        cuts = rng.random(len(chosen))
        for row, pick, cut in zip(chosen.tolist(), picks.tolist(), cuts.tolist(), strict=True):
            edits[int(clean_line[row])] = (fault, variants[fault][pick], cut)
    return edits


def plan_impressions(frame: pd.DataFrame, rates: FaultRates, rng: np.random.Generator) -> FilePlan:
    """Choose disjoint impression lines to duplicate, truncate, mistype or null."""
    n = len(frame)
    n_dup, n_mal, n_wrong, n_null = _split_counts(
        rng, n, [rates.duplicate_impression, rates.malformed_line, rates.wrong_type, rates.null_field]
    )
    chosen = rng.choice(n, n_dup + n_mal + n_wrong + n_null, replace=False) if n else np.arange(0)
    dup, mal, wrong, null = np.split(chosen, np.cumsum([n_dup, n_mal, n_wrong]))
    order, clean_line = _line_order(n, rng.integers(dup, n) if n_dup else dup, dup)
    edits = _edit_plan(
        rng,
        clean_line,
        {"malformed_line": mal, "wrong_type": wrong, "null_field": null},
        {
            "malformed_line": ("truncated",),
            "wrong_type": IMPRESSION_WRONG_TYPES,
            "null_field": IMPRESSION_NULLABLE_IDS,
        },
    )
    faults = {
        "duplicate_impression": n_dup,
        "malformed_line": n_mal,
        "wrong_type": n_wrong,
        "null_field": n_null,
    }
    return FilePlan(frame, order, edits, faults, np.sort(np.concatenate([mal, wrong, null])))


@dataclass(frozen=True)
class ClickFile:
    """The clean clicks of one click file and what the fault planner needs to know about them."""

    click_id: np.ndarray
    impression_id: np.ndarray
    ts_ms: np.ndarray
    impression_ts_ms: np.ndarray
    impression_row: np.ndarray
    landing_day: date
    same_day: bool


def plan_clicks(
    clicks: ClickFile,
    rates: FaultRates,
    rng: np.random.Generator,
    next_click: int,
    source_day: date,
    n_impressions: int,
) -> tuple[FilePlan, int]:
    """Choose click faults for one file; returns the plan and the next free click number."""
    n = len(clicks.ts_ms)
    ts_ms = clicks.ts_ms.copy()
    day_start, day_end = day_start_ms(clicks.landing_day), day_start_ms(clicks.landing_day) + MS_PER_DAY - 1
    eligible_before = (
        np.flatnonzero(clicks.impression_ts_ms - day_start >= MIN_DELAY_MS)
        if clicks.same_day
        else np.arange(0)
    )
    (n_before,) = _split_counts(rng, len(eligible_before), [rates.click_before_impression])
    before = rng.choice(eligible_before, n_before, replace=False) if n_before else np.arange(0)
    rest = np.setdiff1d(np.arange(n), before)
    n_dup, n_mal, n_wrong, n_null = _split_counts(
        rng, len(rest), [rates.duplicate_click, rates.malformed_line, rates.wrong_type, rates.null_field]
    )
    chosen = rng.choice(rest, n_dup + n_mal + n_wrong + n_null, replace=False) if len(rest) else rest
    dup, mal, wrong, null = np.split(chosen, np.cumsum([n_dup, n_mal, n_wrong]))
    (n_orphan,) = _split_counts(rng, n, [rates.orphan_click])

    # click_before_impression: the click's clock reads up to 10 minutes before the impression.
    room = np.minimum(clicks.impression_ts_ms[before] - day_start, 600_000)
    ts_ms[before] = clicks.impression_ts_ms[before] - rng.integers(MIN_DELAY_MS, room + 1)

    # duplicate_click: half verbatim repeats anywhere later, half double-clicks with a new click_id.
    new_id = rng.random(n_dup) < 0.5
    verbatim, double = dup[~new_id], dup[new_id]
    double_ts = np.minimum(ts_ms[double] + rng.integers(200, 5_000, len(double)), day_end)
    orphan_at = rng.integers(0, n, n_orphan) if n else np.arange(0)
    orphan_ts = np.clip(ts_ms[orphan_at] + rng.integers(0, 60_000, n_orphan), day_start, day_end)
    n_new = len(double) + n_orphan
    new_ids = id_strings(f"k-{source_day:%Y%m%d}-", next_click, n_new, 7)
    orphan_impressions = id_strings(
        f"i-{source_day:%Y%m%d}-", n_impressions + 1 + rng.integers(0, 10**6), n_orphan, 7
    )
    frame = pd.DataFrame(
        {
            "click_id": np.concatenate([clicks.click_id, clicks.click_id[verbatim], new_ids]),
            "impression_id": np.concatenate(
                [
                    clicks.impression_id,
                    clicks.impression_id[verbatim],
                    clicks.impression_id[double],
                    orphan_impressions,
                ]
            ),
            "ts": np.concatenate([ts_ms, ts_ms[verbatim], double_ts, orphan_ts]),
        }
    )
    insert_after = np.concatenate(
        [
            rng.integers(verbatim, n) if len(verbatim) else verbatim,
            np.minimum(double + rng.integers(0, 50, len(double)), n - 1) if len(double) else double,
            orphan_at,
        ]
    )
    order, clean_line = _line_order(n, insert_after, n + np.arange(len(verbatim) + n_new))
    edits = _edit_plan(
        rng,
        clean_line,
        {"malformed_line": mal, "wrong_type": wrong, "null_field": null},
        {"malformed_line": ("truncated",), "wrong_type": CLICK_WRONG_TYPES, "null_field": CLICK_NULLABLE_IDS},
    )
    faults = {
        "duplicate_click": n_dup,
        "orphan_click": n_orphan,
        "click_before_impression": n_before,
        "malformed_line": n_mal,
        "wrong_type": n_wrong,
        "null_field": n_null,
    }
    details = {"duplicate_click_same_line": len(verbatim), "duplicate_click_new_id": len(double)}
    altered = np.sort(np.concatenate([before, mal, wrong, null]))
    return FilePlan(frame, order, edits, faults, altered, details), next_click + n_new


_FIELD_PATTERNS: dict[str, re.Pattern[str]] = {
    name: re.compile(rf'"{name}":("(?:[^"\\]|\\.)*"|[^,}}]+)')
    for name in ("impression_id", "user_id", "ad_id", "site_id", "click_id", "position", "bid_cpc", "ts")
}


def _replace_field(line: str, name: str, make: Callable[[str], str]) -> str:
    """Replace the JSON value of field ``name`` with ``make(old_value_text)``."""
    return _FIELD_PATTERNS[name].sub(lambda m: f'"{name}":{make(m.group(1))}', line, count=1)


def _epoch_ms_text(value: str) -> str:
    """A quoted ISO timestamp as the text of an epoch-milliseconds JSON number."""
    parsed = datetime.fromisoformat(value.strip('"').replace("Z", "+00:00"))
    return str(int(parsed.timestamp() * 1000))


def apply_edit(line: str, fault: str, variant: str, u: float) -> str:
    """Corrupt one rendered JSON line."""
    if fault == "malformed_line":
        return line[: 1 + int(u * (len(line) - 2))]
    if fault == "null_field":
        return _replace_field(line, variant, lambda _: "null")
    if variant == "position":
        return _replace_field(line, "position", lambda v: '"first"' if v == "1" else '"second"')
    if variant == "bid_cpc":
        return _replace_field(line, "bid_cpc", lambda v: f'"{v}USD"')
    if variant in ("ts", "ts_word"):
        return _replace_field(line, "ts", lambda _: '"yesterday"')
    if variant == "ts_epoch":
        return _replace_field(line, "ts", _epoch_ms_text)
    raise ValueError(f"unknown edit {fault}/{variant}")
