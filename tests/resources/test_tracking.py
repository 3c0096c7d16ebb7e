"""The model registry on a real MLflow SQLite store: runs, versions, promotion and rollback, the
model file (UBJSON, never a pickle) and what it carries, and a store moved to another folder."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from mlflow import MlflowClient

from clickloop.champion_stack import (
    HISTORY_TAG,
    NoPreviousChampionError,
    parse_history,
    popped,
    previous_in,
    pushed,
)
from clickloop.gains import PROMOTED_AT_TAG
from clickloop.model import DOWNSAMPLING_ATTR, model_categories, predict_ctr
from clickloop.training import TrainingParams, fit_ctr_model
from resources.tracking import ModelRegistry, metric_entities, relocate_mlflow_store
from tests.core.synthetic import KEYS, SPEC, features_day
from tests.resources.conftest import tiny_booster


def registry(data_dir: Path, name: str) -> ModelRegistry:
    return ModelRegistry(data_dir=str(data_dir), registered_model_name=name)


def log_and_register(reg: ModelRegistry, seed: int, **kw) -> tuple[str, xgb.Booster, np.ndarray]:
    booster, x = tiny_booster(seed)
    importance = pd.DataFrame({"feature": ["a", "b"], "gain": [3.0, 1.0]})
    run = reg.log_training_run(
        booster,
        run_name=f"seed-{seed}",
        params={"max_depth": 6, "eta": 0.3},
        metrics={"valid_logloss": 0.5},
        metric_history={"valid_logloss_curve": [0.6, 0.55, 0.5]},
        feature_importance=importance,
        tags={"clickloop.test": "yes"},
        artifacts={"search.json": json.dumps({"trials": 2})},
        **kw,
    )
    return reg.register(run, tags={"seed": str(seed)}), booster, x


def test_run_is_logged_with_params_metrics_importance_and_ubj_model(mlflow_data_dir: Path) -> None:
    reg = registry(mlflow_data_dir, "logged_model")
    version, booster, x = log_and_register(reg, seed=1)
    client = MlflowClient(tracking_uri=reg.resolved_tracking_uri())
    mv = client.get_model_version("logged_model", version)
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["clickloop.test"] == "yes"
    assert run.data.params == {"eta": "0.3", "max_depth": "6"}
    assert run.data.metrics["valid_logloss"] == 0.5
    curve = client.get_metric_history(mv.run_id, "valid_logloss_curve")
    assert [m.step for m in curve] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(mv.run_id)}
    assert {"feature_importance.json", "feature_importance.csv", "search.json", "model"} <= artifacts
    model_files = {Path(a.path).name for a in client.list_artifacts(mv.run_id, "model")}
    assert "model.ubj" in model_files and "MLmodel" in model_files
    assert not any(f.endswith((".pkl", ".pickle")) for f in model_files)
    assert reg.resolved_tracking_uri() == f"sqlite:///{mlflow_data_dir.resolve()}/mlflow/mlflow.db"
    assert (mlflow_data_dir / "mlflow" / "artifacts").is_dir()

    reloaded = reg.load_version(version)
    dm = xgb.DMatrix(x, feature_names=["a", "b", "c"])
    np.testing.assert_array_equal(reloaded.predict(dm), booster.predict(dm))
    url = reg.run_url(mv.run_id)
    assert url.startswith("http://127.0.0.1:5000/#/experiments/") and url.endswith(mv.run_id)
    assert reg.model_version_url(version) == f"http://127.0.0.1:5000/#/models/logged_model/versions/{version}"


def test_long_curves_are_logged_in_batches(mlflow_data_dir: Path) -> None:
    reg = registry(mlflow_data_dir, "long_curves")
    booster, _ = tiny_booster(11)
    curve = [1.0 / (step + 1) for step in range(1_500)]  # MLflow takes at most 1000 metrics a batch
    run = reg.log_training_run(
        booster, run_name="long", params={}, metrics={"final": 0.1}, metric_history={"c": curve}
    )
    history = MlflowClient(tracking_uri=reg.resolved_tracking_uri()).get_metric_history(run.run_id, "c")
    assert sorted(m.step for m in history) == list(range(1_500))
    assert len(metric_entities({"final": 0.1}, {"c": curve}, 0)) == 1_501


def test_a_failed_logging_marks_the_run_failed(mlflow_data_dir: Path) -> None:
    reg = registry(mlflow_data_dir, "failed_model")
    booster, _ = tiny_booster(12)
    with pytest.raises(Exception):  # noqa: B017 - MLflow decides what a bad artifact raises
        reg.log_training_run(
            booster,
            run_name="broken",
            params={},
            metrics={},
            artifacts={"notes.txt": None},  # type: ignore[dict-item]
        )
    client = MlflowClient(tracking_uri=reg.resolved_tracking_uri())
    (run,) = client.search_runs([reg.experiment_id()], "attributes.run_name = 'broken'")
    assert run.info.status == "FAILED"


def test_registration_creates_new_versions(mlflow_data_dir: Path) -> None:
    reg = registry(mlflow_data_dir, "versioned_model")
    assert reg.versions() == [] and reg.champion() is None and reg.champion_version() is None
    v1, _, _ = log_and_register(reg, seed=2)
    v2, _, _ = log_and_register(reg, seed=3)
    assert (v1, v2) == ("1", "2")
    assert reg.versions() == ["1", "2"]
    assert reg.version_tags("2")["seed"] == "3"
    assert reg.champion() is None
    assert reg.experiment_id() == registry(mlflow_data_dir, "another_model").experiment_id()  # one experiment


def test_a_trained_model_keeps_its_categories_and_rate_through_the_registry(mlflow_data_dir: Path) -> None:
    """The booster early stopping cut at its best iteration scores the same after the round trip
    through MLflow: its training categories and downsampling rate travel in the model file."""
    train, valid, test = (features_day(k, 1500) for k in KEYS[:3])
    params = TrainingParams(
        n_trials=0, num_boost_round=40, learning_rate=0.3, min_child_weight=5.0, nthread=1
    )
    booster = fit_ctr_model(SPEC, train, valid, params, rate=0.5).final.booster
    reg = registry(mlflow_data_dir, "trained_model")
    run = reg.log_training_run(booster, run_name="trained", params={}, metrics={})
    reloaded = reg.load_version(reg.register(run))
    assert reloaded.attr(DOWNSAMPLING_ATTR) == "0.5"
    assert model_categories(reloaded) == model_categories(booster) and model_categories(reloaded)
    np.testing.assert_array_equal(predict_ctr(reloaded, test), predict_ctr(booster, test))
    np.testing.assert_array_equal(predict_ctr(reloaded, test.slice(0, 3)), predict_ctr(booster, test)[:3])


def test_promote_and_roll_back_twice(mlflow_data_dir: Path) -> None:
    reg = registry(mlflow_data_dir, "promoted_model")
    versions = [log_and_register(reg, seed=s) for s in (4, 5, 6)]
    (v1, b1, x), (v2, _, _), (v3, _, _) = versions

    assert reg.promote(v1).previous_champion is None
    assert reg.previous_champion_version() is None
    assert reg.promote(v2).previous_champion == v1
    promotion = reg.promote(v3, reason="better NE")
    assert (promotion.version, promotion.previous_champion, promotion.changed) == (v3, v2, True)
    assert reg.champion_version() == v3 and reg.previous_champion_version() == v2
    assert reg.version_tags(v3)["promotion_reason"] == "better NE"
    assert "promoted_at" in reg.version_tags(v3)

    first = reg.rollback()
    assert (first.from_version, first.to_version, first.previous_champion) == (v3, v2, v1)
    assert reg.champion_version() == v2 and reg.previous_champion_version() == v1
    assert "rolled_back_at" in reg.version_tags(v3)

    second = reg.rollback()
    assert (second.from_version, second.to_version, second.previous_champion) == (v2, v1, None)
    champion = reg.champion()
    assert champion is not None and champion[0] == v1
    dm = xgb.DMatrix(x, feature_names=["a", "b", "c"])
    np.testing.assert_array_equal(champion[1].predict(dm), b1.predict(dm))
    assert reg.previous_champion_version() is None

    with pytest.raises(NoPreviousChampionError):
        reg.rollback()
    assert reg.champion_version() == v1

    # a promotion after rollbacks is undone back to the restored champion, not the rolled-back one
    reg.promote(v3)
    assert reg.rollback().to_version == v1
    client = MlflowClient(tracking_uri=reg.resolved_tracking_uri())
    assert parse_history(client.get_registered_model("promoted_model").tags[HISTORY_TAG]) == [v1]
    assert not reg.promote(v1).changed  # re-promoting the champion changes nothing
    with pytest.raises(Exception, match="99"):  # noqa: B017 - MLflow's own error for an unknown version
        reg.promote("99")


def test_rollback_without_champion_is_refused(mlflow_data_dir: Path) -> None:
    reg = registry(mlflow_data_dir, "never_promoted")
    log_and_register(reg, seed=7)
    with pytest.raises(NoPreviousChampionError, match="no champion to roll back"):
        reg.rollback()


def test_undo_stack_functions() -> None:
    assert pushed([], None, "1") == ["1"]
    assert pushed(["1"], "1", "2") == ["1", "2"]
    assert pushed(["1", "2"], "2", "2") == ["1", "2"]  # re-promoting the champion is a no-op
    assert pushed(["1"], "5", "2") == ["1", "5", "2"]  # alias set by hand is remembered
    assert len(pushed([str(i) for i in range(100)], "99", "100")) == 100  # the stack is bounded
    assert popped(["1", "2", "3"], "3") == ("2", ["1", "2"])
    assert popped(["1", "2", "2"], "2") == ("1", ["1"])
    with pytest.raises(NoPreviousChampionError):
        popped(["1"], "1")
    assert previous_in(["1", "2"]) == "1" and previous_in(["2"]) is None and previous_in([]) is None
    assert parse_history(None) == [] and parse_history('["1","2"]') == ["1", "2"]
    with pytest.raises(ValueError, match="not a JSON list"):
        parse_history('{"1": 2}')


def test_a_copied_store_is_relocated(mlflow_data_dir: Path, tmp_path: Path) -> None:
    """An embedded store copied to another data folder points at the copied artifacts."""
    version, booster, x = log_and_register(registry(mlflow_data_dir, "moved_model"), seed=9)
    target = tmp_path / "new"
    shutil.copytree(mlflow_data_dir / "mlflow", target / "mlflow")
    changed = relocate_mlflow_store(target / "mlflow" / "mlflow.db", mlflow_data_dir, target)
    assert changed >= 2  # at least the experiment's artifact location and a run's
    moved = registry(target, "moved_model")
    client = moved.client()
    run_id = client.get_model_version("moved_model", version).run_id
    assert client.get_run(run_id).info.artifact_uri.startswith((target / "mlflow" / "artifacts").as_uri())
    assert client.get_experiment(moved.experiment_id()).artifact_location.startswith(target.as_uri())
    dm = xgb.DMatrix(x, feature_names=["a", "b", "c"])
    np.testing.assert_array_equal(moved.load_version(version).predict(dm), booster.predict(dm))
    assert relocate_mlflow_store(target / "mlflow" / "mlflow.db", mlflow_data_dir, target) == 0  # done once


def test_tags_set_on_versions_are_read_back_for_all_versions_at_once(mlflow_data_dir: Path) -> None:
    reg = registry(mlflow_data_dir, "tagged_model")
    (v1, _, _), (v2, _, _) = log_and_register(reg, seed=7), log_and_register(reg, seed=8)
    reg.set_version_tags(v1, {"offline_ne": "0.9", "offline_reference": "base_rate"})
    reg.promote(v1)
    tags = reg.tags_by_version()
    assert set(tags) == {v1, v2}
    assert tags[v1]["offline_ne"] == "0.9" and tags[v1]["offline_reference"] == "base_rate"
    assert PROMOTED_AT_TAG in tags[v1] and PROMOTED_AT_TAG not in tags[v2]
