"""Shared fixtures of the resources tier: one real MLflow SQLite store per session (creating and
migrating its schema is the slow part; each test registers its own model name in it)."""

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb


@pytest.fixture(scope="session")
def mlflow_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow_store")


def tiny_booster(seed: int) -> tuple[xgb.Booster, np.ndarray]:
    """A three-round booster on three numeric features, and the rows it was trained on."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(np.float32)
    dtrain = xgb.DMatrix(x, label=y, feature_names=["a", "b", "c"])
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1, "seed": seed}, dtrain, 3)
    return booster, x
