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
``bad_row:csv_syntax``         is a record Python's ``csv`` refuses (a carriage return in a field)
``null:<column>``              lacks a required field, or it is null
``bad_type:<column>``          holds a value of the wrong type (``"first"`` or ``true`` for a position)
``not_allowed:<column>``       holds a value outside the field's allowed set
``out_of_range:<column>``      holds a value outside the field's range
``outside_partition:<time>``   is stamped outside the day it was delivered for
=============================  =====================================================================

Reading is format-specific (JSON lines and CSV line by line, gzip or not, Parquet row by row; each
file's format comes from its extension) and yields, per field, a type tag and the value as text.
Typing and the row rules are one DuckDB query for every format. Files are read in chunks of whole
lines, so memory is bounded by the chunk, not the day. Personal ids (fields the contract marks
``personal``) are stored as keyed pseudonyms (DuckDB hashes each distinct id of a chunk once), and
redacted from the raw text of quarantined lines (:mod:`clickloop.privacy`); a log with personal
fields and no pseudonymiser is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clickloop.contract import (
    CLICK_ID,
    IMPRESSION_ID,
    LABEL,
    LINE_NUMBER,
    REQUEST_ID,
    SOURCE_FILE,
    Field,
    LogSpec,
    sql_literal,
)
from clickloop.faults import fault_point
from clickloop.lines import CHUNK_BYTES, strip_terminators
from clickloop.privacy import PrivacyError, Pseudonymiser, redact_sql
from clickloop.readers import FieldChunk, empty_fields_table, field_chunks, read_ahead
from clickloop.storage import StoragePath, commit, one_row, registered, writing

QUARANTINE_SCHEMA = pa.schema(
    [
        (SOURCE_FILE, pa.string()),
        (LINE_NUMBER, pa.int64()),
        ("reason", pa.string()),
        ("raw_line", pa.string()),
    ]
)

#: rows per Arrow batch a chunk is handed to DuckDB in: DuckDB scans the batches of a table in
#: parallel (a chunk in one batch was typed on one core; two batches and more: 12.0 → 8.7 s for a
#: 1M-line day)
BATCH_ROWS = 16_384
_SQL_TYPES = {"string": "VARCHAR", "int": "INTEGER", "float": "DOUBLE", "timestamp": "TIMESTAMPTZ"}
#: columns whose values are nearly all distinct (an event's or a request's id): a Parquet dictionary
#: of them is built only to be given up
_DISTINCT_COLUMNS = (IMPRESSION_ID, REQUEST_ID, CLICK_ID)


@dataclass
class ParsedLogs:
    """The outcome of parsing one partition's files: how many rows are valid (and, when asked for,
    the rows themselves), the quarantined lines, and how many lines were read."""

    valid_rows: int
    quarantine: pa.Table
    lines_read: int
    files: list[str] = field(default_factory=list)
    #: CSV header lines (read, neither valid nor quarantined)
    header_lines: int = 0
    #: the typed valid rows (None when they were written straight to Parquet)
    valid: pa.Table | None = None

    @property
    def quarantined_by_reason(self) -> dict[str, int]:
        return count_reasons(self.quarantine)

    def check(self, kind: str) -> None:
        """The identity every parse keeps: lines read = valid + quarantined + CSV headers."""
        if self.valid_rows + self.quarantine.num_rows + self.header_lines != self.lines_read:
            raise AssertionError(
                f"{kind}: {self.lines_read} lines read but {self.valid_rows} valid + "
                f"{self.quarantine.num_rows} quarantined + {self.header_lines} CSV header(s)"
            )


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


# --- Typing and row rules (one query for every format) -----------------------------------------


_INT_RANGE = "BETWEEN -2147483648 AND 2147483647"


def _typed_sql(f: Field, i: int, kind: str) -> str:
    """The typed value of field ``i`` from its text, NULL when the text does not convert: ``s<i>``
    (CSV, Parquet) or ``v<i>`` (JSON: what ``json_transform`` gave, a string's value or the JSON of
    any other value). JSON keeps JSON's numbers: an int may be written ``2.0`` (but ``1.5`` is no
    int, never rounded) and epoch milliseconds may have a fraction; a text int is a whole decimal."""
    json_text = kind == "json"
    value = f"v{i}" if json_text else f"s{i}"
    number = f"TRY_CAST({value} AS DOUBLE)"
    if f.type == "string":
        return value
    if f.type == "float":
        return number
    if f.type == "int":
        # DuckDB's cast rounds '1.5' to 2 and reads '0x10' as 16: only whole decimal numbers are ints
        digits = value if json_text else f"trim({value})"
        whole = f"CASE WHEN regexp_full_match({digits}, '[+-]?[0-9]+') THEN TRY_CAST({digits} AS INTEGER) END"
        if f.column == LABEL:  # a label may be logged as a boolean
            return f"CASE lower({value}) WHEN 'true' THEN 1 WHEN 'false' THEN 0 ELSE {whole} END"
        if json_text:
            return f"CASE WHEN {number} = floor({number}) AND {number} {_INT_RANGE} THEN CAST({number} AS INTEGER) END"
        return whole
    fmt = f.format or "iso8601"
    if fmt == "iso8601":
        return f"TRY_CAST({value} AS TIMESTAMPTZ)"
    if fmt == "epoch_s":
        return f"to_timestamp({number})"
    if fmt == "epoch_ms":
        if json_text:
            return f"to_timestamp({number} / 1000.0)"
        return f"CAST(epoch_ms(TRY_CAST({value} AS BIGINT)) AS TIMESTAMPTZ)"
    return f"CAST(try_strptime({value}, {sql_literal(fmt)}) AS TIMESTAMPTZ)"


def _present_sql(f: Field, i: int, kind: str) -> str:
    """Whether field ``i`` holds a value (present and not null): its text is not NULL. A JSON line
    refused before typing (``pre_reason``) holds none."""
    if kind == "text":
        return f"s{i} IS NOT NULL"
    return f"pre_reason IS NULL AND v{i} IS NOT NULL"


def _reason_sql(spec: LogSpec, window: TimeWindow | None, time_column: str) -> str:
    """The first reason a row is refused, NULL when it is valid (``p<i>``: field i holds a value,
    ``x<i>``: its typed value)."""
    rules = ["WHEN pre_reason IS NOT NULL THEN pre_reason"]
    for i, f in enumerate(spec.fields, start=1):
        if f.required:
            rules.append(f"WHEN NOT p{i} THEN 'null:{f.column}'")
        rules.append(f"WHEN p{i} AND x{i} IS NULL THEN 'bad_type:{f.column}'")
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


def classify_sql(
    fields_sql: str, spec: LogSpec, window: TimeWindow | None, time_column: str, kind: str = "text"
) -> str:
    """Every row of a reader's relation with its typed values ``x<i>`` and its reason."""
    typed = ", ".join(
        f"{_typed_sql(f, i, kind)} AS x{i}, {_present_sql(f, i, kind)} AS p{i}"
        for i, f in enumerate(spec.fields, start=1)
    )
    return f"""
        WITH fields AS ({fields_sql}),
        typed AS (SELECT *, {typed} FROM fields)
        SELECT CAST({SOURCE_FILE} AS VARCHAR) AS {SOURCE_FILE}, {LINE_NUMBER},
               {", ".join(f"x{i}" for i in range(1, len(spec.fields) + 1))},
               {_reason_sql(spec, window, time_column)} AS reason
        FROM typed
    """


def _output_type(f: Field) -> str:
    return "TINYINT" if f.column == LABEL else _SQL_TYPES[f.type]


def _typed_columns(spec: LogSpec) -> str:
    """The typed columns of a row (a personal id still raw: see :func:`_pseudonymised`)."""
    return ", ".join(
        f"CAST(x{i} AS {_output_type(f)}) AS {f.column}" for i, f in enumerate(spec.fields, start=1)
    )


def _pseudonymised(
    con: duckdb.DuckDBPyConnection, valid: pa.Table, spec: LogSpec, pseudonymiser: Pseudonymiser | None
) -> pa.Table:
    """Valid rows with each personal id replaced by its pseudonym (each distinct id hashed once)."""
    if pseudonymiser is None:
        return valid
    for column in spec.personal_columns:
        i = valid.column_names.index(column)
        valid = valid.set_column(i, column, pseudonymiser.column(con, valid.column(i)))
    return valid


def _personal_value(i: int) -> str:
    return f"_personal_{i}"


def _chunk_sql(
    fields_sql: str,
    spec: LogSpec,
    window: TimeWindow | None,
    time_column: str,
    kind: str = "text",
    order_kept: bool = True,
) -> str:
    """One chunk's rows: the typed columns, where each came from, and the reason it is refused;
    for a refused row, the raw value of each personal field too (to redact its text). The rows come
    out in the chunk's line order: projections and subqueries over one table keep their input's
    order (DuckDB's documented order preservation, ``preserve_insertion_order``, on by default), so
    they are sorted only on a connection where it is off (``order_kept=False``)."""
    classified = classify_sql(fields_sql, spec, window, time_column, kind)
    personal = "".join(
        f", CASE WHEN reason IS NOT NULL THEN CAST(x{i} AS VARCHAR) END AS {_personal_value(i)}"
        for i, f in enumerate(spec.fields, start=1)
        if f.personal
    )
    return (
        f"SELECT {_typed_columns(spec)}, {SOURCE_FILE}, {LINE_NUMBER}, reason{personal} FROM ({classified})"
        + ("" if order_kept else f" ORDER BY {LINE_NUMBER}")
    )


def _keeps_order(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con`` keeps the order of rows through projections (``preserve_insertion_order``)."""
    return bool(one_row(con, "SELECT current_setting('preserve_insertion_order')")[0])


def _redacted(
    con: duckdb.DuckDBPyConnection, bad: pa.Table, raw: pa.Array, spec: LogSpec, kind: str
) -> pa.Array:
    """The raw text of refused lines without their personal values (one query over those lines)."""
    personal = [(i, f) for i, f in enumerate(spec.fields, start=1) if f.personal]
    if not personal or not len(raw):
        return raw
    lines = pa.table(
        {"raw_line": raw.cast(pa.string()), "reason": bad.column("reason")}
        | {_personal_value(i): bad.column(_personal_value(i)) for i, _ in personal}
    )
    expression = redact_sql(
        "raw_line",
        "reason",
        [_personal_value(i) for i, _ in personal],
        [f.path[-1] for _, f in personal],
        kind,
    )
    with registered(con, lines, "redact") as view:
        return (
            con.sql(f"SELECT {expression} AS raw_line FROM {view}")
            .to_arrow_table()
            .column(0)
            .combine_chunks()
        )


def _raw_text(chunk: FieldChunk, positions: pa.Array) -> pa.Array:
    """The raw text of the chunk's lines at ``positions`` (taken from the chunk's column as it is:
    only the taken lines are copied; a Parquet chunk makes them)."""
    if chunk.raw_text is not None:
        return chunk.raw_text(positions)
    table = chunk.table
    lines = table.column("line" if "line" in table.column_names else "raw_line")
    return lines.take(positions).combine_chunks()


def _type_chunk(
    con: duckdb.DuckDBPyConnection,
    chunk: FieldChunk,
    spec: LogSpec,
    window: TimeWindow | None,
    time_column: str,
    pseudonymiser: Pseudonymiser | None = None,
    order_kept: bool = True,
) -> tuple[pa.Table, pa.Table]:
    """(valid rows, refused lines with their reason and raw text) of one chunk. The raw text is
    taken from the chunk only for the refused lines (by their position in it), personal values
    redacted. ``order_kept``: whether ``con`` keeps insertion order (:func:`_keeps_order`)."""
    if spec.personal_columns and pseudonymiser is None:
        raise PrivacyError(
            f"the {spec.kind} log has personal column(s) {', '.join(spec.personal_columns)} "
            "and no pseudonymiser: they would be stored raw"
        )
    batches = chunk.table.to_batches(max_chunksize=BATCH_ROWS)  # DuckDB scans batches in parallel
    with registered(con, pa.Table.from_batches(batches, schema=chunk.table.schema), "ingest_chunk") as view:
        rows = con.sql(
            _chunk_sql(chunk.fields_sql(view), spec, window, time_column, chunk.kind, order_kept)
        ).to_arrow_table()
    refused = pc.is_valid(rows.column("reason"))
    extra = ["reason", *(c for c in rows.column_names if c.startswith("_personal_"))]
    valid = rows.filter(pc.invert(refused)).drop_columns(extra)
    valid = normalise_timestamps(_pseudonymised(con, valid, spec, pseudonymiser))
    bad = rows.filter(refused)
    if bad.num_rows:
        numbers = chunk.table.column(LINE_NUMBER)
        first = numbers[0].as_py() if len(numbers) else 0
        raw = strip_terminators(_raw_text(chunk, pc.subtract(bad.column(LINE_NUMBER), first)))
        raw = _redacted(con, bad, raw, spec, chunk.kind)
    else:
        raw = pa.array([], pa.string())
    quarantine = pa.table(
        [bad.column(SOURCE_FILE), bad.column(LINE_NUMBER), bad.column("reason"), raw.cast(pa.string())],
        schema=QUARANTINE_SCHEMA,
    )
    return valid, quarantine


def _typed_parts(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[Path],
    spec: LogSpec,
    window: TimeWindow | None,
    time_column: str,
    chunk_bytes: int,
    pseudonymiser: Pseudonymiser | None,
) -> Iterator[tuple[FieldChunk, pa.Table, pa.Table]]:
    """Every chunk of the files, typed: (the chunk, its valid rows, its refused lines)."""
    chunks = (chunk for path in files for chunk in field_chunks(path, spec, chunk_bytes))
    order_kept = _keeps_order(con)  # once per parse, not per chunk
    for chunk in read_ahead(chunks):
        yield chunk, *_type_chunk(con, chunk, spec, window, time_column, pseudonymiser, order_kept)


def _empty_valid(
    con: duckdb.DuckDBPyConnection,
    spec: LogSpec,
    window: TimeWindow | None,
    time_column: str,
    pseudonymiser: Pseudonymiser | None,
) -> pa.Table:
    """No valid row, with the schema of the typed table."""
    chunk = FieldChunk(empty_fields_table(spec), lambda view: f"SELECT * FROM {view}", 0)
    return _type_chunk(con, chunk, spec, window, time_column, pseudonymiser)[0]


def _parsed(
    files: Sequence[Path], valid_rows: int, quarantine: list[pa.Table], lines: int, headers: int, kind: str
) -> ParsedLogs:
    table = pa.concat_tables(quarantine) if quarantine else QUARANTINE_SCHEMA.empty_table()
    parsed = ParsedLogs(valid_rows, table, lines, [str(f) for f in files], headers)
    parsed.check(kind)
    return parsed


def normalise_timestamps(table: pa.Table) -> pa.Table:
    """Store every timestamp as microseconds in UTC, whatever DuckDB's session time zone."""
    for i, column in enumerate(table.schema):
        if pa.types.is_timestamp(column.type):
            table = table.set_column(i, column.name, table.column(i).cast(pa.timestamp("us", tz="UTC")))
    return table


def parse_log_files(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[Path],
    spec: LogSpec,
    window: TimeWindow | None = None,
    time_column: str = "ts",
    chunk_bytes: int = CHUNK_BYTES,
    pseudonymiser: Pseudonymiser | None = None,
) -> ParsedLogs:
    """Read and type one partition's files, a chunk at a time, into memory: every line is valid,
    quarantined, or a CSV file's header line. (The assets write straight to Parquet instead:
    :func:`ingest_to_parquet`.) ``pseudonymiser`` is needed when the log has personal fields."""
    valid: list[pa.Table] = []
    quarantine: list[pa.Table] = []
    lines = headers = 0
    parts = _typed_parts(con, files, spec, window, time_column, chunk_bytes, pseudonymiser)
    for chunk, good, bad in parts:
        valid.append(good)
        quarantine.append(bad)
        lines, headers = lines + chunk.lines, headers + chunk.header_lines
    table = pa.concat_tables(valid) if valid else _empty_valid(con, spec, window, time_column, pseudonymiser)
    parsed = _parsed(files, table.num_rows, quarantine, lines, headers, spec.kind)
    parsed.valid = table
    return parsed


def dictionary_columns(schema: pa.Schema, spec: LogSpec) -> list[str]:
    """The columns of a typed table written with a Parquet dictionary: text that repeats (categories,
    ad and site ids, the file). Not the event ids nor the personal pseudonyms (nearly all distinct),
    nor numbers and times (plain encoding compresses as well under zstd). On a 3M-row day of
    impressions: 1.81 s and 84 MiB against 2.12 s and 98 MiB with a dictionary for every column."""
    distinct = {*_DISTINCT_COLUMNS, *spec.personal_columns}
    return [f.name for f in schema if pa.types.is_string(f.type) and f.name not in distinct]


def _parquet_writer(path: StoragePath, schema: pa.Schema, spec: LogSpec) -> pq.ParquetWriter:
    return pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=dictionary_columns(schema, spec))


def ingest_to_parquet(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[Path],
    spec: LogSpec,
    target: StoragePath,
    window: TimeWindow | None = None,
    time_column: str = "ts",
    chunk_bytes: int = CHUNK_BYTES,
    before_commit: Callable[[ParsedLogs], None] | None = None,
    pseudonymiser: Pseudonymiser | None = None,
) -> ParsedLogs:
    """Type one partition's files and stream its valid rows to ``target`` (a row group per chunk,
    written to a temporary file renamed into place), holding one chunk at a time; returns the
    counts and the quarantine. ``before_commit`` runs once every line is accounted for, before
    the rename (the ingest writes the quarantine there, so a partition never exists without it)."""
    quarantine: list[pa.Table] = []
    lines = headers = valid_rows = 0
    writer: pq.ParquetWriter | None = None
    with writing(target) as tmp:
        try:
            parts = _typed_parts(con, files, spec, window, time_column, chunk_bytes, pseudonymiser)
            for chunk, good, bad in parts:
                if writer is None:
                    writer = _parquet_writer(tmp, good.schema, spec)
                writer.write_table(good)
                fault_point("ingest.chunk")
                quarantine.append(bad)
                lines, headers, valid_rows = (
                    lines + chunk.lines,
                    headers + chunk.header_lines,
                    valid_rows + good.num_rows,
                )
            if writer is None:
                schema = _empty_valid(con, spec, window, time_column, pseudonymiser).schema
                writer = _parquet_writer(tmp, schema, spec)
            writer.close()
            writer = None
        finally:
            if writer is not None:
                writer.close()
        parsed = _parsed(files, valid_rows, quarantine, lines, headers, spec.kind)
        if before_commit is not None:
            before_commit(parsed)
        commit(tmp, target)
        return parsed
