"""Impressions joined to their clicks: one row and one label per impression.

``ad_events`` of day D holds every distinct impression served on D with ``clicked`` = 1 when a click
on it arrived inside the attribution window. A click can land after midnight, so day D reads the
clicks of D and D+1; it also reads the impressions of D-1 and the clicks of D-1, so that it can
account for every click logged on D: attributed to D, attributed to D-1 (that day's partition holds
the label), or quarantined as orphan, duplicate, before its impression or outside the window.

Logs whose impressions carry the label themselves (a contract without a click log) need no join:
the day's impressions are deduplicated and their label kept; the accounting has the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from clickloop.contract import CLICK_ID, IMPRESSION_ID, LABEL, LINE_NUMBER, SOURCE_FILE, TIME
from clickloop.storage import atomic_copy_query_to_parquet, one_row, parquet_sql

#: The clicks of day D+1 are the last ones read: no window can be longer.
MAX_WINDOW_HOURS = 24.0

CLICK_OUTCOMES = (
    "attributed_same_day",
    "attributed_previous_day",
    "duplicate_click",
    "orphan_click",
    "click_before_impression",
    "outside_attribution_window",
)
#: The columns the join adds to the impression's own.
EVENT_COLUMNS = (LABEL, CLICK_ID, "click_ts", "click_delay_s")


@dataclass(frozen=True)
class EventsAccounting:
    """Where every valid raw row of day D went."""

    day: str
    impressions_in: int
    events: int
    duplicate_impressions: int
    clicks_in: int
    click_outcomes: dict[str, int]
    clicked: int
    late_clicks: int

    @property
    def ctr(self) -> float:
        return self.clicked / self.events if self.events else 0.0

    def check(self) -> None:
        """The identities that must always hold; a violation is a bug, never data."""
        if self.impressions_in != self.events + self.duplicate_impressions:
            raise AssertionError(f"{self.day}: impressions do not add up: {self}")
        if self.clicks_in != sum(self.click_outcomes.values()):
            raise AssertionError(f"{self.day}: clicks do not add up: {self}")

    def markdown(self) -> str:
        rows = "\n".join(f"| {o} | {n:,} |" for o, n in self.click_outcomes.items())
        return (
            f"Clicks logged on {self.day}: {self.clicks_in:,}\n\n| outcome | clicks |\n|---|---:|\n"
            + rows
            + f"\n\nImpressions logged on {self.day}: {self.impressions_in:,} = "
            f"{self.events:,} events + {self.duplicate_impressions:,} duplicates"
        )


def _partitions_sql(paths_by_key: Sequence[tuple[str, Path]], columns: str = "*") -> str:
    return " UNION ALL ".join(
        f"SELECT {columns}, '{key}' AS pk FROM {parquet_sql(path)}" for key, path in paths_by_key
    )


def _dedup_impressions(
    con: duckdb.DuckDBPyConnection, day: str, impressions: Sequence[tuple[str, Path]]
) -> None:
    """``imp_first``: the id, time and partition of the earliest row of each impression id of D-1
    and D; ``imp_day``: day D's rows, whole, with ``rn`` (1 for the earliest row of its id across
    the days, 2, 3, ... for the later ones). A row is its (source file, line number) within its
    partition.

    Duplicates are rare: the ids logged more than once are found by grouping the narrow keys, and
    only their rows are numbered (``imp_dups``); every other row is its id's first. At 10M
    impressions a day, numbering every row of both days took 23.6 s and joining the whole day back
    to its numbers 54 s of the join's 85; grouping and numbering the duplicates take 6.9 s.
    """
    keys = f"{IMPRESSION_ID}, {TIME}, {SOURCE_FILE}, {LINE_NUMBER}"
    rows = _partitions_sql(impressions, keys)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE imp_dups AS
        WITH repeated AS (SELECT {IMPRESSION_ID} FROM ({rows}) GROUP BY {IMPRESSION_ID} HAVING count(*) > 1)
        SELECT *, row_number() OVER (
                   PARTITION BY {IMPRESSION_ID} ORDER BY {TIME}, pk, {SOURCE_FILE}, {LINE_NUMBER}) AS rn
        FROM ({rows}) WHERE {IMPRESSION_ID} IN (SELECT {IMPRESSION_ID} FROM repeated)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW imp_first AS
        SELECT {IMPRESSION_ID}, {TIME}, pk FROM ({rows})
        WHERE {IMPRESSION_ID} NOT IN (SELECT {IMPRESSION_ID} FROM imp_dups)
        UNION ALL
        SELECT {IMPRESSION_ID}, {TIME}, pk FROM imp_dups WHERE rn = 1
        """
    )
    (path,) = [p for k, p in impressions if k == day]
    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW imp_day AS
        SELECT d.*, coalesce(k.rn, 1) AS rn FROM {parquet_sql(path)} d
        LEFT JOIN (SELECT {SOURCE_FILE}, {LINE_NUMBER}, rn FROM imp_dups WHERE pk = '{day}') k
          USING ({SOURCE_FILE}, {LINE_NUMBER})
        """
    )


def _duplicates_sql() -> str:
    return f"""
        SELECT d.{SOURCE_FILE}, d.{LINE_NUMBER}, 'duplicate_impression' AS reason,
               to_json(d)::VARCHAR AS raw_line
        FROM (SELECT * EXCLUDE (rn) FROM imp_day WHERE rn > 1) d
    """


def _accounting(
    con: duckdb.DuckDBPyConnection, day: str, events_path: Path, outcomes: dict[str, int]
) -> EventsAccounting:
    imp_in, dup_imp = one_row(con, "SELECT count(*), count(*) FILTER (rn > 1) FROM imp_day")
    n_events, clicked, late = one_row(
        con,
        f"""
        SELECT count(*), coalesce(sum({LABEL}), 0),
               count(*) FILTER (click_ts IS NOT NULL AND click_ts::DATE > {TIME}::DATE)
        FROM {parquet_sql(events_path)}
        """,
    )
    accounting = EventsAccounting(
        day=day,
        impressions_in=imp_in,
        events=n_events,
        duplicate_impressions=dup_imp,
        clicks_in=sum(outcomes.values()),
        click_outcomes={o: outcomes.get(o, 0) for o in CLICK_OUTCOMES},
        clicked=int(clicked),
        late_clicks=late,
    )
    accounting.check()
    return accounting


def _check_inputs(day: str, impressions: Sequence[tuple[str, Path]], window_hours: float) -> None:
    if not 0 < window_hours <= MAX_WINDOW_HOURS:
        raise ValueError(f"attribution window must be in (0, {MAX_WINDOW_HOURS}] h: {window_hours}")
    if not any(k == day for k, _ in impressions):
        raise ValueError(f"impressions of {day} are not among the inputs")


def join_events(
    con: duckdb.DuckDBPyConnection,
    day: str,
    impressions: Sequence[tuple[str, Path]],
    clicks: Sequence[tuple[str, Path]],
    window_hours: float,
    events_path: Path,
    quarantine_path: Path,
) -> EventsAccounting:
    """Build ``ad_events`` of ``day`` and its quarantine from (partition key, Parquet path) lists.

    Impressions are deduplicated by id (earliest row wins, across D-1 and D); each impression gets
    its first click within the window; other clicks are quarantined with a reason.
    """
    _check_inputs(day, impressions, window_hours)
    if not any(k > day for k, _ in clicks):
        raise ValueError(f"clicks of the day after {day} are needed: its attribution window is still open")
    window_s = window_hours * 3600.0
    _dedup_impressions(con, day, impressions)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE clk AS
        WITH c AS (SELECT * FROM ({_partitions_sql(clicks)})),
        matched AS (
            SELECT c.{CLICK_ID}, c.{IMPRESSION_ID}, c.{TIME} AS click_ts, c.pk AS click_pk,
                   c.{SOURCE_FILE}, c.{LINE_NUMBER}, i.pk AS imp_pk,
                   date_diff('microsecond', i.{TIME}, c.{TIME}) / 1e6 AS delay_s,
                   CASE WHEN i.{IMPRESSION_ID} IS NULL THEN 'orphan_click'
                        WHEN c.{TIME} < i.{TIME} THEN 'click_before_impression'
                        WHEN date_diff('microsecond', i.{TIME}, c.{TIME}) / 1e6 > {window_s}
                            THEN 'outside_attribution_window'
                   END AS rejected
            FROM c LEFT JOIN imp_first i USING ({IMPRESSION_ID})
        )
        SELECT *,
               CASE WHEN rejected IS NOT NULL THEN rejected
                    WHEN row_number() OVER (
                        PARTITION BY {IMPRESSION_ID}, rejected IS NULL
                        ORDER BY click_ts, {CLICK_ID}, click_pk, {SOURCE_FILE}, {LINE_NUMBER}) = 1
                        THEN CASE WHEN imp_pk = click_pk THEN 'attributed_same_day'
                                  ELSE 'attributed_previous_day' END
                    ELSE 'duplicate_click'
               END AS outcome
        FROM matched
        """
    )
    events_sql = f"""
        SELECT i.* EXCLUDE ({SOURCE_FILE}, {LINE_NUMBER}, rn),
               CAST(a.{CLICK_ID} IS NOT NULL AS TINYINT) AS {LABEL},
               a.{CLICK_ID}, a.click_ts, a.delay_s AS click_delay_s
        FROM imp_day i
        LEFT JOIN (SELECT * FROM clk WHERE outcome LIKE 'attributed%') a USING ({IMPRESSION_ID})
        WHERE i.rn = 1
        ORDER BY i.{TIME}, i.{IMPRESSION_ID}
    """
    quarantine_sql = f"""
        {_duplicates_sql()}
        UNION ALL
        SELECT {SOURCE_FILE}, {LINE_NUMBER}, outcome AS reason,
               to_json(struct_pack({CLICK_ID}, {IMPRESSION_ID}, {TIME} := click_ts))::VARCHAR AS raw_line
        FROM clk WHERE click_pk = '{day}' AND outcome NOT LIKE 'attributed%'
        ORDER BY reason, {SOURCE_FILE}, {LINE_NUMBER}
    """
    # the quarantine first: the events partition is the commit marker of the day
    atomic_copy_query_to_parquet(con, quarantine_sql, quarantine_path)
    atomic_copy_query_to_parquet(con, events_sql, events_path)
    outcomes = dict(
        con.execute(f"SELECT outcome, count(*) FROM clk WHERE click_pk = '{day}' GROUP BY outcome").fetchall()
    )
    return _accounting(con, day, events_path, outcomes)


def label_events(
    con: duckdb.DuckDBPyConnection,
    day: str,
    impressions: Sequence[tuple[str, Path]],
    events_path: Path,
    quarantine_path: Path,
) -> EventsAccounting:
    """``ad_events`` of ``day`` from impressions that carry their own label: deduplicated by id
    (earliest row wins, across D-1 and D); the label of the kept row counts. A duplicate's clicks
    are accounted as ``duplicate_click``; there are no orphan or late clicks to reject."""
    _check_inputs(day, impressions, MAX_WINDOW_HOURS)
    _dedup_impressions(con, day, impressions)
    events_sql = f"""
        SELECT i.* EXCLUDE ({SOURCE_FILE}, {LINE_NUMBER}, rn, {LABEL}),
               CAST(i.{LABEL} AS TINYINT) AS {LABEL}, NULL::VARCHAR AS {CLICK_ID},
               NULL::TIMESTAMPTZ AS click_ts, NULL::DOUBLE AS click_delay_s
        FROM imp_day i WHERE i.rn = 1
        ORDER BY i.{TIME}, i.{IMPRESSION_ID}
    """
    atomic_copy_query_to_parquet(
        con, f"{_duplicates_sql()} ORDER BY reason, {SOURCE_FILE}, {LINE_NUMBER}", quarantine_path
    )
    atomic_copy_query_to_parquet(con, events_sql, events_path)
    kept, duplicated = one_row(
        con,
        f"SELECT coalesce(sum({LABEL}) FILTER (rn = 1), 0), coalesce(sum({LABEL}) FILTER (rn > 1), 0) "
        "FROM imp_day",
    )
    outcomes = {"attributed_same_day": int(kept), "duplicate_click": int(duplicated)}
    return _accounting(con, day, events_path, outcomes)
