"""Where every raw line of a day went: ingest one day into the warehouse, and account for it.

A day of one log is read from its files, typed by the contract, and written atomically: its valid
rows to the partition, its refused lines to the quarantine with the file, the line, the raw text
and the reason. The accounting always adds up (lines read = valid + quarantined + CSV headers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import duckdb

from clickloop.contract import TIME, LogSpec
from clickloop.ingest import ParsedLogs, TimeWindow, ingest_to_parquet
from clickloop.presentation import cell, markdown_table
from clickloop.privacy import Pseudonymiser
from clickloop.storage import Warehouse, parquet_sql

#: Raw lines shown in the UI per partition.
SAMPLE_LINES = 10


def day_window(day: date) -> TimeWindow:
    """The UTC bounds of a day."""
    start = datetime.combine(day, time(0), UTC)
    return TimeWindow(start, start + timedelta(days=1))


@dataclass(frozen=True)
class IngestedDay:
    parsed: ParsedLogs
    path: Path
    quarantine_path: Path


def ingest_day(
    warehouse: Warehouse,
    files: Sequence[Path],
    spec: LogSpec,
    table: str,
    day: date,
    pseudonymiser: Pseudonymiser | None = None,
) -> IngestedDay:
    """Parse one day of one log; write its quarantine, then its typed rows, each atomically (a
    partition that exists always has its quarantine beside it). Personal ids are stored as
    ``pseudonymiser``'s pseudonyms (needed when the log has personal fields)."""
    key = day.isoformat()
    path = warehouse.partition_path(table, key)
    quarantine_path = warehouse.quarantine_path(table, key)

    def write_quarantine(parsed: ParsedLogs) -> None:  # first: the partition is the commit marker
        warehouse.write_quarantine(table, key, parsed.quarantine)

    with warehouse.duckdb() as con:
        parsed = ingest_to_parquet(
            con,
            files,
            spec,
            path,
            day_window(day),
            TIME,
            before_commit=write_quarantine,
            pseudonymiser=pseudonymiser,
        )
    return IngestedDay(parsed, path, quarantine_path)


def reasons_markdown(by_reason: dict[str, int]) -> str:
    rows = [(reason, f"{count:,}") for reason, count in by_reason.items()] or [("(none)", "0")]
    return markdown_table(["reason", "lines"], rows, right=[1])


def sample_markdown(parsed: ParsedLogs, limit: int = SAMPLE_LINES) -> str:
    """The first quarantined lines: where they are, why, and what they said."""
    rows = [
        (f"{Path(r['source_file']).name}:{r['line_number']}", r["reason"], f"`{cell(r['raw_line'])}`")
        for r in parsed.quarantine.slice(0, limit).to_pylist()
    ]
    return markdown_table(["file:line", "reason", "raw line"], rows or [("", "", "")])


def quarantined_counts(con: duckdb.DuckDBPyConnection, quarantine_path: Path) -> dict[str, int]:
    """Quarantined lines per reason of a written quarantine file (empty when there is none)."""
    if not quarantine_path.exists():
        return {}
    rows = con.sql(
        f"SELECT reason, count(*) FROM {parquet_sql(quarantine_path)} GROUP BY reason ORDER BY reason"
    ).fetchall()
    return {str(reason): int(count) for reason, count in rows}
