"""The online feature store in Redis: one snapshot of the statistics per ``feature_stats`` partition.

Layout (``<s>`` is a snapshot: the partition key and a write id, so a re-materialized partition
never overwrites the snapshot readers are using)::

    clickloop:online:<s>:stats:<key type>   hash  encoded key -> "impressions ctr" (user: "impressions")
    clickloop:online:<s>:catalog            hash  ad id -> JSON of the ad's catalog columns
    clickloop:online:<s>:meta               hash  partition, prior, rows, ads, written_at
    clickloop:online:current                string the snapshot being served

A snapshot is written completely, then the pointer is switched with one ``SET`` (atomic): a reader
sees the old snapshot or the new one, never half of one. The snapshot before the current one is
kept (a reader that read the pointer a moment ago still finds its keys); older ones are deleted.
Numbers are stored as Python's ``repr`` of the float, which reads back bit for bit, so online and
offline values are equal, not close.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import redis

from clickloop.contract import USER_ID
from clickloop.features import (
    GLOBAL_KEY_TYPE,
    USER_ACTIVITY,
    USER_KEY_TYPE,
    FeatureSpec,
    ctr_feature,
    impressions_feature,
)
from clickloop.lookup import row_features

PREFIX = "clickloop:online"
POINTER = f"{PREFIX}:current"
#: a key part that is NULL (a text value cannot hold it)
NULL_TOKEN = "\x00"
KEY_SEPARATOR = "\x1f"
#: entries per pipelined round trip when writing
WRITE_CHUNK = 20_000


def stats_key(snapshot: str, key_type: str) -> str:
    return f"{PREFIX}:{snapshot}:stats:{key_type}"


def catalog_key(snapshot: str) -> str:
    return f"{PREFIX}:{snapshot}:catalog"


def meta_key(snapshot: str) -> str:
    return f"{PREFIX}:{snapshot}:meta"


def _part(value: Any) -> str:
    return NULL_TOKEN if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def encode_keys(columns: Sequence[Iterable[Any]]) -> list[str]:
    """The hash field of each row's key (one or more columns; NULL matches NULL, as in the SQL)."""
    return [KEY_SEPARATOR.join(_part(v) for v in parts) for parts in zip(*columns, strict=True)]


def _key_columns(rows: pd.DataFrame, width: int) -> list[np.ndarray]:
    return [rows[f"key{k + 1}"].astype(object).to_numpy() for k in range(width)]


def key_widths(spec: FeatureSpec) -> dict[str, int]:
    """Every key type of the spec and how many columns its key has."""
    widths = {e.name: len(e.columns) for e in spec.entities}
    if spec.user_activity:
        widths[USER_KEY_TYPE] = 1
    return widths


@dataclass(frozen=True)
class SnapshotSummary:
    """What :func:`write_snapshot` wrote."""

    snapshot: str
    partition: str
    prior: float
    rows: dict[str, int]
    ads: int
    deleted_snapshots: tuple[str, ...]


def _delete_snapshot(client: redis.Redis, snapshot: str) -> None:
    keys = list(client.scan_iter(match=f"{PREFIX}:{snapshot}:*", count=1000))
    if keys:
        client.delete(*keys)


def snapshots(client: redis.Redis) -> list[str]:
    """Every snapshot with a meta hash, oldest write first."""
    found = []
    for key in client.scan_iter(match=f"{PREFIX}:*:meta", count=1000):
        snapshot = key.decode()[len(PREFIX) + 1 : -len(":meta")]
        written = client.hget(key, "written_at")
        found.append((written.decode() if written else "", snapshot))
    return [s for _, s in sorted(found)]


def write_snapshot(
    client: redis.Redis, spec: FeatureSpec, partition: str, stats: pd.DataFrame, catalog: pd.DataFrame
) -> SnapshotSummary:
    """Write one partition's statistics and ad catalog as a new snapshot, point readers at it, and
    delete snapshots older than the one it replaces."""
    prior_rows = stats.loc[stats["key_type"] == GLOBAL_KEY_TYPE, "ctr"]
    if len(prior_rows) != 1 or pd.isna(prior_rows.iloc[0]):
        raise ValueError(f"feature_stats {partition}: expected one '{GLOBAL_KEY_TYPE}' row with a prior CTR")
    snapshot = f"{partition}@{uuid.uuid4().hex[:12]}"
    rows: dict[str, int] = {}
    pipe = client.pipeline(transaction=False)
    pending = 0
    for key_type, width in key_widths(spec).items():
        part = stats[stats["key_type"] == key_type]
        fields = encode_keys(_key_columns(part, width))
        impressions = part["impressions"].to_numpy(np.int64)
        if key_type == USER_KEY_TYPE:
            values = [str(int(i)) for i in impressions]
        else:
            values = [
                f"{int(i)} {float(c)!r}"
                for i, c in zip(impressions, part["ctr"].to_numpy(np.float64), strict=True)
            ]
        rows[key_type] = len(fields)
        for start in range(0, len(fields), WRITE_CHUNK):
            chunk = dict(
                zip(fields[start : start + WRITE_CHUNK], values[start : start + WRITE_CHUNK], strict=True)
            )
            pipe.hset(stats_key(snapshot, key_type), mapping=chunk)
            pending += 1
            if pending >= 8:
                pipe.execute()
                pending = 0
    ads = catalog.drop(columns=[c for c in ("last_seen",) if c in catalog.columns])
    entries = {
        str(row["ad_id"]): json.dumps({k: _jsonable(v) for k, v in row.items() if k != "ad_id"})
        for row in ads.to_dict("records")
    }
    items = list(entries.items())
    for start in range(0, len(items), WRITE_CHUNK):
        pipe.hset(catalog_key(snapshot), mapping=dict(items[start : start + WRITE_CHUNK]))
    prior = float(prior_rows.iloc[0])
    meta = {
        "partition": partition,
        "prior": repr(prior),
        "rows": json.dumps(rows),
        "ads": len(entries),
        "written_at": pd.Timestamp.now(tz="UTC").isoformat(),
    }
    pipe.hset(meta_key(snapshot), mapping=meta)
    pipe.execute()
    previous = client.get(POINTER)
    client.set(POINTER, snapshot)  # the switch: one atomic SET
    keep = {snapshot, previous.decode() if previous else None}
    deleted = tuple(s for s in snapshots(client) if s not in keep)
    for old in deleted:
        _delete_snapshot(client, old)
    return SnapshotSummary(snapshot, partition, prior, rows, len(entries), deleted)


def _jsonable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def current_snapshot(client: redis.Redis) -> str | None:
    value = client.get(POINTER)
    return value.decode() if value else None


Fetch = Callable[[Sequence[tuple[str, Sequence[Iterable[Any]]]]], list[tuple[np.ndarray, np.ndarray]]]


def keyed_features(
    spec: FeatureSpec, candidates: pd.DataFrame, position: int | None, fetch: Fetch
) -> dict[str, np.ndarray | pd.Series]:
    """The spec's feature columns of candidate rows from a key-value store of the statistics:
    ``fetch`` answers (impressions, ctr) for the keys of several key types at once."""
    out = row_features(spec, candidates, position)
    requests = [(e.name, [candidates[c].to_numpy(object) for c in e.columns]) for e in spec.entities]
    if spec.user_activity:
        requests.append((USER_KEY_TYPE, [candidates[USER_ID].to_numpy(object)]))
    found = fetch(requests)
    for entity, (impressions, ctr) in zip(spec.entities, found, strict=False):
        out[impressions_feature(entity)] = impressions
        out[ctr_feature(entity)] = ctr
    if spec.user_activity:
        out[USER_ACTIVITY] = found[-1][0]
    return out


class RedisSnapshot:
    """One snapshot of the online store, ready to describe candidates like a
    :class:`clickloop.lookup.StatsLookup` (tested to give the same features)."""

    def __init__(self, client: redis.Redis, spec: FeatureSpec, snapshot: str) -> None:
        meta = {k.decode(): v.decode() for k, v in client.hgetall(meta_key(snapshot)).items()}
        if "prior" not in meta:
            raise LookupError(f"online store: snapshot {snapshot!r} has no meta (deleted or half-written)")
        self.client, self.spec, self.snapshot = client, spec, snapshot
        self.version = meta["partition"]
        self.prior = float(meta["prior"])

    def lookup(self, key_type: str, columns: Sequence[Iterable[Any]]) -> tuple[np.ndarray, np.ndarray]:
        """(impressions, ctr) of each row's key of ``key_type`` (0 and the prior when unseen)."""
        (values,) = self._fetch([(key_type, columns)])
        return values

    def _fetch(
        self, requests: Sequence[tuple[str, Sequence[Iterable[Any]]]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        pipe = self.client.pipeline(transaction=False)
        for key_type, columns in requests:
            pipe.hmget(stats_key(self.snapshot, key_type), encode_keys(columns))
        out = []
        for raw in pipe.execute():
            impressions = np.zeros(len(raw), dtype=np.int64)
            ctr = np.full(len(raw), self.prior, dtype=np.float64)
            for i, value in enumerate(raw):
                if value is not None:
                    parts = value.split()
                    impressions[i] = int(parts[0])
                    if len(parts) > 1:
                        ctr[i] = float(parts[1])
            out.append((impressions, ctr))
        return out

    def features(self, candidates: pd.DataFrame, position: int | None) -> dict[str, np.ndarray | pd.Series]:
        """The spec's feature columns of candidate rows, as :meth:`StatsLookup.features` gives them;
        one round trip to Redis for every key type."""
        return keyed_features(self.spec, candidates, position, self._fetch)

    def ad_attributes(self, ad_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Each ad's catalog columns, None for an ad the catalog does not hold."""
        if not ad_ids:
            return []
        raw = self.client.hmget(catalog_key(self.snapshot), list(ad_ids))
        return [None if v is None else json.loads(v) for v in raw]
