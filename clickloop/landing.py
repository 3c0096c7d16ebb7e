"""The landing folder: where an ad server hands its logs over, one folder per log and UTC day.

::

    <landing_dir>/impressions/date=YYYY-MM-DD/*.jsonl[.gz] | *.csv[.gz] | *.parquet
    <landing_dir>/clicks/date=YYYY-MM-DD/...
    <landing_dir>/exploration/date=YYYY-MM-DD/candidates-YYYY-MM-DD.parquet   (optional)

The exploration log holds every candidate of the requests the ad server ranked uniformly at random
(``request_id`` and the candidate's columns): what an off-policy estimate needs.

A day's files are read in name order; the format of each file comes from its extension.
"""

from __future__ import annotations

from datetime import date
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


def exploration_path(landing_dir: str | Path, day: date | str) -> Path:
    """Where the candidate sets of ``day``'s explored requests land."""
    return Path(landing_dir) / "exploration" / f"date={day}" / f"candidates-{day}.parquet"
