"""The time split and the model in Dagster: the sets and the model of the history's training, tracked and
registered, and a training that refuses a day whose features failed their blocking check (split,
downsampling and training themselves are tested in tests/core)."""

from pathlib import Path

import xgboost as xgb
from dagster import AssetKey

from clickloop.model import DOWNSAMPLING_ATTR, read_model_manifest
from clickloop.split import TEST_SET, TRAINING_SET, TimeSplit, read_split_manifest
from tests.assets.history import History
from tests.assets.support import write_broken_features


def test_sets_and_model_materialize_in_dagster(history: History) -> None:
    keys = history.keys
    warehouse = history.warehouse
    manifest = read_split_manifest(warehouse)
    # the latest features day when training ran is the test day, the day before validates
    assert manifest.split == TimeSplit(train=tuple(keys[1:8]), validation=keys[8], test=keys[9])
    assert manifest.negative_downsampling_rate == 0.5
    assert 0.01 < manifest.train_base_rate < 0.2

    model = read_model_manifest(warehouse)
    assert model.version == "1" and Path(model.model_path).name == "model.ubj"
    booster = xgb.Booster(model_file=str(warehouse.root / model.model_path))
    assert booster.attr(DOWNSAMPLING_ATTR) == "0.5"
    metadata = history.training.metadata["ctr_model"]
    assert metadata["mlflow_run"].endswith(model.run_id)
    assert metadata["model_version"] == "1"
    assert metadata["best_iteration"] == model.best_iteration
    assert metadata["negative_downsampling_rate"] == 0.5
    assert "| feature |" in metadata["feature_importance"]
    assert metadata["search_trials"].count("\n") >= 3  # a header, its rule and the 2 trials
    assert history.registry.versions() == ["1"]
    assert {TRAINING_SET, TEST_SET} <= set(history.training.metadata)
    sets = history.training.metadata
    assert sets[TRAINING_SET]["validation_day"] == keys[8]
    assert sets[TEST_SET]["test_day"] == keys[9]
    assert sets[TEST_SET]["dagster/row_count"] == history.metadata("features", keys[9])["dagster/row_count"]


def test_a_failed_features_check_blocks_training_across_runs(history: History, tmp_path: Path) -> None:
    """A features day of the training window fails its blocking check in one run; the next training
    run refuses to split, naming the check and the day."""
    loop = history.copy(tmp_path / "copy")
    bad_day = loop.keys[3]
    assert not write_broken_features(loop.instance, loop.warehouse_resource, bad_day)
    report = loop.runner().run("training_job")
    assert not report.success
    assert any(f"features:features_expectations on {bad_day} failed" in f for f in report.failures), (
        report.failures
    )
    materialized = {e.asset_key for e in report.result.get_asset_materialization_events()}
    assert materialized == set()
    assert loop.registry.versions() == ["1"]
    assert AssetKey("ctr_model") not in materialized
