"""Where raw ad-server logs come from: a landing folder of JSON-lines files.

The layout is the one an ad server hands over, partitioned by each event's own UTC date::

    <landing_dir>/impressions/date=YYYY-MM-DD/*.jsonl[.gz]
    <landing_dir>/clicks/date=YYYY-MM-DD/*.jsonl[.gz]

``LandingFolder`` reads real logs that something else delivered. The ad-server simulator
(``resources.simulator.AdServerSimulator``) is the embedded default: it implements the same
interface and writes the folder it is asked for before handing it over.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from dagster import ConfigurableResource

LogKind = Literal["impressions", "clicks"]
LOG_KINDS: tuple[LogKind, ...] = ("impressions", "clicks")
LOG_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")


class MissingPartitionError(FileNotFoundError):
    """The landing folder has no folder (or no log file) for a requested day."""


def partition_folder(landing_dir: str | Path, kind: LogKind, day: date) -> Path:
    return Path(landing_dir).expanduser().resolve() / kind / f"date={day.isoformat()}"


def list_log_files(landing_dir: str | Path, kind: LogKind, day: date) -> list[Path]:
    """The log files of one day, sorted by name; a clear error if the folder is missing or empty."""
    if kind not in LOG_KINDS:
        raise ValueError(f"unknown log kind {kind!r}: expected one of {LOG_KINDS}")
    folder = partition_folder(landing_dir, kind, day)
    if not folder.is_dir():
        raise MissingPartitionError(
            f"no {kind} logs for {day.isoformat()}: folder {folder} does not exist"
        )
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.endswith(LOG_SUFFIXES)
    )
    if not files:
        raise MissingPartitionError(
            f"no {kind} logs for {day.isoformat()}: folder {folder} holds no "
            f"{'/'.join(LOG_SUFFIXES)} file"
        )
    return files


class LogSource(ConfigurableResource):
    """The interface every log source offers to the raw assets."""

    landing_dir: str

    def partition_files(self, kind: LogKind, day: date) -> list[Path]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{type(self).__name__}({self.landing_dir})"


class LandingFolder(LogSource):
    """Real logs delivered by an ad server into ``landing_dir`` (set ``CLICKLOOP_LANDING_DIR``)."""

    def partition_files(self, kind: LogKind, day: date) -> list[Path]:
        return list_log_files(self.landing_dir, kind, day)
