"""Where raw ad-server logs come from: the log source every raw asset reads.

``LandingFolder`` reads real logs that something else delivered into a landing folder (layout in
:mod:`clickloop.landing`). The ad-server simulator (``resources.simulator.AdServerSimulator``) is
the embedded default: it offers the same interface and writes the folder it is asked for first; it
also knows the truth real logs never tell (the true CTR of an impression, the oracle's revenue).
"""

from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
from dagster import ConfigurableResource

from clickloop.contract import LogKind
from clickloop.landing import list_log_files
from clickloop.online import OracleTruth


class LogSource(ConfigurableResource):
    """The interface every log source offers to the raw assets."""

    landing_dir: str

    def partition_files(self, kind: LogKind, day: date) -> list[Path]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{type(self).__name__}({self.landing_dir})"

    def ground_truth(self, rows: pa.Table) -> np.ndarray | None:
        """The true click probability of logged rows; None where the source does not know it."""
        return None

    def oracle_truth(self, day: str) -> OracleTruth | None:
        """The best possible revenue of a day; None where the source does not know it."""
        return None


class LandingFolder(LogSource):
    """Real logs delivered by an ad server into ``landing_dir`` (set ``CLICKLOOP_LANDING_DIR``)."""

    def partition_files(self, kind: LogKind, day: date) -> list[Path]:
        return list_log_files(self.landing_dir, kind, day)
