"""The landing folder: where an ad server hands its logs over, one folder per log and UTC day.

::

    <landing_dir>/impressions/date=YYYY-MM-DD/*.jsonl[.gz] | *.csv[.gz] | *.parquet
    <landing_dir>/clicks/date=YYYY-MM-DD/...

A day's files are read in name order; the format of each file comes from its extension. A day's
:func:`fingerprint` (names, sizes, modification times) tells when logs are delivered again after
the day was ingested.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

from clickloop.contract import LOG_KINDS, LogKind

FileFormat = Literal["jsonl", "csv", "parquet"]
#: extension → format; ``.gz`` may follow the text formats
FORMATS: dict[str, FileFormat] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
LOG_SUFFIXES: tuple[str, ...] = tuple(
    [*FORMATS] + [f"{s}.gz" for s, fmt in FORMATS.items() if fmt != "parquet"]
)


class MissingPartitionError(FileNotFoundError):
    """The landing folder has no folder (or no log file) for a requested day."""


def file_format(path: Path) -> tuple[FileFormat, bool]:
    """(format, gzip-compressed) of a log file, from its name."""
    name = path.name.lower()
    compressed = name.endswith(".gz")
    stem = name[:-3] if compressed else name
    for suffix, fmt in FORMATS.items():
        if stem.endswith(suffix):
            if compressed and fmt == "parquet":
                break
            return fmt, compressed
    raise ValueError(f"{path}: not a log file ({', '.join(LOG_SUFFIXES)})")


def partition_folder(landing_dir: str | Path, kind: LogKind, day: date) -> Path:
    return Path(landing_dir).expanduser().resolve() / kind / f"date={day.isoformat()}"


def list_log_files(landing_dir: str | Path, kind: LogKind, day: date) -> list[Path]:
    """The log files of one day, sorted by name; a clear error if the folder is missing or empty."""
    if kind not in LOG_KINDS:
        raise ValueError(f"unknown log kind {kind!r}: expected one of {LOG_KINDS}")
    folder = partition_folder(landing_dir, kind, day)
    if not folder.is_dir():
        raise MissingPartitionError(f"no {kind} logs for {day.isoformat()}: folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(LOG_SUFFIXES))
    if not files:
        raise MissingPartitionError(
            f"no {kind} logs for {day.isoformat()}: folder {folder} holds no {'/'.join(LOG_SUFFIXES)} file"
        )
    return files


def fingerprint(files: Sequence[Path]) -> str:
    """What a day's delivery looks like, cheaply: a SHA-256 over each file's name, size and
    modification time (nanoseconds), in name order. A file added, removed, replaced or rewritten
    changes it; reading the files is not needed (a day may be gigabytes)."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        stat = path.stat()
        digest.update(f"{path.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def files_markdown(files: Sequence[Path]) -> str:
    """The delivered files of a day: name, size, modification time (UTC)."""
    rows = ["| file | bytes | modified (UTC) |", "|---|---:|---|"]
    for path in sorted(files, key=lambda p: p.name):
        stat = path.stat()
        modified = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(timespec="seconds")
        rows.append(f"| {path.name} | {stat.st_size:,} | {modified} |")
    return "\n".join(rows)
