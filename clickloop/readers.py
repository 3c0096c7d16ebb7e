"""Reading log files, by format, into the relation the typing query reads.

Each reader yields chunks; a chunk is a relation with ``source_file``, ``line_number``,
``pre_reason`` (a structural reason, or NULL) and, per contract field ``i``, its value as text:
``v<i>`` (JSON, with the raw ``line``) or ``s<i>`` (CSV, Parquet); the typing query converts it:

* JSON lines (``.jsonl``/``.json``/``.ndjson``, gzip or not): read in chunks of whole lines of
  about ``CHUNK_BYTES`` (the lines found with numpy over one buffer, no copy), each valid object
  parsed once by DuckDB's ``json_transform`` into the text of each field;
* CSV with a header line: each line is one record (quoted fields may hold commas, not newlines);
  every value as text (the cast judges it);
* Parquet: each row is one record, numbered from 1; every value as text.

A field's ``source`` may be a JSON Pointer (``/device/os``): a key of a nested object (JSON lines)
or of a struct column (Parquet).
"""

from __future__ import annotations

import csv
import functools
import json
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from clickloop.contract import LINE_NUMBER, SOURCE_FILE, Field, LogSpec, sql_literal
from clickloop.landing import file_format
from clickloop.lines import CHUNK_BYTES, LogFileError, file_column, iter_line_chunks

T = TypeVar("T")

#: Rows of a Parquet log typed at a time.
PARQUET_BATCH_ROWS = 1_000_000
#: the reasons a reader refuses a line before its fields are typed (:mod:`clickloop.ingest`)
EMPTY_LINE, INVALID_JSON, NOT_AN_OBJECT = "empty_line", "invalid_json", "not_an_object"
FIELD_COUNT, CSV_SYNTAX = "bad_row:field_count", "bad_row:csv_syntax"


# --- Readers: a relation of (file, line, raw text, structural reason, tag and text per field) ----


def _json_fields_sql(relation: str, spec: LogSpec) -> str:
    """JSON lines: each valid object parsed once, by ``json_transform``, into the text of each field
    (``v<i>``: a string's value, the JSON of any other value; NULL exactly when the field is missing
    or null). The typing converts the text (:func:`clickloop.ingest.classify_sql`): a field that is
    present but does not convert is a bad type, and no line is parsed twice to tell the two apart."""
    structure = sql_literal(json.dumps(_json_structure(spec)))
    values = ", ".join(
        f"o.{'.'.join(_quoted(key) for key in f.path)} AS v{i}" for i, f in enumerate(spec.fields, start=1)
    )
    return f"""
        WITH checked AS (
            SELECT {SOURCE_FILE}, {LINE_NUMBER}, line, json_valid(line) AS is_valid FROM {relation}
        ),
        objects AS (
            SELECT *, is_valid AND starts_with(ltrim(line), '{{') AS is_object FROM checked
        ),
        parsed AS (
            SELECT *, CASE WHEN is_object THEN json_transform(line, {structure}) END AS o FROM objects
        )
        SELECT {SOURCE_FILE}, {LINE_NUMBER}, line,
               CASE WHEN is_object THEN NULL
                    WHEN is_valid THEN '{NOT_AN_OBJECT}'
                    WHEN trim(line, chr(32) || chr(9) || chr(13) || chr(10)) = '' THEN '{EMPTY_LINE}'
                    ELSE '{INVALID_JSON}' END AS pre_reason,
               {values}
        FROM parsed
    """


def _json_structure(spec: LogSpec) -> dict[str, Any]:
    """The ``json_transform`` structure of the fields: each field's path of keys (nested objects
    for JSON Pointer sources) ends in text."""
    structure: dict[str, Any] = {}
    for f in spec.fields:
        *parents, leaf = f.path
        node = structure
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = "VARCHAR"
    return structure


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text_fields_table(
    lines: pa.Table,
    values: Sequence[Sequence[str | None] | pa.Array | pa.ChunkedArray],
    reasons: Sequence[str | None] | pa.Array,
) -> pa.Table:
    """A reader's rows as the typing query's input: every value as text (NULL when missing); the
    raw text too when ``lines`` has it (CSV: each line; Parquet makes a refused row's on demand)."""
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        SOURCE_FILE: lines.column(SOURCE_FILE).combine_chunks(),
        LINE_NUMBER: lines.column(LINE_NUMBER).combine_chunks(),
    }
    if "line" in lines.column_names:
        columns["raw_line"] = lines.column("line").combine_chunks()
    columns["pre_reason"] = _text_array(reasons)
    for i, column in enumerate(values, start=1):
        columns[f"s{i}"] = _text_array(column)
    return pa.table(columns)


def _text_array(values: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(pa.string())
    return pa.array(values, pa.string())


#: characters that make a CSV line more than commas (quoting; a carriage return or NUL, which
#: Python's ``csv`` refuses or treats specially); every other line is split on commas by Arrow
_CSV_SPECIAL = '["\\r\\x00]'
#: one field of a well-formed CSV line: unquoted without a quote, or quoted whole ("" for a quote)
_CSV_FIELD = '(?:[^",\\r\\x00]*|"(?:[^"\\r\\x00]|"")*")'
#: a line of well-formed fields, which Arrow's CSV parser reads as Python's ``csv`` does (RFC 4180);
#: any other quoted line is left to Python's ``csv``
_CSV_WELL_FORMED = f"^{_CSV_FIELD}(?:,{_CSV_FIELD})*$"


def _csv_rows(lines: pa.Table, header: list[str], spec: LogSpec) -> pa.Table:
    """CSV: each line is one record (quoted fields may hold commas, not newlines). An empty field
    is null; a record with another number of fields than the header is quarantined. Lines without
    quotes are split on commas by Arrow, well-formed quoted records are read by Arrow's CSV parser,
    and the rest (malformed quoting, a carriage return or NUL) by Python's ``csv`` module."""
    index = {name: i for i, name in enumerate(header)}
    positions = [index.get(f.source) for f in spec.fields]
    text = lines.column("line").combine_chunks().cast(pa.string())
    special = pc.match_substring_regex(text, _CSV_SPECIAL)
    if pc.all(special).as_py():  # every line quoted (an export quoting every field): no comma split
        reasons, values = (
            pa.nulls(len(text), pa.string()),
            [pa.nulls(len(text), pa.string()) for _ in positions],
        )
    else:
        reasons, values = _csv_split_on_commas(text, len(header), positions)
    if len(header) > 1 and pc.any(special).as_py():
        candidates = pc.and_(special, pc.match_substring_regex(text, _CSV_WELL_FORMED))
        if pc.any(candidates).as_py():
            quoted, values = _csv_quoted_fields(text, candidates, len(header), positions, values)
            reasons = pc.replace_with_mask(reasons, quoted, pa.nulls(len(text), pa.string()))
            special = pc.and_(special, pc.invert(quoted))
    if pc.any(special).as_py():
        reasons, values = _csv_rows_by_python(text, special, header, positions, reasons, values)
    return _text_fields_table(lines, values, reasons)


def _csv_split_on_commas(
    text: pa.Array, fields: int, positions: Sequence[int | None]
) -> tuple[pa.Array, list[pa.Array]]:
    """(reasons, values) of every line split on commas by Arrow, right for the lines without a
    quote, carriage return or NUL (the others are read again after)."""
    parts = pc.split_pattern(text, ",")
    counts = pc.list_value_length(parts)
    empty = pc.and_(pc.equal(counts, 1), pc.equal(pc.utf8_trim_whitespace(text), ""))
    whole = pc.and_(pc.invert(empty), pc.equal(counts, fields))
    reasons = pc.if_else(empty, EMPTY_LINE, pc.if_else(whole, pa.scalar(None, pa.string()), FIELD_COUNT))
    flat = pc.list_flatten(parts)
    starts = parts.offsets.slice(0, len(parts))
    values = [
        _csv_field(flat, starts, whole, position)
        if position is not None
        else pa.nulls(len(text), pa.string())
        for position in positions
    ]
    return reasons, values


def _csv_quoted_fields(
    text: pa.Array, candidates: pa.Array, fields: int, positions: Sequence[int | None], values: list[pa.Array]
) -> tuple[pa.Array, list[pa.Array]]:
    """(the lines read, ``values`` with their fields): the well-formed lines in ``candidates`` with
    ``fields`` fields, read by Arrow's CSV parser, an empty field null. A line of another number of
    fields is not read (Python's ``csv`` judges it)."""
    own = text.filter(candidates)
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(own)], pa.int32()), own), "\n")[0]
    buffer = joined.as_buffer()
    names = [f"c{i}" for i in range(fields)]
    refused: list[int] = []  # 1-based line numbers within ``own``

    def refuse(row: Any) -> str:
        refused.append(row.number)
        return "skip"

    table = pa_csv.read_csv(
        pa.py_buffer(buffer),
        # one block, one thread: the refused rows' numbers are the lines' own
        read_options=pa_csv.ReadOptions(column_names=names, use_threads=False, block_size=buffer.size + 1),
        parse_options=pa_csv.ParseOptions(
            newlines_in_values=False, double_quote=True, escape_char=False, invalid_row_handler=refuse
        ),
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    if table.num_rows + len(refused) != len(own) or None in refused:  # never misalign rows
        raise AssertionError(f"Arrow read {table.num_rows} + {len(refused)} CSV records of {len(own)} lines")
    read = np.ones(len(own), dtype=bool)
    read[np.asarray(refused, dtype=np.int64) - 1] = False
    quoted = pc.replace_with_mask(candidates, candidates, pa.array(read))
    patched = []
    for column, position in zip(values, positions, strict=True):
        if position is None:
            patched.append(column)
            continue
        patched.append(
            pc.replace_with_mask(column, quoted, _empty_as_null(table.column(position).combine_chunks()))
        )
    return quoted, patched


def _csv_field(flat: pa.Array, starts: pa.Array, whole: pa.Array, position: int) -> pa.Array:
    """The field at ``position`` of every whole record (NULL for the others, and when empty)."""
    return _empty_as_null(
        flat.take(pc.if_else(whole, pc.add(starts, position), pa.scalar(None, starts.type)))
    )


def _empty_as_null(values: pa.Array) -> pa.Array:
    """A CSV field's text, NULL where the field is empty."""
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)


def _csv_record(line: str, fields: int) -> tuple[list[str], str | None]:
    """One line's fields by Python's ``csv`` module, and why it is refused (None: it is not)."""
    try:
        record = next(csv.reader([line]), [])
    except csv.Error:  # a carriage return inside an unquoted field, say
        return [], CSV_SYNTAX
    if not record or (len(record) == 1 and not record[0].strip()):
        return [], EMPTY_LINE
    return record, None if len(record) == fields else FIELD_COUNT


def _csv_rows_by_python(
    text: pa.Array,
    special: pa.Array,
    header: list[str],
    positions: Sequence[int | None],
    reasons: pa.Array,
    values: list[pa.Array],
) -> tuple[pa.Array, list[pa.Array]]:
    """The reasons and values of the lines in ``special``, from Python's ``csv`` module."""
    own_reasons: list[str | None] = []
    own_values: list[list[str | None]] = [[] for _ in positions]
    for line in text.filter(special).to_pylist():
        record, reason = _csv_record(line, len(header))
        own_reasons.append(reason)
        for out, position in zip(own_values, positions, strict=True):
            value = None if reason or position is None else record[position]
            out.append(value if value else None)
    patched = pc.replace_with_mask(reasons, special, pa.array(own_reasons, pa.string()))
    return patched, [
        pc.replace_with_mask(column, special, pa.array(own, pa.string()))
        for column, own in zip(values, own_values, strict=True)
    ]


def _csv_chunks(path: Path, spec: LogSpec, chunk_bytes: int) -> Iterator[tuple[pa.Table, int]]:
    """(records of a chunk of lines, header lines in it) of a CSV file."""
    header: list[str] | None = None
    for lines in iter_line_chunks([path], chunk_bytes):
        headers = 0
        if header is None:
            header = next(csv.reader([lines.column("line")[0].as_py()]), [])
            missing = [f.source for f in spec.fields if f.required and f.source not in header]
            if missing:
                raise LogFileError(
                    f"{path}: the CSV header lacks the contract's required field(s) "
                    f"{', '.join(missing)} (header: {', '.join(header)})"
                )
            lines, headers = lines.slice(1), 1
        yield _csv_rows(lines, header, spec), headers


def _parquet_path(schema: pa.Schema, f: Field) -> tuple[str, ...] | None:
    """The column and struct fields holding ``f`` in a Parquet schema (a JSON Pointer source reaches
    into struct columns), None when the file has no such field."""
    path = f.path
    if path[0] not in schema.names:
        return None
    kind = schema.field(path[0]).type
    for key in path[1:]:
        if not pa.types.is_struct(kind) or kind.get_field_index(key) < 0:
            return None
        kind = kind.field(key).type
    return path


def _parquet_value(table: pa.Table, path: tuple[str, ...] | None) -> pa.Array | pa.ChunkedArray:
    """A field's values (NULL throughout when the file lacks it); the fields table casts them to text."""
    if path is None:
        return pa.nulls(table.num_rows, pa.string())
    value = table.column(path[0])
    for key in path[1:]:
        value = pc.struct_field(value, key)
    return value


def _parquet_chunks(path: Path, spec: LogSpec) -> Iterator[tuple[pa.Table, Callable[[pa.Array], pa.Array]]]:
    """Parquet: each row is one record, numbered from 1; every value is judged by the cast. Yields
    (the fields relation of a batch, the raw text of its rows at given positions: a row's JSON,
    made only for the rows that are refused). A file Arrow cannot read is a :class:`LogFileError`."""
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as error:
        raise LogFileError(f"{path}: not a readable Parquet file ({error})") from error
    paths = [_parquet_path(schema, f) for f in spec.fields]
    missing = [f.source for f, p in zip(spec.fields, paths, strict=True) if f.required and p is None]
    if missing:
        raise LogFileError(f"{path}: the Parquet file lacks the contract's required column(s) {missing}")
    wanted = list(dict.fromkeys(p[0] for p in paths if p is not None))
    first = 1
    batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted)
    while (batch := _next_batch(batches, path, first)) is not None:
        table = pa.Table.from_batches([batch])
        n = table.num_rows
        lines = pa.table(
            {
                SOURCE_FILE: file_column(path, n),
                LINE_NUMBER: pa.array(np.arange(first, first + n, dtype=np.int64)),
            }
        )
        values = [_parquet_value(table, p) for p in paths]
        yield (
            _text_fields_table(lines, values, pa.nulls(n, pa.string())),
            functools.partial(_json_rows, table),
        )
        first += n


def _next_batch(batches: Iterator[pa.RecordBatch], path: Path, first: int) -> pa.RecordBatch | None:
    try:
        return next(batches, None)
    except (pa.ArrowException, OSError) as error:
        raise LogFileError(f"{path}: the Parquet data is corrupt from row {first:,} ({error})") from error


def _json_rows(table: pa.Table, positions: pa.Array) -> pa.Array:
    """The rows of ``table`` at ``positions`` as JSON objects (a Parquet record's raw text)."""
    return pa.array([json.dumps(row, default=str) for row in table.take(positions).to_pylist()], pa.string())


@dataclass(frozen=True)
class FieldChunk:
    """One chunk of a file as the typing query reads it: an Arrow table to register and the SQL of
    the fields relation over it; ``lines`` counts the lines it stands for (a CSV header too)."""

    table: pa.Table
    fields_sql: Callable[[str], str]
    lines: int
    header_lines: int = 0
    #: "json" (typed values ``v<i>`` and the raw ``line``) or "text" (texts ``s<i>``)
    kind: str = "text"
    #: the raw text of the rows at given positions, when the table holds none (Parquet)
    raw_text: Callable[[pa.Array], pa.Array] | None = None


def field_chunks(path: Path, spec: LogSpec, chunk_bytes: int = CHUNK_BYTES) -> Iterator[FieldChunk]:
    """The chunks of one log file, by its format (see the module docstring)."""
    fmt, _ = file_format(path)
    if fmt == "jsonl":
        for lines in iter_line_chunks([path], chunk_bytes, keep_terminators=True):
            yield FieldChunk(lines, lambda view: _json_fields_sql(view, spec), lines.num_rows, kind="json")
        return
    if fmt == "csv":
        for table, headers in _csv_chunks(path, spec, chunk_bytes):
            yield FieldChunk(table, lambda view: f"SELECT * FROM {view}", table.num_rows + headers, headers)
        return
    for table, raw_text in _parquet_chunks(path, spec):
        yield FieldChunk(table, lambda view: f"SELECT * FROM {view}", table.num_rows, raw_text=raw_text)


def empty_fields_table(spec: LogSpec) -> pa.Table:
    """A fields relation with no row (the typing query's schema for a day without lines)."""
    empty = pa.table(
        {
            SOURCE_FILE: pa.array([], pa.string()),
            LINE_NUMBER: pa.array([], pa.int64()),
            "line": pa.array([], pa.string()),
        }
    )
    return _text_fields_table(empty, [[] for _ in spec.fields], [])


_DONE = object()


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """``items`` as they come, the next one read by a thread while the caller works on this one:
    reading and decompressing a chunk overlaps with DuckDB typing the one before (both release the
    GIL). One item ahead at most, so memory holds two chunks; an error of the reader is raised here,
    at the item it failed on; a caller that stops early stops the reader."""
    ahead: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((_DONE, None))
        except BaseException as error:  # handed to the caller, raised there
            offer((None, error))

    reader = threading.Thread(target=read, name="clickloop-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            item, error = ahead.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        reader.join()
