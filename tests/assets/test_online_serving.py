"""The ad catalog and the online feature store (real Redis at 127.0.0.1:6379), the online/offline
check, and the training/serving skew check, on a copy of the session's history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis
from dagster import AssetCheckKey, AssetKey, DagsterInstance
from dagster._core.event_api import PartitionKeyFilter

from assets.guards import check_problem
from clickloop.calibration import Calibration, calibration_served
from clickloop.contract_file import load_contract
from clickloop.features import WEEKDAY, FeatureSpec
from clickloop.lookup import StatsLookup
from clickloop.ranking import STATS_TABLE
from clickloop.service.catalog import AD_CATALOG
from clickloop.service.consistency import SKEW_TOLERANCE, compare_online, serving_skew
from clickloop.service.features import ParquetSnapshot
from clickloop.service.store import (
    POINTER,
    PREFIX,
    RedisSnapshot,
    current_snapshot,
    encode_keys,
    snapshots,
    stats_key,
    write_snapshot,
)
from clickloop.split import FEATURES
from pipelines.definitions import build_defs
from tests.assets.history import History

#: a database of the local Redis that only these tests use (emptied of the store's keys around them)
REDIS_URL = "redis://127.0.0.1:6379/11"
SPEC = FeatureSpec.from_contract(load_contract())


def _evaluation(instance: DagsterInstance, asset: str, check: str, partition: str):
    """The latest completed evaluation of a check on a partition (the guards' view: passed and
    not older than the partition's materialization)."""
    key = AssetCheckKey(AssetKey(asset), check)
    assert check_problem(instance, key, partition) is None, check_problem(instance, key, partition)
    (record,) = instance.event_log_storage.get_asset_check_execution_history(
        key, limit=1, partition_filter=PartitionKeyFilter(key=partition)
    )
    return record.evaluation


def _clear(client: redis.Redis) -> None:
    keys = list(client.scan_iter(match=f"{PREFIX}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="module")
def served(history: History, tmp_path_factory: pytest.TempPathFactory) -> History:
    """A copy of the history whose store is the test database, with the catalog and the online
    features of the last statistics materialized through the definitions."""
    copy = history.copy(tmp_path_factory.mktemp("online"))
    copy.settings = copy.settings.with_resource("online_store", url=REDIS_URL)
    copy.defs = build_defs(copy.settings)
    client = redis.Redis.from_url(REDIS_URL)
    _clear(client)
    day = copy.warehouse.partition_keys(STATS_TABLE)[-1]
    result = copy.materialize([AD_CATALOG, "online_features"], partition=day)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return copy


def test_online_features_equal_the_parquet_lookup(served: History) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    day = served.warehouse.partition_keys(STATS_TABLE)[-1]
    snapshot = RedisSnapshot(client, SPEC, current_snapshot(client))
    assert snapshot.version == day
    # the online/offline check ran with the materialization and passed
    evaluation = _evaluation(served.instance, "online_features", "online_matches_offline", day)
    assert evaluation.passed
    assert evaluation.metadata["sampled"].value > 500
    # candidates: the day's impressions (every input column), several ads unseen in the history
    candidates = served.warehouse.read_partition("ad_events", served.event_days[-1]).to_pandas().head(800)
    offline = StatsLookup(served.warehouse.partition_path(STATS_TABLE, day), SPEC).features(candidates, 1)
    online = snapshot.features(candidates, 1)
    # the service's warehouse snapshot (per-key dictionaries) gives the same numbers too
    parquet = ParquetSnapshot(SPEC, day, served.warehouse.partition_path(STATS_TABLE, day), None)
    for looked_up in (online, parquet.features(candidates, 1)):
        assert list(looked_up) == list(offline)
        for name in offline:
            np.testing.assert_array_equal(
                np.asarray(looked_up[name]), np.asarray(offline[name]), err_msg=name
            )
    # the catalog holds each ad of the window with its columns
    catalog = pq.read_table(served.warehouse.partition_path(AD_CATALOG, day)).to_pandas()
    (first,) = snapshot.ad_attributes([catalog["ad_id"].iloc[0]])
    assert first["bid_cpc"] == catalog["bid_cpc"].iloc[0]
    assert snapshot.ad_attributes(["no-such-ad"]) == [None]


def test_a_new_snapshot_switches_readers_and_keeps_the_previous(served: History) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    day = served.warehouse.partition_keys(STATS_TABLE)[-1]
    stats = pq.read_table(served.warehouse.partition_path(STATS_TABLE, day)).to_pandas()
    catalog = pq.read_table(served.warehouse.partition_path(AD_CATALOG, day)).to_pandas()
    before = current_snapshot(client)
    first = write_snapshot(client, SPEC, day, stats, catalog)
    second = write_snapshot(client, SPEC, day, stats, catalog)
    assert client.get(POINTER).decode() == second.snapshot != first.snapshot
    assert set(snapshots(client)) == {first.snapshot, second.snapshot}
    assert before in second.deleted_snapshots or before == first.snapshot
    assert not list(client.scan_iter(match=f"{PREFIX}:{before}:*")) or before == first.snapshot


def test_the_online_check_sees_a_tampered_value(served: History) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    day = served.warehouse.partition_keys(STATS_TABLE)[-1]
    stats = pq.read_table(served.warehouse.partition_path(STATS_TABLE, day)).to_pandas()
    catalog = pq.read_table(served.warehouse.partition_path(AD_CATALOG, day)).to_pandas()
    snapshot = RedisSnapshot(client, SPEC, current_snapshot(client))
    assert compare_online(snapshot, SPEC, stats, catalog).passed
    ad = stats[stats["key_type"] == "ad"].iloc[0]
    (field,) = encode_keys([[ad["key1"]]])
    client.hset(
        stats_key(snapshot.snapshot, "ad"), field, f"{int(ad['impressions'])} {float(ad['ctr']) + 1e-9!r}"
    )
    result = compare_online(snapshot, SPEC, stats, catalog)
    assert not result.passed and result.mismatches == 1
    assert result.worst_difference == pytest.approx(1e-9, rel=1e-3)


def test_the_skew_check_passes_on_what_the_champion_served(history: History) -> None:
    """The check ran in every events_job of the history; on a day the champion served it
    re-scored a sample and found the logged scores."""
    day = history.event_days[-1]
    assert day in history.champion_days
    evaluation = _evaluation(history.instance, FEATURES, "served_scores_match_model", day)
    assert evaluation.passed and evaluation.metadata["sample_size"].value > 0
    (path,) = history.warehouse.require_partition_paths(FEATURES, [day])
    registry = history.registry

    def served_with(version: str) -> Calibration:
        return calibration_served(history.warehouse, day, version, registry.version_tags(version))

    assert not served_with("1").is_identity
    result = serving_skew(path, SPEC, registry.load_version, sample_rows=500, calibration_of=served_with)
    assert result.passed and result.sampled == 500
    assert set(result.by_version) == {"ctr_model-v1"}
    assert result.worst_difference <= SKEW_TOLERANCE
    # the ad server served calibrated probabilities: the raw scores are not what it logged
    assert not serving_skew(path, SPEC, registry.load_version, sample_rows=500).passed


def test_the_skew_check_catches_a_skewed_feature(history: History, tmp_path: Path) -> None:
    """A feature the served scores did not see (the ad's historical CTR off by 0.01 in the logged
    features) shows as a difference well above the tolerance."""
    (path,) = history.warehouse.require_partition_paths(FEATURES, [history.event_days[-1]])
    table = pq.read_table(path).to_pandas()
    table["hist_ad_ctr"] = table["hist_ad_ctr"] + 0.01
    skewed = tmp_path / "features.parquet"
    table.to_parquet(skewed)
    result = serving_skew(skewed, SPEC, history.registry.load_version, sample_rows=500)
    assert not result.passed
    assert result.worst_difference > 100 * SKEW_TOLERANCE
    assert result.worst_impression in set(table["impression_id"])
    assert isinstance(pd.Series(result.by_version).sum(), np.integer | int)


def model_inputs(history: History) -> list[str]:
    """The model's inputs: the contract's features, weekday left out of a week of training days."""
    meta = history.training.metadata["ctr_model"]
    inputs = str(meta["inputs"]).split(", ")
    assert set(SPEC.columns) - set(inputs) == {WEEKDAY}, inputs
    assert str(meta["inputs_left_out"]).startswith("weekday (7 training days hold each weekday at most once")
    return inputs


def test_the_evaluation_shows_a_shap_summary(history: History) -> None:
    """Mean |SHAP| per feature, inline as a PNG and as a table, largest first."""
    meta = history.training.metadata["model_evaluation"]
    assert str(meta["shap_summary"]).startswith("![mean |SHAP value| per feature](data:image/png;base64,")
    rows = [line.split("|") for line in str(meta["shap_values"]).splitlines()[2:]]
    values = [float(r[2]) for r in rows]
    assert (
        len(rows) == len(model_inputs(history)) and values == sorted(values, reverse=True) and values[0] > 0
    )


def test_the_evaluation_shows_the_feature_ablation(history: History) -> None:
    """NE lost per shuffled feature on the test day; the flagged features listed apart."""
    meta = history.training.metadata["model_evaluation"]
    table = str(meta["feature_ablation"])
    assert table.startswith("NE on ") and table.count("\n| `") == len(model_inputs(history))
    flagged = str(meta["features_not_improving_ne"])
    assert flagged == "none" or all(f"`{name}`" in table for name in flagged.split(", "))
