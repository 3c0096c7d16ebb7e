"""Shared, expensive fixtures of the core tests: a warehouse with a time split and trained models."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import xgboost as xgb

from clickloop.model import ModelManifest, model_dir, save_booster, write_model_manifest
from clickloop.split import SplitManifest, SplitParams, TimeSplit, build_sets, set_path
from clickloop.storage import Warehouse
from clickloop.training import TrainingParams, fit_ctr_model, read_training_data
from tests.core.synthetic import KEYS, SPEC, write_features_days

DAYS = KEYS[:5]
ROWS_PER_DAY = 2500
# the small test data needs small leaves and a fast rate: pin them, whatever the defaults are
_SMALL_DATA = {"learning_rate": 0.3, "min_child_weight": 5.0, "reg_lambda": 1.0, "nthread": 1}
WEAK = TrainingParams(**_SMALL_DATA, n_trials=0, max_depth=1, num_boost_round=8)
STRONG = TrainingParams(
    **{**_SMALL_DATA, "learning_rate": 0.1},
    max_depth=6,
    n_trials=2,
    search_num_boost_round=40,
    num_boost_round=60,
)


@dataclass(frozen=True)
class Trained:
    """Five features days, the sets of a 2-day training window, and models trained on them."""

    warehouse: Warehouse
    split: SplitManifest
    #: version -> its manifest (v1 weak, v2 strong, v3 weak again)
    models: dict[str, ModelManifest]

    def booster(self, version: str) -> xgb.Booster:
        return xgb.Booster(model_file=str(self.warehouse.root / self.models[version].model_path))


def train_version(
    warehouse: Warehouse, split: TimeSplit, version: str, params: TrainingParams
) -> ModelManifest:
    train, valid = read_training_data(set_path(warehouse, "training_set"))
    fit = fit_ctr_model(SPEC, train, valid, params, rate=1.0)
    path = save_booster(fit.final.booster, model_dir(warehouse) / f"model-v{version}.ubj")
    return ModelManifest(
        version=version,
        run_id=f"run-{version}",
        model_path=str(path.relative_to(warehouse.root)),
        split=split,
        negative_downsampling_rate=1.0,
        best_iteration=fit.final.best_iteration,
        valid_logloss=fit.final.valid_logloss,
        params=fit.final.params,
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    warehouse = Warehouse(Path(tmp_path_factory.mktemp("trained")) / "data")
    write_features_days(warehouse, DAYS, ROWS_PER_DAY)
    split = TimeSplit(train=(DAYS[1], DAYS[2]), validation=DAYS[3], test=DAYS[4])
    manifest = build_sets(warehouse, split, SplitParams(train_days=2))
    models = {v: train_version(warehouse, split, v, p) for v, p in (("1", WEAK), ("2", STRONG), ("3", WEAK))}
    write_model_manifest(warehouse, models["1"])
    return Trained(warehouse, manifest, models)
