"""``feature_stats`` and ``features`` in Dagster: the statistics of day D come from the days whose labels
were final when D began, the asset's output is exactly what the core computes, and a day whose
features fail the blocking check stops what is built on it (the features themselves are tested in
tests/core)."""

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import AssetExecutionContext, AssetKey, MaterializeResult, asset, materialize

from assets.features import features_check
from clickloop.features import DEFAULT_CTR, FeatureSpec, build_feature_stats, build_features
from resources.warehouse import WarehouseResource
from tests.assets.history import History
from tests.assets.support import CALENDAR, CONTRACT

SPEC = FeatureSpec.from_contract(CONTRACT)


def test_assets_and_blocking_check_in_dagster(history: History, tmp_path: Path) -> None:
    keys = history.keys
    d = keys[9]  # a day with a full window behind it
    window = keys[1:8]  # D-8 … D-2: D-1 was still collecting clicks when D began
    stats = history.metadata("feature_stats", d)
    assert stats["history_window"] == ", ".join(window)
    assert stats["history_days"] == len(window) == CALENDAR.feature_window_days
    assert stats["history_rows"] == sum(history.metadata("ad_events", k)["dagster/row_count"] for k in window)
    features = history.metadata("features", d)
    assert features["dagster/row_count"] == history.metadata("ad_events", d)["dagster/row_count"]
    assert 0 <= features["unseen_ad_share"] <= 1
    assert "hist_ad_ctr" in features["numeric_features"]
    assert history.day(d).checks["features_expectations"] is True

    # the asset wrote exactly what the core computes from the same partitions
    warehouse = history.warehouse
    with warehouse.duckdb() as con:
        build_feature_stats(
            con,
            SPEC,
            d,
            [(k, warehouse.partition_path("ad_events", k)) for k in window],
            tmp_path / "stats.parquet",
        )
        build_features(
            con,
            SPEC,
            warehouse.partition_path("ad_events", d),
            tmp_path / "stats.parquet",
            tmp_path / "features.parquet",
        )
    assert pq.read_table(warehouse.partition_path("feature_stats", d)).equals(
        pq.read_table(tmp_path / "stats.parquet")
    )
    assert pq.read_table(warehouse.partition_path("features", d)).equals(
        pq.read_table(tmp_path / "features.parquet")
    )

    for first in keys[:2]:  # no day before D-1: the default prior
        stats = history.metadata("feature_stats", first)
        assert stats["history_days"] == 0
        assert stats["prior_ctr"] == DEFAULT_CTR
        assert stats["history_window"].startswith("none")
    assert history.metadata("feature_stats", keys[2])["history_window"] == keys[0]


def test_failed_check_blocks_training(history: History, tmp_path: Path) -> None:
    """A features partition with a CTR above 1 fails the blocking check; downstream never runs."""
    good = pq.read_table(history.warehouse.partition_path("features", history.keys[9]))

    @asset(name="features", partitions_def=CALENDAR.partitions)
    def broken_features(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        ctr = pc.if_else(
            pc.equal(good.column("impression_id"), good["impression_id"][0]), 1.5, good.column("hist_ad_ctr")
        )
        table = good.set_column(good.column_names.index("hist_ad_ctr"), "hist_ad_ctr", ctr)
        warehouse.get().write_partition("features", context.partition_key, table)
        return MaterializeResult()

    @asset(partitions_def=CALENDAR.partitions, deps=[broken_features])
    def training_set() -> MaterializeResult:
        return MaterializeResult()

    result = materialize(
        [broken_features, training_set, features_check(CALENDAR, CONTRACT)],
        partition_key=history.keys[9],
        resources={"warehouse": WarehouseResource(data_dir=str(tmp_path))},
        raise_on_error=False,
    )
    assert not result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["failed"].value == ["range:hist_ad_ctr"]
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == {AssetKey("features")}
