"""Raw ad-server logs → typed Parquet, one daily partition at a time; nothing is lost.

Every line of every file of the day ends up in exactly one place: the typed table of the asset, or
its quarantine with the file, the line number, the raw line and the reason. Parsing and typing run
in DuckDB over the lines (its JSON functions parse each line once); semantic rules (ranges,
timestamps inside the partition, the price unit) are Great Expectations checks on the typed table.
"""


import gzip
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.partitions import daily_partitions
from resources.landing import LogKind, LogSource
from resources.warehouse import Warehouse

FieldKind = Literal["string", "int", "float", "timestamp"]


@dataclass(frozen=True)
class LogField:
    """One field of a log line: its JSON type, its typed column, and whether it may be null."""

    name: str
    kind: FieldKind
    required: bool = True


IMPRESSION_FIELDS: tuple[LogField, ...] = (
    LogField("impression_id", "string"),
    LogField("ts", "timestamp"),
    LogField("request_id", "string"),
    LogField("user_id", "string"),
    LogField("user_segment", "string", required=False),
    LogField("ad_id", "string"),
    LogField("campaign_id", "string"),
    LogField("advertiser_id", "string"),
    LogField("ad_category", "string", required=False),
    LogField("site_id", "string"),
    LogField("site_category", "string", required=False),
    LogField("device_type", "string", required=False),
    LogField("os", "string", required=False),
    LogField("country", "string", required=False),
    LogField("position", "int"),
    LogField("bid_cpc", "float"),
    LogField("model_version", "string", required=False),
    LogField("predicted_ctr", "float", required=False),
)

CLICK_FIELDS: tuple[LogField, ...] = (
    LogField("click_id", "string"),
    LogField("impression_id", "string"),
    LogField("ts", "timestamp"),
)

LOG_SCHEMAS: dict[LogKind, tuple[LogField, ...]] = {
    "impressions": IMPRESSION_FIELDS,
    "clicks": CLICK_FIELDS,
}

# JSON types DuckDB's json_type reports that each field kind accepts.
_JSON_TYPES: dict[FieldKind, tuple[str, ...]] = {
    "string": ("VARCHAR",),
    "timestamp": ("VARCHAR",),
    "int": ("UBIGINT", "BIGINT"),
    "float": ("UBIGINT", "BIGINT", "DOUBLE"),
}
_SQL_TYPES: dict[FieldKind, str] = {
    "string": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "int": "INTEGER",
    "float": "DOUBLE",
}

LINES_SCHEMA = pa.schema(
    [("source_file", pa.string()), ("line_number", pa.int64()), ("line", pa.string())]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("line_number", pa.int64()),
        ("reason", pa.string()),
        ("raw_line", pa.string()),
    ]
)


@dataclass
class ParsedLogs:
    """The outcome of parsing one partition's files."""

    valid: pa.Table
    quarantine: pa.Table
    lines_read: int
    files: list[str] = field(default_factory=list)

    @property
    def quarantined_by_reason(self) -> dict[str, int]:
        if self.quarantine.num_rows == 0:
            return {}
        counts = self.quarantine.group_by("reason").aggregate([("reason", "count")])
        return dict(
            sorted(zip(counts["reason"].to_pylist(), counts["reason_count"].to_pylist()))
        )


#: Uncompressed bytes of log text typed at a time: a day of any size is read in chunks of whole
#: lines, so the memory of ingest is bounded by the chunk plus the typed rows, not the file.
CHUNK_BYTES = 64 * 1024 * 1024


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # keep the line (with U+FFFD) so it can be quarantined and read
        return data.decode("utf-8", errors="replace")


def _lines_table(path: Path, body: bytes, first_line: int) -> pa.Table:
    """The lines of ``body`` (whole lines joined by newlines, no final newline), numbered from
    ``first_line``."""
    text = _decode(body)
    lines = pc.split_pattern(pa.array([text], pa.large_string()), "\n").flatten()
    if "\r" in text:
        lines = pc.replace_substring_regex(lines, "\r$", "")
    n = len(lines)
    return pa.table(
        {
            "source_file": pa.array(np.full(n, str(path), dtype=object), pa.string()),
            "line_number": pa.array(np.arange(first_line, first_line + n, dtype=np.int64)),
            "line": lines.cast(pa.string()),
        },
        schema=LINES_SCHEMA,
    )


def iter_line_chunks(files: Sequence[Path], chunk_bytes: int = CHUNK_BYTES) -> Iterator[pa.Table]:
    """Every line of the files (gzip or plain) with its file and 1-based line number, in chunks
    of whole lines of about ``chunk_bytes``, in file and line order.

    A final newline does not make an extra line ("\n" alone is one empty line), a trailing
    carriage return is dropped, and bytes that are not UTF-8 are kept as U+FFFD so the line can
    still be quarantined and inspected.
    """
    for path in files:
        opener = gzip.open if path.name.endswith(".gz") else open
        next_line = 1
        carry = b""
        with opener(path, "rb") as fh:
            while block := fh.read(chunk_bytes):
                data = carry + block
                cut = data.rfind(b"\n")
                if cut < 0:  # no complete line yet
                    carry = data
                    continue
                carry = data[cut + 1 :]
                chunk = _lines_table(path, data[:cut], next_line)
                next_line += chunk.num_rows
                yield chunk
        if carry:  # the last line has no newline
            yield _lines_table(path, carry, next_line)


def read_lines(files: Sequence[Path]) -> pa.Table:
    """Every line of the files as one table (see :func:`iter_line_chunks`)."""
    parts = list(iter_line_chunks(files))
    return pa.concat_tables(parts) if parts else LINES_SCHEMA.empty_table()


def _reason_sql(fields: Sequence[LogField]) -> str:
    """A CASE expression naming the first reason a line cannot be typed, NULL when it can.

    It reads ``t<i>``, the JSON type of field i (computed once per line, 'NULL' when missing).
    """
    rules = [
        "WHEN trim(line) = '' THEN 'empty_line'",
        "WHEN NOT is_valid THEN 'invalid_json'",
        "WHEN NOT is_object THEN 'not_an_object'",
    ]
    for i, f in enumerate(fields, start=1):
        if f.required:
            rules.append(f"WHEN t{i} = 'NULL' THEN 'null:{f.name}'")
        accepted = ", ".join(f"'{t}'" for t in _JSON_TYPES[f.kind])
        rules.append(f"WHEN t{i} NOT IN ('NULL', {accepted}) THEN 'bad_type:{f.name}'")
        if f.kind == "timestamp":
            rules.append(
                f"WHEN t{i} <> 'NULL' AND TRY_CAST(v[{i}]->>'$' AS TIMESTAMPTZ) IS NULL "
                f"THEN 'bad_type:{f.name}'"
            )
    return "CASE " + " ".join(rules) + " ELSE NULL END"


def _typed_columns_sql(fields: Sequence[LogField]) -> str:
    return ", ".join(
        f"CAST(v[{i}]->>'$' AS {_SQL_TYPES[f.kind]}) AS {f.name}"
        for i, f in enumerate(fields, start=1)
    )


def parse_log_lines(
    con: duckdb.DuckDBPyConnection, lines: pa.Table, fields: Sequence[LogField]
) -> tuple[pa.Table, pa.Table]:
    """Split lines into (typed valid rows, quarantined rows with a reason)."""
    paths = ", ".join(f"'$.{f.name}'" for f in fields)
    types = ", ".join(
        f"coalesce(json_type(v[{i}]), 'NULL') AS t{i}" for i in range(1, len(fields) + 1)
    )
    con.register("log_lines", lines)
    try:
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE classified AS
            WITH checked AS (
                SELECT source_file, line_number, line, json_valid(line) AS is_valid
                FROM log_lines
            ),
            objects AS (
                SELECT *, CASE WHEN is_valid THEN json_type(line) = 'OBJECT' ELSE false END AS is_object
                FROM checked
            ),
            extracted AS (
                SELECT *, CASE WHEN is_object THEN json_extract(line, [{paths}]) END AS v
                FROM objects
            ),
            typed AS (
                SELECT *, {types} FROM extracted
            )
            SELECT source_file, line_number, line, v, {_reason_sql(fields)} AS reason
            FROM typed
            """
        )
        valid = con.sql(
            f"""
            SELECT {_typed_columns_sql(fields)}, source_file, line_number
            FROM classified WHERE reason IS NULL ORDER BY source_file, line_number
            """
        ).to_arrow_table()
        quarantine = con.sql(
            """
            SELECT source_file, line_number, reason, line AS raw_line
            FROM classified WHERE reason IS NOT NULL ORDER BY source_file, line_number
            """
        ).to_arrow_table()
    finally:
        con.execute("DROP TABLE IF EXISTS classified")
        con.unregister("log_lines")
    return _normalise_timestamps(valid), quarantine.cast(QUARANTINE_SCHEMA)


def _normalise_timestamps(table: pa.Table) -> pa.Table:
    """Store every timestamp as microseconds in UTC, whatever DuckDB's session time zone."""
    for i, column in enumerate(table.schema):
        if pa.types.is_timestamp(column.type):
            table = table.set_column(
                i, column.name, table.column(i).cast(pa.timestamp("us", tz="UTC"))
            )
    return table


def parse_log_files(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[Path],
    kind: LogKind,
    chunk_bytes: int = CHUNK_BYTES,
) -> ParsedLogs:
    """Read and type one partition's files, a chunk of lines at a time; every line is either
    valid or quarantined."""
    valid_parts: list[pa.Table] = []
    quarantine_parts: list[pa.Table] = []
    lines_read = 0
    for lines in iter_line_chunks(files, chunk_bytes):
        valid, quarantine = parse_log_lines(con, lines, LOG_SCHEMAS[kind])
        lines_read += lines.num_rows
        valid_parts.append(valid)
        quarantine_parts.append(quarantine)
        del lines
    if not valid_parts:
        valid, quarantine = parse_log_lines(con, LINES_SCHEMA.empty_table(), LOG_SCHEMAS[kind])
    else:
        valid = pa.concat_tables(valid_parts)
        quarantine = pa.concat_tables(quarantine_parts)
    parsed = ParsedLogs(valid, quarantine, lines_read, [str(f) for f in files])
    if valid.num_rows + quarantine.num_rows != parsed.lines_read:  # the identity, enforced
        raise AssertionError(
            f"{kind}: {parsed.lines_read} lines read but {valid.num_rows} valid + "
            f"{quarantine.num_rows} quarantined"
        )
    return parsed


def accounting_metadata(parsed: ParsedLogs, quarantine_path: Path) -> dict[str, object]:
    """What the UI shows about one ingested partition: the counts always add up."""
    by_reason = parsed.quarantined_by_reason
    rows = "\n".join(f"| {reason} | {count:,} |" for reason, count in by_reason.items())
    table = "| reason | lines |\n|---|---:|\n" + (rows or "| (none) | 0 |")
    sample = parsed.quarantine.slice(0, 10).to_pylist()
    sample_md = "\n".join(
        f"| {Path(r['source_file']).name}:{r['line_number']} | {r['reason']} | "
        f"`{r['raw_line'][:80].replace('|', '¦')}` |"
        for r in sample
    )
    return {
        "lines_read": parsed.lines_read,
        "valid_rows": parsed.valid.num_rows,
        "quarantined_rows": parsed.quarantine.num_rows,
        "quarantined_by_reason": MetadataValue.md(table),
        "quarantine_sample": MetadataValue.md(
            "| file:line | reason | raw line |\n|---|---|---|\n" + (sample_md or "| | | |")
        ),
        "quarantine_path": MetadataValue.path(str(quarantine_path)),
        "source_files": MetadataValue.json(parsed.files),
        "dagster/row_count": parsed.valid.num_rows,
    }


def ingest_partition(
    log_source: LogSource, warehouse: Warehouse, kind: LogKind, asset_name: str, day: date
) -> tuple[ParsedLogs, Path, Path]:
    """Parse one day of one log kind; write its typed rows and its quarantine atomically.

    Returns the parsed logs, the partition's Parquet path and its quarantine's path.
    """
    files = log_source.partition_files(kind, day)
    with warehouse.duckdb() as con:
        parsed = parse_log_files(con, files, kind)
    key = day.isoformat()
    path = warehouse.write_partition(asset_name, key, parsed.valid)
    quarantine_path = warehouse.write_quarantine(asset_name, key, parsed.quarantine)
    return parsed, path, quarantine_path


def _materialize(
    context: AssetExecutionContext, log_source: LogSource, warehouse: Warehouse, kind: LogKind
) -> MaterializeResult:
    day = context.partition_time_window.start.date()
    parsed, path, quarantine_path = ingest_partition(
        log_source, warehouse, kind, context.asset_key.path[-1], day
    )
    context.log.info(
        f"{kind} {day}: {parsed.lines_read:,} lines = {parsed.valid.num_rows:,} valid + "
        f"{parsed.quarantine.num_rows:,} quarantined {parsed.quarantined_by_reason}"
    )
    metadata = accounting_metadata(parsed, quarantine_path)
    metadata["path"] = MetadataValue.path(str(path))
    metadata["log_source"] = log_source.describe()
    return MaterializeResult(metadata=metadata)


@asset(partitions_def=daily_partitions, group_name="ingest", kinds={"parquet", "duckdb"})
def raw_impressions(
    context: AssetExecutionContext, log_source: LogSource, warehouse: Warehouse
) -> MaterializeResult:
    """Typed ad impressions of one UTC day, exactly as the ad server logged them (duplicates
    included); lines that cannot be typed are in the quarantine with their file, line and reason."""
    return _materialize(context, log_source, warehouse, "impressions")


@asset(partitions_def=daily_partitions, group_name="ingest", kinds={"parquet", "duckdb"})
def raw_clicks(
    context: AssetExecutionContext, log_source: LogSource, warehouse: Warehouse
) -> MaterializeResult:
    """Typed clicks of one UTC day (by the click's own timestamp), as logged; untypeable lines
    are in the quarantine with their file, line and reason."""
    return _materialize(context, log_source, warehouse, "clicks")
