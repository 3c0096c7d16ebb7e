"""The champion serving on a real MLflow registry and warehouse: no champion, no policy; with one, the
policy for a day uses the freshest statistics the ad server has."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clickloop.features import build_feature_stats
from clickloop.ranking import STATS_TABLE
from resources.contract import LogContractResource
from resources.serving import ChampionServing
from resources.tracking import ModelRegistry
from resources.warehouse import WarehouseResource
from tests.resources.conftest import tiny_booster


def test_policy_for_a_day(mlflow_data_dir: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(data_dir=str(mlflow_data_dir), registered_model_name="served_model")
    warehouse = WarehouseResource(data_dir=str(tmp_path / "data"))
    contract = LogContractResource()
    serving = ChampionServing(registry=registry, warehouse=warehouse, log_contract=contract)
    assert serving.policy_for("2026-10-05") is None  # the random policy serves until a promotion

    booster, _ = tiny_booster(3)
    version = registry.register(registry.log_training_run(booster, run_name="served", params={}, metrics={}))
    registry.promote(version)
    with pytest.raises(FileNotFoundError, match="no feature_stats partition on or before it"):
        serving.policy_for("2026-10-05")

    store = warehouse.get()
    with store.duckdb() as con:
        for key in ("2026-10-01", "2026-10-04", "2026-10-09"):
            build_feature_stats(con, contract.features(), key, [], store.partition_path(STATS_TABLE, key))
    policy = serving.policy_for("2026-10-05")
    assert (
        policy is not None and policy.model_version == version and policy.version == f"ctr_model-v{version}"
    )
    assert policy.stats_path == store.partition_path(STATS_TABLE, "2026-10-04")
    assert policy.spec == contract.features()
    dm_rows = np.random.default_rng(0).normal(size=(2, 3))
    assert policy.booster.inplace_predict(pd.DataFrame(dm_rows, columns=["a", "b", "c"])).shape == (2,)
    assert serving.policy_for("2026-10-09").stats_path == store.partition_path(STATS_TABLE, "2026-10-09")
