"""The time split: training days, a validation day, then the test day, never at random.

* the test day is the latest ``features`` partition that exists (or a chosen one);
* the validation day (early stopping) is the partition just before it;
* the training window is the ``train_days`` partitions before the validation day.

The days are taken by position among the ordered partition keys, never by date arithmetic; a missing
partition inside the window is an error, not a silent gap. Nothing of the test day is seen in
training.

Negative downsampling (optional, rate w < 1): the training days keep every click and a fraction w
of the non-clicks (a deterministic hash of the impression id, so a rerun keeps the same rows). A
model fitted on them predicts q, too high; the probability on real traffic is
p = q / (q + (1 - q) / w), i.e. logit(p) = logit(q) + log(w). The validation and test days are
never downsampled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from clickloop.contract import IMPRESSION_ID, LABEL, TIME
from clickloop.storage import (
    Warehouse,
    atomic_copy_query_to_parquet,
    atomic_write_text,
    one_row,
    parquet_list_sql,
    parquet_sql,
)

FEATURES = "features"
TRAINING_SET = "training_set"
TEST_SET = "test_set"
SPLIT_COLUMN = "split"
TRAIN = "train"
VALIDATION = "validation"
TEST = "test"
_HASH_BUCKETS = 1_000_000


@dataclass(frozen=True)
class SplitParams:
    """How the split is taken."""

    #: days of features in the training window (before the validation day)
    train_days: int = 7
    #: the features partition used as test day; None: the latest one that exists
    test_day: str | None = None
    #: share of non-clicks kept in the training days (1.0 = no downsampling)
    negative_downsampling_rate: float = 1.0
    #: seed of the downsampling hash
    seed: int = 7

    def __post_init__(self) -> None:
        if self.train_days < 1:
            raise ValueError(f"train_days must be >= 1, not {self.train_days}")
        if not 0.0 < self.negative_downsampling_rate <= 1.0:
            raise ValueError(
                f"negative_downsampling_rate must be in (0, 1], not {self.negative_downsampling_rate}"
            )


@dataclass(frozen=True)
class TimeSplit:
    """Training days, then one validation day, then the test day (partition keys, in order)."""

    train: tuple[str, ...]
    validation: str
    test: str

    def __post_init__(self) -> None:
        ordered = (*self.train, self.validation, self.test)
        if list(ordered) != sorted(set(ordered)):
            raise ValueError(f"split days must be distinct and increasing: {ordered}")

    @property
    def keys(self) -> list[str]:
        return [*self.train, self.validation, self.test]

    def to_dict(self) -> dict[str, Any]:
        return {"train": list(self.train), "validation": self.validation, "test": self.test}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimeSplit:
        return cls(train=tuple(data["train"]), validation=data["validation"], test=data["test"])


def choose_split(
    partition_keys: Sequence[str],
    available: Sequence[str],
    train_days: int,
    test_day: str | None = None,
) -> TimeSplit:
    """Pick the split from the ordered partition keys and the ones that exist.

    ``partition_keys`` is every key of the partitions definition, in order (consecutive days);
    the window is taken by position in it, so a missing day fails loudly instead of stretching
    the window. ``test_day`` defaults to the latest available key.
    """
    if train_days < 1:
        raise ValueError(f"train_days must be >= 1, not {train_days}")
    keys = list(partition_keys)
    present = set(available)
    if test_day is None:
        existing = [k for k in keys if k in present]
        if not existing:
            raise ValueError(f"no {FEATURES} partition exists yet: materialize some days first")
        test_day = existing[-1]
    if test_day not in keys:
        raise ValueError(f"test day {test_day} is not a partition key of {FEATURES}")
    position = keys.index(test_day)
    if position < train_days + 1:
        raise ValueError(
            f"test day {test_day} has {position} partition(s) before it; "
            f"{train_days} training day(s) + 1 validation day are needed"
        )
    split = TimeSplit(
        train=tuple(keys[position - 1 - train_days : position - 1]),
        validation=keys[position - 1],
        test=test_day,
    )
    missing = [k for k in split.keys if k not in present]
    if missing:
        raise ValueError(f"{FEATURES} partition(s) of the split are missing: {', '.join(missing)}")
    return split


# --- Negative downsampling ----------------------------------------------------------------------


def keep_row_sql(rate: float, seed: int, id_column: str = IMPRESSION_ID) -> str:
    """A DuckDB predicate that keeps every click and a share ``rate`` of the non-clicks.

    The decision is a hash of (seed, impression id): deterministic across reruns and machines.
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"downsampling rate must be in (0, 1], not {rate}")
    if rate == 1.0:
        return "TRUE"
    threshold = int(round(rate * _HASH_BUCKETS))
    return f"({LABEL} = 1 OR hash({id_column} || ':{int(seed)}') % {_HASH_BUCKETS} < {threshold})"


# --- Building the sets --------------------------------------------------------------------------


@dataclass(frozen=True)
class SetSummary:
    """Rows and clicks of a split, before and after downsampling."""

    rows: int
    clicks: int
    rows_before_sampling: int
    clicks_before_sampling: int

    @property
    def ctr(self) -> float:
        return self.clicks / self.rows if self.rows else 0.0

    @property
    def ctr_before_sampling(self) -> float:
        return self.clicks_before_sampling / self.rows_before_sampling if self.rows_before_sampling else 0.0


def _count(con: duckdb.DuckDBPyConnection, relation: str, where: str = "TRUE") -> tuple[int, int]:
    rows, clicks = one_row(con, f"SELECT count(*), coalesce(sum({LABEL}), 0) FROM {relation} WHERE {where}")
    return int(rows), int(clicks)


def build_training_set(
    con: duckdb.DuckDBPyConnection,
    split: TimeSplit,
    paths: Mapping[str, Path],
    rate: float,
    seed: int,
    target: Path,
) -> dict[str, SetSummary]:
    """Write the training days (downsampled) and the validation day (never) to ``target``.

    ``paths`` maps each split key to its ``features`` Parquet file. Rows get a ``split`` column.
    """
    train = parquet_list_sql([paths[k] for k in split.train])
    valid = parquet_list_sql([paths[split.validation]])
    keep = keep_row_sql(rate, seed)
    sql = f"""
        SELECT *, '{TRAIN}' AS {SPLIT_COLUMN} FROM {train} WHERE {keep}
        UNION ALL BY NAME
        SELECT *, '{VALIDATION}' AS {SPLIT_COLUMN} FROM {valid}
        ORDER BY {SPLIT_COLUMN}, {TIME}, {IMPRESSION_ID}
    """
    atomic_copy_query_to_parquet(con, sql, target)
    written = parquet_sql(target)
    summaries = {}
    for name, source in ((TRAIN, train), (VALIDATION, valid)):
        rows, clicks = _count(con, written, f"{SPLIT_COLUMN} = '{name}'")
        rows0, clicks0 = _count(con, source)
        summaries[name] = SetSummary(rows, clicks, rows0, clicks0)
    return summaries


def build_test_set(
    con: duckdb.DuckDBPyConnection, split: TimeSplit, paths: Mapping[str, Path], target: Path
) -> SetSummary:
    """Write the test day (every row, never downsampled) to ``target``."""
    source = parquet_list_sql([paths[split.test]])
    atomic_copy_query_to_parquet(con, f"SELECT * FROM {source} ORDER BY {TIME}, {IMPRESSION_ID}", target)
    rows, clicks = _count(con, parquet_sql(target))
    return SetSummary(rows, clicks, rows, clicks)


def set_path(warehouse: Warehouse, table: str) -> Path:
    """The one Parquet file of a non-partitioned set (``training_set`` or ``test_set``)."""
    return warehouse.table_path(table)


def split_manifest_path(warehouse: Warehouse) -> Path:
    """The split the current ``training_set`` and ``test_set`` were built with (JSON)."""
    return warehouse.root / TRAINING_SET / "split.json"


@dataclass(frozen=True)
class SplitManifest:
    """What the sets were built from: read by the model, the evaluation and the promotion gate."""

    split: TimeSplit
    negative_downsampling_rate: float
    seed: int
    train_base_rate: float
    summaries: dict[str, SetSummary] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "split": self.split.to_dict(),
                "negative_downsampling_rate": self.negative_downsampling_rate,
                "seed": self.seed,
                "train_base_rate": self.train_base_rate,
                "summaries": {k: asdict(v) for k, v in self.summaries.items()},
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> SplitManifest:
        data = json.loads(text)
        return cls(
            split=TimeSplit.from_dict(data["split"]),
            negative_downsampling_rate=float(data["negative_downsampling_rate"]),
            seed=int(data["seed"]),
            train_base_rate=float(data["train_base_rate"]),
            summaries={k: SetSummary(**v) for k, v in data.get("summaries", {}).items()},
        )


def read_split_manifest(warehouse: Warehouse) -> SplitManifest:
    path = split_manifest_path(warehouse)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialize {TRAINING_SET}/{TEST_SET} first")
    return SplitManifest.from_json(path.read_text())


def split_markdown(manifest: SplitManifest) -> str:
    """The split as a Markdown table (days, rows, clicks, CTR)."""
    s = manifest.split
    days = {
        TRAIN: f"{s.train[0]} … {s.train[-1]} ({len(s.train)} d)",
        VALIDATION: s.validation,
        TEST: s.test,
    }
    lines = ["| split | days | rows | clicks | CTR | rows before sampling |", "|---|---|---:|---:|---:|---:|"]
    for name, summary in manifest.summaries.items():
        lines.append(
            f"| {name} | {days[name]} | {summary.rows:,} | {summary.clicks:,} | {summary.ctr:.4f} "
            f"| {summary.rows_before_sampling:,} |"
        )
    return "\n".join(lines)


def build_sets(warehouse: Warehouse, split: TimeSplit, params: SplitParams) -> SplitManifest:
    """Write ``training_set`` and ``test_set`` of ``split`` and the manifest that describes them."""
    paths = dict(zip(split.keys, warehouse.require_partition_paths(FEATURES, split.keys), strict=True))
    with warehouse.duckdb() as con:
        summaries = build_training_set(
            con,
            split,
            paths,
            params.negative_downsampling_rate,
            params.seed,
            set_path(warehouse, TRAINING_SET),
        )
        summaries[TEST] = build_test_set(con, split, paths, set_path(warehouse, TEST_SET))
    manifest = SplitManifest(
        split=split,
        negative_downsampling_rate=params.negative_downsampling_rate,
        seed=params.seed,
        train_base_rate=summaries[TRAIN].ctr_before_sampling,
        summaries=summaries,
    )
    atomic_write_text(split_manifest_path(warehouse), manifest.to_json())
    return manifest
