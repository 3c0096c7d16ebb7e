"""The ad catalog: each ad's own columns (advertiser, category, bid…) as the ad server last logged them.

``/rank`` takes candidate ad ids; what the model needs of an ad besides its history (its categorical
columns, its entity keys) and its price come from here, unless the request carries them. The catalog
of day D is built from the ``ad_events`` of the statistics' window (the days the ad server knew when
D began), one row per ad: the values of its latest impression.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb

from clickloop.contract import AD_ID, BID, TIME, LogContract
from clickloop.storage import atomic_copy_query_to_parquet, parquet_list_sql

#: The warehouse table (one partition per day) and the asset that writes it.
AD_CATALOG = "ad_catalog"


def catalog_columns(contract: LogContract) -> tuple[str, ...]:
    """The ad-side columns a candidate needs besides its id: those the features read, and the bid."""
    needed = set(contract.candidate_columns) | ({BID} if contract.has_bid else set())
    return tuple(c for c in contract.ad_side if c != AD_ID and c in needed)


def catalog_sql(contract: LogContract, events: Sequence[Path]) -> str:
    """One row per ad of the events: its latest logged values of :func:`catalog_columns`."""
    columns = catalog_columns(contract)
    values = "".join(f", arg_max({c}, {TIME}) AS {c}" for c in columns)
    if not events:  # no history: an empty catalog with the right columns
        typed = ", ".join(f"CAST(NULL AS VARCHAR) AS {c}" for c in (AD_ID, *columns) if c != BID)
        bid = ", CAST(NULL AS DOUBLE) AS bid_cpc" if BID in columns else ""
        return f"SELECT {typed}{bid}, CAST(NULL AS TIMESTAMPTZ) AS last_seen LIMIT 0"
    return (
        f"SELECT CAST({AD_ID} AS VARCHAR) AS {AD_ID}{values}, max({TIME}) AS last_seen "
        f"FROM {parquet_list_sql(events)} GROUP BY {AD_ID} ORDER BY {AD_ID}"
    )


def build_ad_catalog(
    con: duckdb.DuckDBPyConnection, contract: LogContract, events: Sequence[Path], target: Path
) -> int:
    """Write the catalog of the ``events`` files to ``target`` (atomically); returns its ads."""
    atomic_copy_query_to_parquet(con, catalog_sql(contract, events), target)
    return int(con.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()[0])
