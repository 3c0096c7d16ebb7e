"""Raw ad-server logs → typed rows and a quarantine, by the log contract; nothing is lost.

Every line of every file of a day ends up in exactly one place: the typed table, or the quarantine
with its file, line number, raw text and the first reason it was refused:

=============================  =====================================================================
reason                         the line
=============================  =====================================================================
``empty_line``                 is blank
``invalid_json``               is not JSON (JSON lines)
``not_an_object``              is JSON but not an object (JSON lines)
``bad_row:field_count``        has another number of fields than the header (CSV)
``null:<column>``              lacks a required field, or it is null
``bad_type:<column>``          holds a value of the wrong type (``"first"`` for a position)
``not_allowed:<column>``       holds a value outside the field's allowed set
``out_of_range:<column>``      holds a value outside the field's range
``outside_partition:<time>``   is stamped outside the day it was delivered for
=============================  =====================================================================

Reading is format-specific (JSON lines and CSV line by line, gzip or not, Parquet row by row; each
file's format comes from its extension) and yields, per field, a type tag and the value as text.
Typing and the row rules are one DuckDB query for every format. Files are read in chunks of whole
lines, so memory is bounded by the chunk, not the day.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clickloop.contract import LABEL, LINE_NUMBER, SOURCE_FILE, Field, LogSpec, sql_literal
from clickloop.landing import file_format

#: Uncompressed bytes of log text typed at a time.
CHUNK_BYTES = 64 * 1024 * 1024
#: Rows of a Parquet log typed at a time.
PARQUET_BATCH_ROWS = 1_000_000

LINES_SCHEMA = pa.schema([(SOURCE_FILE, pa.string()), (LINE_NUMBER, pa.int64()), ("line", pa.string())])
QUARANTINE_SCHEMA = pa.schema(
    [
        (SOURCE_FILE, pa.string()),
        (LINE_NUMBER, pa.int64()),
        ("reason", pa.string()),
        ("raw_line", pa.string()),
    ]
)

# Type tags a reader gives each value: DuckDB's json_type names for JSON, 'TEXT' for a value that
# only the cast can judge (CSV, Parquet), 'NULL' for a missing or null value.
_ACCEPTED_TAGS: dict[str, tuple[str, ...]] = {
    "string": ("VARCHAR", "TEXT"),
    "int": ("UBIGINT", "BIGINT", "TEXT"),
    "float": ("UBIGINT", "BIGINT", "DOUBLE", "TEXT"),
    "timestamp": ("VARCHAR", "TEXT"),
}
_EPOCH_TAGS = ("UBIGINT", "BIGINT", "DOUBLE", "TEXT")
_SQL_TYPES = {"string": "VARCHAR", "int": "INTEGER", "float": "DOUBLE", "timestamp": "TIMESTAMPTZ"}


@dataclass
class ParsedLogs:
    """The outcome of parsing one partition's files."""

    valid: pa.Table
    quarantine: pa.Table
    lines_read: int
    files: list[str] = field(default_factory=list)
    #: CSV header lines (read, neither valid nor quarantined)
    header_lines: int = 0

    @property
    def quarantined_by_reason(self) -> dict[str, int]:
        return count_reasons(self.quarantine)


def count_reasons(quarantine: pa.Table) -> dict[str, int]:
    """Quarantined rows per reason, sorted by reason."""
    if quarantine.num_rows == 0:
        return {}
    counts = quarantine.group_by("reason").aggregate([("reason", "count")])
    return dict(sorted(zip(counts["reason"].to_pylist(), counts["reason_count"].to_pylist(), strict=True)))


@dataclass(frozen=True)
class TimeWindow:
    """The UTC bounds ``[start, end)`` of the day a partition holds."""

    start: datetime
    end: datetime

    def sql(self) -> tuple[str, str]:
        return f"TIMESTAMPTZ '{self.start.isoformat()}'", f"TIMESTAMPTZ '{self.end.isoformat()}'"


# --- Reading lines ------------------------------------------------------------------------------


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
            SOURCE_FILE: pa.array(np.full(n, str(path), dtype=object), pa.string()),
            LINE_NUMBER: pa.array(np.arange(first_line, first_line + n, dtype=np.int64)),
            "line": lines.cast(pa.string()),
        },
        schema=LINES_SCHEMA,
    )


def iter_line_chunks(files: Sequence[Path], chunk_bytes: int = CHUNK_BYTES) -> Iterator[pa.Table]:
    """Every line of the text files (gzip or plain) with its file and 1-based line number, in
    chunks of whole lines of about ``chunk_bytes``, in file and line order.

    A final newline does not make an extra line ("\\n" alone is one empty line), a trailing
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


# --- Readers: a relation of (file, line, raw text, structural reason, tag and text per field) ----


def _json_fields_sql(relation: str, spec: LogSpec) -> str:
    """JSON lines: each line parsed once; ``t<i>`` is the JSON type of field i, ``s<i>`` its text."""
    paths = ", ".join(sql_literal(f'$."{f.source}"') for f in spec.fields)
    tags = ", ".join(
        f"coalesce(json_type(v[{i}]), 'NULL') AS t{i}, v[{i}]->>'$' AS s{i}"
        for i in range(1, len(spec.fields) + 1)
    )
    return f"""
        WITH checked AS (
            SELECT {SOURCE_FILE}, {LINE_NUMBER}, line, json_valid(line) AS is_valid FROM {relation}
        ),
        objects AS (
            SELECT *, CASE WHEN is_valid THEN json_type(line) = 'OBJECT' ELSE false END AS is_object
            FROM checked
        ),
        extracted AS (
            SELECT *, CASE WHEN is_object THEN json_extract(line, [{paths}]) END AS v FROM objects
        )
        SELECT {SOURCE_FILE}, {LINE_NUMBER}, line AS raw_line,
               CASE WHEN trim(line) = '' THEN 'empty_line'
                    WHEN NOT is_valid THEN 'invalid_json'
                    WHEN NOT is_object THEN 'not_an_object' END AS pre_reason,
               {tags}
        FROM extracted
    """


def _text_fields_table(
    lines: pa.Table, values: Sequence[Sequence[str | None]], reasons: Sequence[str | None]
) -> pa.Table:
    """A reader's rows as the typing query's input: every value tagged TEXT (NULL when missing)."""
    columns: dict[str, pa.Array] = {
        SOURCE_FILE: lines.column(SOURCE_FILE).combine_chunks(),
        LINE_NUMBER: lines.column(LINE_NUMBER).combine_chunks(),
        "raw_line": lines.column("line").combine_chunks(),
        "pre_reason": pa.array(reasons, pa.string()),
    }
    for i, column in enumerate(values, start=1):
        text = pa.array(column, pa.string())
        columns[f"t{i}"] = pc.if_else(pc.is_null(text), "NULL", "TEXT")
        columns[f"s{i}"] = text
    return pa.table(columns)


def _csv_rows(lines: pa.Table, header: list[str], spec: LogSpec) -> pa.Table:
    """CSV: each line is one record (quoted fields may hold commas, not newlines). An empty field
    is null; a record with another number of fields than the header is quarantined."""
    index = {name: i for i, name in enumerate(header)}
    positions = [index.get(f.source) for f in spec.fields]
    texts = lines.column("line").to_pylist()
    values: list[list[str | None]] = [[] for _ in spec.fields]
    reasons: list[str | None] = []
    for record in csv.reader(texts):
        if not record or (len(record) == 1 and not record[0].strip()):
            reason = "empty_line"
        elif len(record) != len(header):
            reason = "bad_row:field_count"
        else:
            reason = None
        reasons.append(reason)
        for out, position in zip(values, positions, strict=True):
            value = None if reason or position is None else record[position]
            out.append(value if value else None)
    return _text_fields_table(lines, values, reasons)


def _csv_chunks(path: Path, spec: LogSpec, chunk_bytes: int) -> Iterator[pa.Table]:
    header: list[str] | None = None
    for lines in iter_line_chunks([path], chunk_bytes):
        if header is None:
            header = next(csv.reader([lines.column("line")[0].as_py()]), [])
            missing = [f.source for f in spec.fields if f.required and f.source not in header]
            if missing:
                raise ValueError(
                    f"{path}: the CSV header lacks the contract's required field(s) "
                    f"{', '.join(missing)} (header: {', '.join(header)})"
                )
            lines = lines.slice(1)
        if lines.num_rows:
            yield _csv_rows(lines, header, spec)


def _parquet_chunks(path: Path, spec: LogSpec) -> Iterator[pa.Table]:
    """Parquet: each row is one record, numbered from 1; every value is judged by the cast."""
    parquet = pq.ParquetFile(path)
    present = set(parquet.schema_arrow.names)
    missing = [f.source for f in spec.fields if f.required and f.source not in present]
    if missing:
        raise ValueError(f"{path}: the Parquet file lacks the contract's required column(s) {missing}")
    wanted = [f.source for f in spec.fields if f.source in present]
    first = 1
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
        table = pa.Table.from_batches([batch])
        n = table.num_rows
        raw = [json.dumps(row, default=str) for row in table.to_pylist()]
        lines = pa.table(
            {
                SOURCE_FILE: pa.array([str(path)] * n, pa.string()),
                LINE_NUMBER: pa.array(np.arange(first, first + n, dtype=np.int64)),
                "line": pa.array(raw, pa.string()),
            }
        )
        values = [
            table.column(f.source).cast(pa.string()).to_pylist() if f.source in present else [None] * n
            for f in spec.fields
        ]
        yield _text_fields_table(lines, values, [None] * n)
        first += n


# --- Typing and row rules (one query for every format) -----------------------------------------


def _typed_sql(f: Field, i: int) -> str:
    """The typed value of field ``i`` from its text ``s<i>`` (NULL when the cast fails)."""
    text = f"s{i}"
    if f.type == "string":
        return text
    if f.type == "float":
        return f"TRY_CAST({text} AS DOUBLE)"
    if f.type == "int":
        # DuckDB's cast rounds '1.5' to 2 and reads '0x10' as 16: only whole decimal numbers are ints
        # (as in JSON lines, where 1.5 is a bad type)
        whole = (
            f"CASE WHEN regexp_full_match(trim({text}), '[+-]?[0-9]+') "
            f"THEN TRY_CAST(trim({text}) AS INTEGER) END"
        )
        if f.column == LABEL:  # a label may be logged as a boolean
            return f"CASE lower({text}) WHEN 'true' THEN 1 WHEN 'false' THEN 0 ELSE {whole} END"
        return whole
    fmt = f.format or "iso8601"
    if fmt == "iso8601":
        return f"TRY_CAST({text} AS TIMESTAMPTZ)"
    if fmt == "epoch_s":
        return f"to_timestamp(TRY_CAST({text} AS DOUBLE))"
    if fmt == "epoch_ms":
        return f"CAST(epoch_ms(TRY_CAST({text} AS BIGINT)) AS TIMESTAMPTZ)"
    return f"CAST(try_strptime({text}, {sql_literal(fmt)}) AS TIMESTAMPTZ)"


def _accepted_tags(f: Field) -> tuple[str, ...]:
    if f.type == "timestamp" and f.format in ("epoch_s", "epoch_ms"):
        return _EPOCH_TAGS
    if f.column == LABEL:
        return (*_ACCEPTED_TAGS["int"], "BOOLEAN")
    return _ACCEPTED_TAGS[f.type]


def _reason_sql(spec: LogSpec, window: TimeWindow | None, time_column: str) -> str:
    """The first reason a row is refused, NULL when it is valid."""
    rules = ["WHEN pre_reason IS NOT NULL THEN pre_reason"]
    for i, f in enumerate(spec.fields, start=1):
        if f.required:
            rules.append(f"WHEN t{i} = 'NULL' THEN 'null:{f.column}'")
        accepted = ", ".join(f"'{t}'" for t in _accepted_tags(f))
        rules.append(f"WHEN t{i} NOT IN ('NULL', {accepted}) THEN 'bad_type:{f.column}'")
        rules.append(f"WHEN t{i} <> 'NULL' AND x{i} IS NULL THEN 'bad_type:{f.column}'")
    for i, f in enumerate(spec.fields, start=1):
        if (not_allowed := f.not_allowed_sql(f"x{i}")) is not None:
            rules.append(f"WHEN x{i} IS NOT NULL AND {not_allowed} THEN 'not_allowed:{f.column}'")
        if (out_of_range := f.out_of_range_sql(f"x{i}")) is not None:
            rules.append(f"WHEN x{i} IS NOT NULL AND {out_of_range} THEN 'out_of_range:{f.column}'")
    if window is not None and spec.has(time_column):
        i = spec.columns.index(time_column) + 1
        start, end = window.sql()
        rules.append(
            f"WHEN x{i} IS NOT NULL AND (x{i} < {start} OR x{i} >= {end}) "
            f"THEN 'outside_partition:{time_column}'"
        )
    return "CASE " + " ".join(rules) + " ELSE NULL END"


def classify_sql(fields_sql: str, spec: LogSpec, window: TimeWindow | None, time_column: str) -> str:
    """Every row of a reader's relation with its typed values ``x<i>`` and its reason."""
    typed = ", ".join(f"{_typed_sql(f, i)} AS x{i}" for i, f in enumerate(spec.fields, start=1))
    return f"""
        WITH fields AS ({fields_sql}),
        typed AS (SELECT *, {typed} FROM fields)
        SELECT {SOURCE_FILE}, {LINE_NUMBER}, raw_line, {", ".join(f"x{i}" for i in range(1, len(spec.fields) + 1))},
               {_reason_sql(spec, window, time_column)} AS reason
        FROM typed
    """


def _output_type(f: Field) -> str:
    return "TINYINT" if f.column == LABEL else _SQL_TYPES[f.type]


def _type_rows(
    con: duckdb.DuckDBPyConnection,
    fields_sql: str,
    spec: LogSpec,
    window: TimeWindow | None,
    time_column: str,
) -> tuple[pa.Table, pa.Table]:
    """(typed valid rows, quarantined rows with their reason) of a reader's relation."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE classified AS {classify_sql(fields_sql, spec, window, time_column)}"
    )
    try:
        columns = ", ".join(
            f"CAST(x{i} AS {_output_type(f)}) AS {f.column}" for i, f in enumerate(spec.fields, start=1)
        )
        valid = con.sql(
            f"SELECT {columns}, {SOURCE_FILE}, {LINE_NUMBER} FROM classified "
            f"WHERE reason IS NULL ORDER BY {SOURCE_FILE}, {LINE_NUMBER}"
        ).to_arrow_table()
        quarantine = con.sql(
            f"SELECT {SOURCE_FILE}, {LINE_NUMBER}, reason, raw_line FROM classified "
            f"WHERE reason IS NOT NULL ORDER BY {SOURCE_FILE}, {LINE_NUMBER}"
        ).to_arrow_table()
    finally:
        con.execute("DROP TABLE IF EXISTS classified")
    return normalise_timestamps(valid), quarantine.cast(QUARANTINE_SCHEMA)


def normalise_timestamps(table: pa.Table) -> pa.Table:
    """Store every timestamp as microseconds in UTC, whatever DuckDB's session time zone."""
    for i, column in enumerate(table.schema):
        if pa.types.is_timestamp(column.type):
            table = table.set_column(i, column.name, table.column(i).cast(pa.timestamp("us", tz="UTC")))
    return table


def parse_log_lines(
    con: duckdb.DuckDBPyConnection,
    lines: pa.Table,
    spec: LogSpec,
    window: TimeWindow | None = None,
    time_column: str = "ts",
) -> tuple[pa.Table, pa.Table]:
    """Split JSON lines into (typed valid rows, quarantined rows with a reason)."""
    view = f"log_lines_{id(lines):x}"
    con.register(view, lines)
    try:
        return _type_rows(con, _json_fields_sql(view, spec), spec, window, time_column)
    finally:
        con.unregister(view)


def _typed_chunks(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    spec: LogSpec,
    window: TimeWindow | None,
    time_column: str,
    chunk_bytes: int,
) -> Iterator[tuple[int, pa.Table, pa.Table]]:
    """(lines read, valid, quarantine) per chunk of one file, by its format."""
    fmt, _ = file_format(path)
    if fmt == "jsonl":
        for lines in iter_line_chunks([path], chunk_bytes):
            valid, quarantine = parse_log_lines(con, lines, spec, window, time_column)
            yield lines.num_rows, valid, quarantine
        return
    chunks = _csv_chunks(path, spec, chunk_bytes) if fmt == "csv" else _parquet_chunks(path, spec)
    if fmt == "csv":
        yield 1, *_empty(con, spec, window, time_column)  # the header line, neither valid nor bad
    view = f"text_fields_{id(path):x}"
    for table in chunks:
        con.register(view, table)
        try:
            valid, quarantine = _type_rows(con, f"SELECT * FROM {view}", spec, window, time_column)
        finally:
            con.unregister(view)
        yield table.num_rows, valid, quarantine


def _empty(
    con: duckdb.DuckDBPyConnection, spec: LogSpec, window: TimeWindow | None, time_column: str
) -> tuple[pa.Table, pa.Table]:
    return parse_log_lines(con, LINES_SCHEMA.empty_table(), spec, window, time_column)


def parse_log_files(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[Path],
    spec: LogSpec,
    window: TimeWindow | None = None,
    time_column: str = "ts",
    chunk_bytes: int = CHUNK_BYTES,
) -> ParsedLogs:
    """Read and type one partition's files, a chunk at a time; every line is valid, quarantined,
    or a CSV file's header line (counted in ``lines_read``, in neither table)."""
    valid_parts: list[pa.Table] = []
    quarantine_parts: list[pa.Table] = []
    lines_read = headers = 0
    for path in files:
        is_csv = file_format(path)[0] == "csv"
        for index, (n, valid, quarantine) in enumerate(
            _typed_chunks(con, path, spec, window, time_column, chunk_bytes)
        ):
            lines_read += n
            headers += 1 if is_csv and index == 0 else 0
            valid_parts.append(valid)
            quarantine_parts.append(quarantine)
    if not valid_parts:
        valid, quarantine = _empty(con, spec, window, time_column)
    else:
        valid, quarantine = pa.concat_tables(valid_parts), pa.concat_tables(quarantine_parts)
    parsed = ParsedLogs(valid, quarantine, lines_read, [str(f) for f in files], headers)
    if valid.num_rows + quarantine.num_rows + headers != lines_read:  # the identity, enforced
        raise AssertionError(
            f"{spec.kind}: {lines_read} lines read but {valid.num_rows} valid + "
            f"{quarantine.num_rows} quarantined + {headers} CSV header(s)"
        )
    return parsed
