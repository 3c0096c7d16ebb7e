"""Where the service finds a candidate's features: the warehouse's Parquet, or the online store.

A *snapshot* is one ``feature_stats`` partition (and the ad catalog of the same day) ready for
lookups; a *source* hands out the current snapshot and notices a newer one within ``ttl_s``
seconds, without a restart: a new partition in the warehouse, or the online store's pointer moved.
Both kinds of snapshot give the same features as the training SQL (tests compare them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import redis

from clickloop.contract import AD_ID
from clickloop.features import FeatureSpec
from clickloop.lookup import StatsLookup
from clickloop.ranking import STATS_TABLE
from clickloop.service.catalog import AD_CATALOG
from clickloop.service.store import RedisSnapshot, current_snapshot, encode_keys, key_widths, keyed_features
from clickloop.storage import Warehouse, read_parquet

#: How long a source trusts its snapshot before looking for a newer one.
DEFAULT_TTL_S = 2.0


class FeatureSnapshot(Protocol):
    #: the ``feature_stats`` partition the snapshot holds
    version: str

    def features(self, candidates: pd.DataFrame, position: int | None) -> dict[str, np.ndarray | pd.Series]:
        """The model's feature columns of candidate rows."""
        ...

    def ad_attributes(self, ad_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Each ad's catalog columns; None for an ad the catalog does not hold."""
        ...


class ParquetSnapshot:
    """A ``feature_stats`` partition read into per-key dictionaries (a request's few candidates are
    looked up key by key, as in the online store), and its day's ad catalog."""

    def __init__(self, spec: FeatureSpec, version: str, stats_path: Path, catalog_path: Path | None) -> None:
        self.version, self.spec = version, spec
        stats = read_parquet(stats_path).to_pandas()
        self.prior = StatsLookup.prior_of(stats, stats_path)
        self.tables: dict[str, dict[str, tuple[int, float]]] = {}
        for key_type, width in key_widths(spec).items():
            rows = stats[stats["key_type"] == key_type]
            keys = encode_keys([rows[f"key{k + 1}"].astype(object).to_numpy() for k in range(width)])
            values = zip(
                rows["impressions"].to_numpy(np.int64).tolist(),
                rows["ctr"].to_numpy(np.float64).tolist(),
                strict=True,
            )
            self.tables[key_type] = dict(zip(keys, values, strict=True))
        self.catalog: dict[str, dict[str, Any]] = {}
        if catalog_path is not None and catalog_path.exists():
            frame = read_parquet(catalog_path).to_pandas().drop(columns=["last_seen"], errors="ignore")
            frame = frame.astype(object).where(frame.notna(), None)
            self.catalog = {str(r.pop(AD_ID)): r for r in frame.to_dict("records")}

    def _fetch(self, requests: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for key_type, columns in requests:
            table = self.tables[key_type]
            found = [table.get(k) for k in encode_keys(columns)]
            impressions = np.array([0 if f is None else f[0] for f in found], dtype=np.int64)
            ctr = np.array(
                [self.prior if f is None or np.isnan(f[1]) else f[1] for f in found], dtype=np.float64
            )
            out.append((impressions, ctr))
        return out

    def features(self, candidates: pd.DataFrame, position: int | None) -> dict[str, np.ndarray | pd.Series]:
        return keyed_features(self.spec, candidates, position, self._fetch)

    def ad_attributes(self, ad_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        return [self.catalog.get(a) for a in ad_ids]


class _Refreshing:
    """The snapshot a ``current`` function names, rebuilt when the name changes (checked at most
    every ``ttl_s`` seconds)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._checked = -np.inf
        self._name: str | None = None
        self._snapshot: FeatureSnapshot | None = None

    def _current(self) -> str | None:
        raise NotImplementedError

    def _open(self, name: str) -> FeatureSnapshot:
        raise NotImplementedError

    def snapshot(self) -> FeatureSnapshot:
        """The current snapshot; LookupError when there is none yet."""
        now = time.monotonic()
        if now - self._checked >= self.ttl_s or self._snapshot is None:
            with self._lock:
                if now - self._checked >= self.ttl_s or self._snapshot is None:
                    name = self._current()
                    if name is None:
                        raise LookupError(f"{self.describe()}: no statistics to serve with yet")
                    if name != self._name:
                        self._snapshot, self._name = self._open(name), name
                    self._checked = now
        assert self._snapshot is not None
        return self._snapshot

    def describe(self) -> str:
        raise NotImplementedError


class WarehouseFeatures(_Refreshing):
    """The newest ``feature_stats`` partition of the warehouse (and the ad catalog of that day)."""

    def __init__(self, warehouse: Warehouse, spec: FeatureSpec, ttl_s: float = DEFAULT_TTL_S) -> None:
        super().__init__(ttl_s)
        self.warehouse, self.spec = warehouse, spec

    def _current(self) -> str | None:
        keys = self.warehouse.partition_keys(STATS_TABLE)
        return max(keys) if keys else None

    def _open(self, name: str) -> FeatureSnapshot:
        catalogs = [k for k in self.warehouse.partition_keys(AD_CATALOG) if k <= name]
        catalog = self.warehouse.partition_path(AD_CATALOG, max(catalogs)) if catalogs else None
        return ParquetSnapshot(self.spec, name, self.warehouse.partition_path(STATS_TABLE, name), catalog)

    def describe(self) -> str:
        return f"warehouse {self.warehouse.root} ({STATS_TABLE})"


class RedisFeatures(_Refreshing):
    """The snapshot the online store's pointer names."""

    def __init__(
        self, client: redis.Redis | Callable[[], redis.Redis], spec: FeatureSpec, ttl_s: float = DEFAULT_TTL_S
    ) -> None:
        super().__init__(ttl_s)
        self.client = client() if callable(client) and not isinstance(client, redis.Redis) else client
        self.spec = spec

    def _current(self) -> str | None:
        return current_snapshot(self.client)

    def _open(self, name: str) -> FeatureSnapshot:
        return RedisSnapshot(self.client, self.spec, name)

    def describe(self) -> str:
        return f"online store {self.client.connection_pool.connection_kwargs.get('host', '')}"
