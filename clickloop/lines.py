"""The lines of log text files, gzip or plain: numbered, in chunks of whole lines, read to the end.

A file is read in chunks of about ``CHUNK_BYTES`` of whole lines; the lines of a chunk are found with
numpy over one buffer, without a copy, and kept with their file and 1-based line number. Bytes that
are not UTF-8 are kept as U+FFFD, so the line can still be quarantined and read. Gzip is decompressed
by ISA-L (``isal``), the same format as Python's ``gzip`` at about twice its speed; a file that
breaks off, is corrupt or is not gzip at all is a :class:`LogFileError` naming it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from isal import igzip, igzip_lib

from clickloop.contract import LINE_NUMBER, SOURCE_FILE

#: Uncompressed bytes of log text typed at a time.
CHUNK_BYTES = 64 * 1024 * 1024
LINES_SCHEMA = pa.schema(
    [
        (SOURCE_FILE, pa.dictionary(pa.int32(), pa.string())),
        (LINE_NUMBER, pa.int64()),
        ("line", pa.large_string()),
    ]
)


def _utf8(data: bytes) -> bytes:
    """``data`` if it is valid UTF-8, else with every invalid byte replaced by U+FFFD (the line is
    kept, so it can be quarantined and read). Arrow validates the bytes in place (Python's decode
    would build a string of the whole chunk first)."""
    whole = pa.Array.from_buffers(
        pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, len(data)], np.int64)), pa.py_buffer(data)]
    )
    try:
        whole.cast(pa.large_string())
        return data
    except pa.ArrowInvalid:
        return data.decode("utf-8", errors="replace").encode("utf-8")


def file_column(path: Path, n: int) -> pa.Array:
    """The file of ``n`` lines: one dictionary entry, not ``n`` strings."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([str(path)]))


def _lines_table(path: Path, body: bytes, first_line: int, keep_terminators: bool) -> pa.Table:
    """The lines of ``body`` (whole lines joined by newlines, no final newline), numbered from
    ``first_line``. The newlines are found with numpy. With ``keep_terminators`` each line is a
    view of the buffer that still ends with its newline (and carriage return): no copy is made;
    otherwise the text is compacted once without them."""
    data = _utf8(body)
    raw = np.frombuffer(data, dtype=np.uint8)
    breaks = np.flatnonzero(raw == 10)
    n = len(breaks) + 1
    if keep_terminators:
        offsets = np.concatenate([[0], breaks + 1, [len(raw)]]).astype(np.int64)
        text = pa.py_buffer(data)
    else:
        starts = np.concatenate([[0], breaks + 1]).astype(np.int64)
        ends = np.concatenate([breaks, [len(raw)]]).astype(np.int64)
        carriage = (ends > starts) & (raw[np.maximum(ends - 1, 0)] == 13) if len(raw) else ends > starts
        drop = np.zeros(len(raw), dtype=bool)
        drop[breaks] = True
        drop[ends[carriage] - 1] = True
        offsets = np.concatenate([[0], np.cumsum(ends - starts - carriage)]).astype(np.int64)
        text = pa.py_buffer(raw[~drop])
    lines = pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), text])
    return pa.table(
        {
            SOURCE_FILE: file_column(path, n),
            LINE_NUMBER: pa.array(np.arange(first_line, first_line + n, dtype=np.int64)),
            "line": lines,
        }
    )


def strip_terminators(lines: pa.Array) -> pa.Array:
    """Lines without the newline (and carriage return) they end with."""
    return pc.replace_substring_regex(lines, "\r?\n$", "")


class LogFileError(ValueError):
    """A log file that cannot be ingested as delivered (a broken gzip stream, an unreadable Parquet
    file, a CSV header or Parquet schema without a required field): nothing of the day is ingested
    until its files are delivered again."""


#: the first two bytes of every gzip member
_GZIP_MAGIC = b"\x1f\x8b"
#: what a broken gzip stream raises: truncated (EOFError), bad deflate data (ISA-L, zlib), bad header
_GZIP_ERRORS = (EOFError, igzip_lib.IsalError, zlib.error, igzip.BadGzipFile)


def _open_log(path: Path) -> BinaryIO:
    """A log file opened for reading bytes; gzip (``.gz``) decompressed by ISA-L's igzip, the same
    format as Python's gzip (several members included) at about twice its speed."""
    if not path.name.endswith(".gz"):
        return open(path, "rb")  # noqa: SIM115 (closed by the caller's with)
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic and magic != _GZIP_MAGIC:
        raise LogFileError(f"{path}: not a gzip file (it starts with {magic!r}, not {_GZIP_MAGIC!r})")
    return igzip.open(path, "rb")


def iter_line_chunks(
    files: Sequence[Path], chunk_bytes: int = CHUNK_BYTES, keep_terminators: bool = False
) -> Iterator[pa.Table]:
    """Every line of the text files (gzip or plain) with its file and 1-based line number, in
    chunks of whole lines of about ``chunk_bytes``, in file and line order.

    A final newline does not make an extra line ("\n" alone is one empty line), a trailing
    carriage return is dropped (both are kept at the end of each line with ``keep_terminators``,
    which saves a copy of the text), and bytes that are not UTF-8 are kept as U+FFFD so the line
    can still be quarantined and inspected. A gzip file that breaks off or is corrupt raises
    :class:`LogFileError` naming the file and the last whole line read before it.
    """
    for path in files:
        next_line = 1
        carry = b""
        with _open_log(path) as fh:
            while block := _read_block(fh, path, chunk_bytes, next_line):
                data = carry + block
                cut = data.rfind(b"\n")
                if cut < 0:  # no complete line yet
                    carry = data
                    continue
                carry = data[cut + 1 :]
                body = data[: cut + 1] if keep_terminators else data[:cut]
                chunk = _lines_table(path, body, next_line, keep_terminators)
                if keep_terminators:  # the final newline of the body makes no extra line
                    chunk = chunk.slice(0, chunk.num_rows - 1)
                next_line += chunk.num_rows
                yield chunk
        if carry:  # the last line has no newline
            yield _lines_table(path, carry, next_line, keep_terminators)


def _read_block(fh: BinaryIO, path: Path, size: int, next_line: int) -> bytes:
    """The next ``size`` bytes of ``fh``; a broken gzip stream is a :class:`LogFileError`."""
    try:
        return fh.read(size)
    except _GZIP_ERRORS as error:
        raise LogFileError(
            f"{path}: the gzip data breaks off or is corrupt after line {next_line - 1:,} "
            f"({type(error).__name__}: {error}); nothing of the day is ingested: deliver the file again"
        ) from error


def read_lines(files: Sequence[Path]) -> pa.Table:
    """Every line of the files as one table (see :func:`iter_line_chunks`)."""
    parts = list(iter_line_chunks(files))
    return pa.concat_tables(parts) if parts else LINES_SCHEMA.empty_table()
