"""Impressions joined to their clicks: one row and one label per impression.

``ad_events`` of day D holds every distinct impression served on D with ``clicked`` = 1 when a click
on it arrived inside the attribution window (default 24 h). A click can land after midnight, so day D
reads the clicks of D and D+1; it also reads the impressions of D-1 and the clicks of D-1, so that it
can account for every click logged on D: attributed to D, attributed to D-1 (that day's partition
holds the label), or quarantined as orphan, duplicate, before its impression or outside the window.
Which days are read comes from Dagster's partition mappings; the join runs in DuckDB over Parquet.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dagster import (
    AssetDep,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    asset,
)
from pydantic import Field

import duckdb

from assets.guards import require_upstream_checks_passed
from assets.partitions import daily_partitions
from assets.raw_logs import raw_clicks, raw_impressions
from resources.warehouse import Warehouse, atomic_copy_query_to_parquet

#: the impressions of D-1 and D: clicks logged on D may belong to either day.
IMPRESSIONS_FOR_EVENTS = TimeWindowPartitionMapping(
    start_offset=-1, end_offset=0, allow_nonexistent_upstream_partitions=True
)
#: the clicks of D-1 (to rank duplicates of D-1's impressions), D, and D+1 (late clicks).
CLICKS_FOR_EVENTS = TimeWindowPartitionMapping(
    start_offset=-1, end_offset=1, allow_nonexistent_upstream_partitions=True
)
MAX_WINDOW_HOURS = 24.0  # the clicks mapping reaches one day past D

CLICK_OUTCOMES = (
    "attributed_same_day",
    "attributed_previous_day",
    "duplicate_click",
    "orphan_click",
    "click_before_impression",
    "outside_attribution_window",
)


class AdEventsConfig(Config):
    attribution_window_hours: float = Field(
        default=24.0,
        gt=0,
        le=MAX_WINDOW_HOURS,
        description="A click counts for an impression when it arrives within this many hours.",
    )


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


def _partitions_sql(paths_by_key: Sequence[tuple[str, Path]]) -> str:
    return " UNION ALL ".join(
        f"SELECT *, '{key}' AS pk FROM read_parquet('{path}')" for key, path in paths_by_key
    )


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

    Impressions are deduplicated by ``impression_id`` (earliest row wins, across D-1 and D); each
    impression gets its first click within the window; other clicks are quarantined with a reason.
    """
    if not 0 < window_hours <= MAX_WINDOW_HOURS:
        raise ValueError(f"attribution window must be in (0, {MAX_WINDOW_HOURS}] h: {window_hours}")
    if not any(k == day for k, _ in impressions):
        raise ValueError(f"impressions of {day} are not among the inputs")
    if not any(k > day for k, _ in clicks):
        raise ValueError(
            f"clicks of the day after {day} are needed: its attribution window is still open"
        )
    window_s = window_hours * 3600.0
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE imp_all AS
        SELECT *, row_number() OVER (
                   PARTITION BY impression_id ORDER BY ts, pk, source_file, line_number) AS rn
        FROM ({_partitions_sql(impressions)})
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE clk AS
        WITH c AS (SELECT * FROM ({_partitions_sql(clicks)})),
        matched AS (
            SELECT c.click_id, c.impression_id, c.ts AS click_ts, c.pk AS click_pk,
                   c.source_file, c.line_number, i.pk AS imp_pk,
                   date_diff('microsecond', i.ts, c.ts) / 1e6 AS delay_s,
                   CASE WHEN i.impression_id IS NULL THEN 'orphan_click'
                        WHEN c.ts < i.ts THEN 'click_before_impression'
                        WHEN date_diff('microsecond', i.ts, c.ts) / 1e6 > {window_s}
                            THEN 'outside_attribution_window'
                   END AS rejected
            FROM c LEFT JOIN (SELECT * FROM imp_all WHERE rn = 1) i USING (impression_id)
        )
        SELECT *,
               CASE WHEN rejected IS NOT NULL THEN rejected
                    WHEN row_number() OVER (
                        PARTITION BY impression_id, rejected IS NULL
                        ORDER BY click_ts, click_id, click_pk, source_file, line_number) = 1
                        THEN CASE WHEN imp_pk = click_pk THEN 'attributed_same_day'
                                  ELSE 'attributed_previous_day' END
                    ELSE 'duplicate_click'
               END AS outcome
        FROM matched
        """
    )
    events_sql = f"""
        SELECT i.* EXCLUDE (source_file, line_number, pk, rn),
               CAST(a.click_id IS NOT NULL AS TINYINT) AS clicked,
               a.click_id, a.click_ts, a.delay_s AS click_delay_s
        FROM imp_all i
        LEFT JOIN (SELECT * FROM clk WHERE outcome LIKE 'attributed%') a USING (impression_id)
        WHERE i.pk = '{day}' AND i.rn = 1
        ORDER BY i.ts, i.impression_id
    """
    quarantine_sql = f"""
        SELECT d.source_file, d.line_number, 'duplicate_impression' AS reason,
               to_json(d)::VARCHAR AS raw_line
        FROM (SELECT * EXCLUDE (pk, rn) FROM imp_all WHERE pk = '{day}' AND rn > 1) d
        UNION ALL
        SELECT source_file, line_number, outcome AS reason,
               to_json(struct_pack(click_id, impression_id, ts := click_ts))::VARCHAR AS raw_line
        FROM clk WHERE click_pk = '{day}' AND outcome NOT LIKE 'attributed%'
        ORDER BY reason, source_file, line_number
    """
    atomic_copy_query_to_parquet(con, events_sql, events_path)
    atomic_copy_query_to_parquet(con, quarantine_sql, quarantine_path)

    imp_in, dup_imp = con.execute(
        f"SELECT count(*), count(*) FILTER (rn > 1) FROM imp_all WHERE pk = '{day}'"
    ).fetchone()
    outcomes = dict(
        con.execute(
            f"SELECT outcome, count(*) FROM clk WHERE click_pk = '{day}' GROUP BY outcome"
        ).fetchall()
    )
    n_events, clicked, late = con.execute(
        f"""
        SELECT count(*), coalesce(sum(clicked), 0),
               count(*) FILTER (click_ts IS NOT NULL AND click_ts::DATE > ts::DATE)
        FROM read_parquet('{events_path}')
        """
    ).fetchone()
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


def events_metadata(acc: EventsAccounting) -> dict[str, object]:
    """What the UI shows about one day of events: rows, CTR, and where every click went."""
    rows = "\n".join(f"| {o} | {n:,} |" for o, n in acc.click_outcomes.items())
    return {
        "dagster/row_count": acc.events,
        "impressions_in": acc.impressions_in,
        "duplicate_impressions": acc.duplicate_impressions,
        "clicked": acc.clicked,
        "ctr": float(acc.ctr),
        "late_clicks_after_midnight": acc.late_clicks,
        "clicks_in": acc.clicks_in,
        "orphan_clicks": acc.click_outcomes["orphan_click"],
        "clicks_before_impression": acc.click_outcomes["click_before_impression"],
        "duplicate_clicks": acc.click_outcomes["duplicate_click"],
        "click_accounting": MetadataValue.md(
            f"Clicks logged on {acc.day}: {acc.clicks_in:,}\n\n| outcome | clicks |\n|---|---:|\n"
            + rows
            + f"\n\nImpressions logged on {acc.day}: {acc.impressions_in:,} = "
            f"{acc.events:,} events + {acc.duplicate_impressions:,} duplicates"
        ),
    }


@asset(
    partitions_def=daily_partitions,
    deps=[
        AssetDep(raw_impressions, partition_mapping=IMPRESSIONS_FOR_EVENTS),
        AssetDep(raw_clicks, partition_mapping=CLICKS_FOR_EVENTS),
    ],
    group_name="events",
    kinds={"parquet", "duckdb"},
)
def ad_events(
    context: AssetExecutionContext, config: AdEventsConfig, warehouse: Warehouse
) -> MaterializeResult:
    """One row per distinct impression of the day with its click label (first click within the
    attribution window); rejected clicks and duplicate impressions are in the quarantine."""
    day = context.partition_key
    upstream = {
        name: context.asset_partition_keys_for_input(name)
        for name in ("raw_impressions", "raw_clicks")
    }
    require_upstream_checks_passed(context, upstream)
    impressions, clicks = (
        list(zip(keys, warehouse.require_partition_paths(name, keys)))
        for name, keys in upstream.items()
    )
    events_path = warehouse.partition_path("ad_events", day)
    with warehouse.duckdb() as con:
        acc = join_events(
            con,
            day,
            impressions,
            clicks,
            config.attribution_window_hours,
            events_path,
            warehouse.quarantine_path("ad_events", day),
        )
    context.log.info(
        f"ad_events {day}: {acc.events:,} events, CTR {acc.ctr:.4f}, outcomes {acc.click_outcomes}"
    )
    metadata = events_metadata(acc)
    metadata["path"] = MetadataValue.path(str(events_path))
    metadata["attribution_window_hours"] = config.attribution_window_hours
    return MaterializeResult(metadata=metadata)
