"""The model registry on a real MLflow SQLite store: runs, versions, promotion and rollback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from mlflow import MlflowClient

from resources.tracking import (
    HISTORY_TAG,
    ModelRegistry,
    NoPreviousChampionError,
    parse_history,
    popped,
    previous_in,
    pushed,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the module (creating its schema is the slow part)."""
    return tmp_path_factory.mktemp("tracking")


def registry(data_dir: Path, name: str) -> ModelRegistry:
    return ModelRegistry(data_dir=str(data_dir), registered_model_name=name)


def tiny_booster(seed: int) -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(np.float32)
    dtrain = xgb.DMatrix(x, label=y, feature_names=["a", "b", "c"])
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1, "seed": seed}, dtrain, 3)
    return booster, x


def log_and_register(reg: ModelRegistry, seed: int) -> tuple[str, xgb.Booster, np.ndarray]:
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
    )
    return reg.register(run, tags={"seed": str(seed)}), booster, x


def test_run_is_logged_with_params_metrics_importance_and_ubj_model(data_dir: Path) -> None:
    reg = registry(data_dir, "logged_model")
    version, booster, x = log_and_register(reg, seed=1)
    client = MlflowClient(tracking_uri=reg.resolved_tracking_uri())
    mv = client.get_model_version("logged_model", version)
    run = client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"eta": "0.3", "max_depth": "6"}
    assert run.data.metrics["valid_logloss"] == 0.5
    curve = client.get_metric_history(mv.run_id, "valid_logloss_curve")
    assert [m.step for m in curve] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(mv.run_id)}
    assert {"feature_importance.json", "feature_importance.csv", "search.json", "model"} <= artifacts
    model_files = {Path(a.path).name for a in client.list_artifacts(mv.run_id, "model")}
    assert "model.ubj" in model_files and "MLmodel" in model_files
    assert not any(f.endswith((".pkl", ".pickle")) for f in model_files)
    assert reg.resolved_tracking_uri() == f"sqlite:///{data_dir.resolve()}/mlflow/mlflow.db"
    assert (data_dir / "mlflow" / "artifacts").is_dir()

    reloaded = reg.load_version(version)
    dm = xgb.DMatrix(x, feature_names=["a", "b", "c"])
    np.testing.assert_array_equal(reloaded.predict(dm), booster.predict(dm))
    url = reg.run_url(mv.run_id)
    assert url.startswith("http://127.0.0.1:5000/#/experiments/") and url.endswith(mv.run_id)


def test_registration_creates_new_versions(data_dir: Path) -> None:
    reg = registry(data_dir, "versioned_model")
    v1, _, _ = log_and_register(reg, seed=2)
    v2, _, _ = log_and_register(reg, seed=3)
    assert (v1, v2) == ("1", "2")
    assert reg.versions() == ["1", "2"]
    assert reg.version_tags("2")["seed"] == "3"
    assert reg.champion() is None


def test_promote_and_roll_back_twice(data_dir: Path) -> None:
    reg = registry(data_dir, "promoted_model")
    versions = [log_and_register(reg, seed=s) for s in (4, 5, 6)]
    (v1, b1, x), (v2, _, _), (v3, _, _) = versions

    assert reg.promote(v1).previous_champion is None
    assert reg.previous_champion_version() is None
    assert reg.promote(v2).previous_champion == v1
    promotion = reg.promote(v3, reason="better NE")
    assert (promotion.version, promotion.previous_champion) == (v3, v2)
    assert reg.champion_version() == v3 and reg.previous_champion_version() == v2
    assert reg.version_tags(v3)["promotion_reason"] == "better NE"

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


def test_rollback_without_champion_is_refused(data_dir: Path) -> None:
    reg = registry(data_dir, "never_promoted")
    log_and_register(reg, seed=7)
    with pytest.raises(NoPreviousChampionError):
        reg.rollback()


def test_undo_stack_functions() -> None:
    assert pushed([], None, "1") == ["1"]
    assert pushed(["1"], "1", "2") == ["1", "2"]
    assert pushed(["1", "2"], "2", "2") == ["1", "2"]  # re-promoting the champion is a no-op
    assert pushed(["1"], "5", "2") == ["1", "5", "2"]  # alias set by hand is remembered
    assert popped(["1", "2", "3"], "3") == ("2", ["1", "2"])
    assert popped(["1", "2", "2"], "2") == ("1", ["1"])
    with pytest.raises(NoPreviousChampionError):
        popped(["1"], "1")
    assert previous_in(["1", "2"]) == "1" and previous_in(["2"]) is None
    assert parse_history(None) == [] and parse_history('["1","2"]') == ["1", "2"]


def test_rollback_command_restores_the_previous_champion(tmp_path: Path) -> None:
    """`make rollback` (python -m pipelines.rollback) on the store the code location uses."""
    reg = ModelRegistry(data_dir=str(tmp_path))  # the default registered model, as deployed
    first, _, _ = log_and_register(reg, seed=1)
    second, _, _ = log_and_register(reg, seed=2)
    reg.promote(first)
    reg.promote(second)
    env = {**os.environ, "CLICKLOOP_DATA_DIR": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "pipelines.rollback"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"from v{second} to v{first}" in done.stdout
    assert reg.champion_version() == first
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "nothing to roll back to" in again.stderr
    assert reg.champion_version() == first
