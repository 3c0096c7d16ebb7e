"""Serving's features from precomputed per-entity lookups: the same numbers as :func:`features_sql`.

Scoring a request's candidates with SQL means a DuckDB join per call. A :class:`StatsLookup` reads one
``feature_stats`` partition once and keeps, per entity, its keys as an index and its impressions and
smoothed CTR as arrays; a call then finds each candidate's keys with pandas' hashed indexes over
integer codes, and :func:`clickloop.model.model_frame_for` builds the model's frame from those columns directly.
Keys never seen get 0 impressions and the prior, as in the SQL. A test checks both give the same
features on the same candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clickloop.contract import POSITION, TIME, USER_ID, require_columns
from clickloop.features import (
    GLOBAL_KEY_TYPE,
    USER_ACTIVITY,
    USER_KEY_TYPE,
    FeatureSpec,
    ctr_feature,
    impressions_feature,
)
from clickloop.storage import StoragePath, read_parquet


@dataclass(frozen=True)
class _KeyTable:
    """One key type's statistics: its keys (one or two columns of text) and their numbers, with
    the indexes a lookup reads built once: each key column's vocabulary, and each row's key as one
    integer over those vocabularies (a NULL part has a code of its own, one past the vocabulary)."""

    keys: tuple[np.ndarray, ...]
    impressions: np.ndarray
    ctr: np.ndarray
    vocabularies: tuple[pd.Index, ...]
    combined: pd.Index

    @classmethod
    def of(cls, keys: tuple[np.ndarray, ...], impressions: np.ndarray, ctr: np.ndarray) -> _KeyTable:
        vocabularies = tuple(pd.Index(pd.unique(k[~pd.isna(k)]), dtype=object) for k in keys)
        combined = np.zeros(len(impressions), dtype=np.int64)
        for column, vocabulary in zip(keys, vocabularies, strict=True):
            codes = vocabulary.get_indexer(pd.Index(column, dtype=object))
            combined = combined * (len(vocabulary) + 1) + np.where(codes < 0, len(vocabulary), codes)
        return cls(keys, impressions, ctr, vocabularies, pd.Index(combined))


#: a candidate column as integer codes and the text values they index (NULL: code -1)
Codes = tuple[np.ndarray, pd.Index]


def _codes(values: pd.Series) -> Codes:
    """Integer codes of a column and the vocabulary they index, as text (NULL: code -1)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.codes.to_numpy(), pd.Index(values.cat.categories.astype(str))
    codes, uniques = pd.factorize(values.astype(object), use_na_sentinel=True)
    return codes, pd.Index(uniques).astype(str)


def _find(table: _KeyTable, columns: Sequence[Codes]) -> np.ndarray:
    """For each row, the position of its key in ``table``, -1 when it is not there. Keys are
    compared as in the SQL (``IS NOT DISTINCT FROM``): a NULL matches a NULL. Only the rows'
    distinct values are hashed against the table's vocabularies; the table's indexes are reused."""
    combined = np.zeros(len(columns[0][0]), dtype=np.int64)
    unseen = np.zeros(len(combined), dtype=bool)
    for (codes, values), vocabulary in zip(columns, table.vocabularies, strict=True):
        null = len(vocabulary)
        in_table = np.append(vocabulary.get_indexer(values), null)  # code -1 (NULL) takes the last
        mapped = in_table[codes]
        unseen |= mapped < 0
        combined = combined * (null + 1) + mapped
    combined[unseen] = -1  # never a key of the table
    return table.combined.get_indexer(combined)


class StatsLookup:
    """The statistics of one ``feature_stats`` file, ready to describe candidates."""

    def __init__(self, path: StoragePath, spec: FeatureSpec) -> None:
        table = read_parquet(path).to_pandas()
        self.spec = spec
        self.prior = self.prior_of(table, path)
        self.tables: dict[str, _KeyTable] = {}
        for name, width in [(e.name, len(e.columns)) for e in spec.entities] + [(USER_KEY_TYPE, 1)]:
            rows = table[table["key_type"] == name]
            keys = tuple(rows[f"key{k + 1}"].astype(object).to_numpy() for k in range(width))
            self.tables[name] = _KeyTable.of(
                keys, rows["impressions"].to_numpy(np.int64), rows["ctr"].to_numpy(np.float64)
            )

    @staticmethod
    def prior_of(table: pd.DataFrame, path: StoragePath) -> float:
        """The prior CTR of a ``feature_stats`` table (its one global row)."""
        prior = table.loc[table["key_type"] == GLOBAL_KEY_TYPE, "ctr"]
        if len(prior) != 1 or pd.isna(prior.iloc[0]):
            raise ValueError(f"{path}: expected one '{GLOBAL_KEY_TYPE}' row with a prior CTR")
        return float(prior.iloc[0])

    def features(self, candidates: pd.DataFrame, position: int | None) -> dict[str, np.ndarray | pd.Series]:
        """The spec's feature columns of candidate rows, scored at slot ``position`` (None: at the
        rows' own position column)."""
        spec = self.spec
        out = row_features(spec, candidates, position)
        coded: dict[str, Codes] = {}  # each key column coded once, whatever entities share it

        def codes(column: str) -> Codes:
            if column not in coded:
                coded[column] = _codes(candidates[column])
            return coded[column]

        for entity in spec.entities:
            table = self.tables[entity.name]
            found = _find(table, [codes(c) for c in entity.columns])
            out[impressions_feature(entity)] = _take(table.impressions, found, 0)
            out[ctr_feature(entity)] = _take(table.ctr, found, self.prior)
        if spec.user_activity:
            table = self.tables[USER_KEY_TYPE]
            out[USER_ACTIVITY] = _take(table.impressions, _find(table, [codes(USER_ID)]), 0)
        return out


def row_features(
    spec: FeatureSpec, candidates: pd.DataFrame, position: int | None
) -> dict[str, np.ndarray | pd.Series]:
    """The features a row carries itself (no history): its categorical columns, the hour and
    weekday of its time (UTC) and its slot (``position``; None: the rows' own column). Every
    lookup of history (Parquet here, the online store) starts from these."""
    require_columns(list(candidates.columns), spec.input_columns, "the candidate frame")
    out: dict[str, np.ndarray | pd.Series] = {c: candidates[c] for c in spec.categorical}
    # hour and weekday (Monday = 0) of the UTC time from its nanoseconds since the epoch (a Thursday)
    nanos = pd.to_datetime(candidates[TIME], utc=True).to_numpy("datetime64[ns]").astype(np.int64)
    hours = nanos // 3_600_000_000_000
    out["hour"] = (hours % 24).astype(np.int32)
    out["weekday"] = ((hours // 24 + 3) % 7).astype(np.int32)
    if spec.has_position:
        out[POSITION] = (
            candidates[POSITION].to_numpy(np.int32)
            if position is None
            else np.full(len(candidates), position, dtype=np.int32)
        )
    return out


def _take(values: np.ndarray, found: np.ndarray, default: float) -> np.ndarray:
    """``values`` at the found positions, ``default`` where a key was not found (-1)."""
    out = np.full(len(found), default, dtype=values.dtype)
    hit = found >= 0
    out[hit] = values[found[hit]]
    return out
