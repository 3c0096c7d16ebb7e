"""Training on a real Dask cluster (a ``dask scheduler`` and two ``dask worker`` processes on
127.0.0.1): the model of :func:`fit_ctr_model_dask` against :func:`fit_ctr_model` on the same sets.

Both use the same parameters, search, early stopping and downsampling correction; XGBoost's
distributed histogram (quantile sketches merged across workers) and the search's sample differ from
one machine's, so the test metrics are compared within a tolerance, not for equality:
log loss within :data:`LOG_LOSS_TOLERANCE` (relative) and AUC within :data:`AUC_TOLERANCE`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import materialize
from distributed import Client, wait

from assets.model import ctr_model_asset
from clickloop.contract import LABEL
from clickloop.contract_file import load_contract
from clickloop.dask_training import dask_model_data, dask_validation_losses, fit_ctr_model_dask, read_set
from clickloop.metrics import auc, log_loss
from clickloop.model import (
    DOWNSAMPLING_ATTR,
    load_booster,
    model_categories,
    predict_ctr,
    read_model_manifest,
)
from clickloop.split import (
    SPLIT_COLUMN,
    TEST_SET,
    TRAIN,
    TRAINING_SET,
    VALIDATION,
    SplitParams,
    TimeSplit,
    build_sets,
    set_path,
)
from clickloop.storage import Warehouse
from clickloop.training import TrainingParams, fit_ctr_model, read_training_data
from resources.dask_cluster import DaskCluster
from resources.tracking import ModelRegistry
from resources.warehouse import WarehouseResource
from tests.core.synthetic import KEYS, SPEC, write_features_days
from tests.e2e.cluster import dask_cluster

pytestmark = pytest.mark.e2e

#: relative difference of the test log loss, Dask against one machine
LOG_LOSS_TOLERANCE = 0.02
#: absolute difference of the test AUC
AUC_TOLERANCE = 0.02
ROWS_PER_DAY = 15_000
RATE = 0.5
PARAMS = TrainingParams(
    learning_rate=0.1,
    min_child_weight=None,  # resolved from the training rows on both paths (1 % of their hessian)
    reg_lambda=1.0,
    max_depth=5,
    num_boost_round=300,
    early_stopping_rounds=30,
    n_trials=1,
    search_num_boost_round=60,
    search_max_rows=8_000,
    nthread=1,
    recency_half_life_days=1.0,  # both paths weigh the newer training day twice the older
)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    """Five features days; training on two (non-clicks downsampled to half), then validation, test."""
    store = Warehouse(Path(tmp_path_factory.mktemp("dask")) / "data")
    days = KEYS[:5]
    write_features_days(store, days, ROWS_PER_DAY)
    split = TimeSplit(train=(days[1], days[2]), validation=days[3], test=days[4])
    build_sets(store, split, SplitParams(train_days=2, negative_downsampling_rate=RATE))
    return store


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler and two workers on 127.0.0.1 for the module; its address."""
    with dask_cluster(tmp_path_factory.mktemp("cluster"), workers=2) as address:
        yield address


def test_dask_training_matches_one_machine(warehouse: Warehouse, cluster: str) -> None:
    train, valid = read_training_data(set_path(warehouse, TRAINING_SET))
    single = fit_ctr_model(SPEC, train, valid, PARAMS, RATE)
    with Client(cluster) as client:
        start = time.perf_counter()
        distributed = fit_ctr_model_dask(client, SPEC, str(set_path(warehouse, TRAINING_SET)), PARAMS, RATE)
        seconds = time.perf_counter() - start
        # the model rows are held by both workers (what xgboost.dask trains each worker on)
        rows = read_set(
            str(set_path(warehouse, TRAINING_SET)), [*SPEC.columns, LABEL], TRAIN, min_partitions=2
        )
        data = dask_model_data(client, SPEC, rows, model_categories(single.final.booster))
        features = client.persist(data.features)
        wait(features)
        # spread pins the model rows' partitions to the workers in turn: both hold some (a column
        # selection computed from them may be gathered on one worker, so those keys are not asked)
        holders = {w for w, keys in client.has_what().items() if keys}
        assert len(holders) == 2, client.has_what()
        # the search's per-row validation losses (the noise rule pairs them): their mean is the
        # final model's validation log loss, downsampling correction included
        valid_rows = read_set(str(set_path(warehouse, TRAINING_SET)), [*SPEC.columns, LABEL], VALIDATION)
        valid_data = dask_model_data(client, SPEC, valid_rows, model_categories(single.final.booster))
        losses = dask_validation_losses(client, distributed.final.booster, valid_data, RATE)
    print(f"dask training: {seconds:.1f}s, one machine: search {single.search_seconds:.1f}s")

    assert (distributed.train_rows, distributed.valid_rows) == (single.train_rows, single.valid_rows)
    assert len(distributed.trials) == PARAMS.n_trials
    assert distributed.choice is not None and distributed.choice.trial == 0  # the only trial
    weight = single.final.params["min_child_weight"]
    assert weight > 1.0 and distributed.final.params["min_child_weight"] == pytest.approx(weight, rel=1e-3)
    assert len(losses) == distributed.valid_rows
    assert float(losses.mean()) == pytest.approx(distributed.final.valid_logloss, rel=1e-4)
    booster = distributed.final.booster
    # the model is the same kind of artefact: categories, downsampling rate, cut at the best iteration
    assert model_categories(booster) == model_categories(single.final.booster)
    assert booster.attr(DOWNSAMPLING_ATTR) == repr(RATE)
    assert booster.num_boosted_rounds() == distributed.final.best_iteration + 1
    assert distributed.final.valid_logloss == pytest.approx(
        min(distributed.final.curves["validation_logloss"])
    )
    assert len(distributed.final.curves["validation_logloss"]) < PARAMS.num_boost_round  # stopped early

    test = pq.read_table(set_path(warehouse, TEST_SET))
    labels = test.column(LABEL).to_numpy()
    ours, theirs = predict_ctr(booster, test), predict_ctr(single.final.booster, test)
    ll_dask, ll_single = log_loss(labels, ours), log_loss(labels, theirs)
    auc_dask, auc_single = auc(labels, ours), auc(labels, theirs)
    print(
        f"test log loss dask {ll_dask:.5f} single {ll_single:.5f}; AUC dask {auc_dask:.4f} single {auc_single:.4f}"
    )
    assert abs(ll_dask - ll_single) / ll_single < LOG_LOSS_TOLERANCE
    assert abs(auc_dask - auc_single) < AUC_TOLERANCE
    # calibrated on real traffic (the downsampling correction applied): mean prediction near the CTR
    assert ours.mean() == pytest.approx(labels.mean(), rel=0.15)


def test_the_model_asset_trains_on_the_cluster_and_registers(warehouse: Warehouse, cluster: str) -> None:
    """``ctr_model`` with ``dask_cluster`` set: trained on the workers, saved, tracked and
    registered as on one machine."""
    data = str(warehouse.root)
    result = materialize(
        [ctr_model_asset(load_contract())],
        resources={
            "warehouse": WarehouseResource(data_dir=data),
            "model_registry": ModelRegistry(data_dir=data),
            "dask_cluster": DaskCluster(scheduler_address=cluster),
        },
        run_config={"ops": {"ctr_model": {"config": {"n_trials": 0, "num_boost_round": 50}}}},
    )
    assert result.success
    metadata = result.asset_materializations_for_node("ctr_model")[0].metadata
    assert metadata["trained_on"].value == cluster
    model = read_model_manifest(warehouse)
    assert model.version == "1"
    booster = load_booster(warehouse.root / model.model_path)
    assert booster.attr(DOWNSAMPLING_ATTR) == repr(RATE)
    assert booster.num_boosted_rounds() == model.best_iteration + 1
    assert ModelRegistry(data_dir=data).versions() == ["1"]


def test_validation_rows_in_two_row_groups_reach_both_workers(
    warehouse: Warehouse, cluster: str, tmp_path: Path
) -> None:
    """Dask fuses row groups that a filter and a column selection shrink: a validation day split
    over two row groups became one partition, one worker of two had no validation rows, and
    XGBoost refused to train ("A worker cannot have empty input", seen in ``make bench``)."""
    table = pq.read_table(set_path(warehouse, TRAINING_SET))
    splits = table.column(SPLIT_COLUMN).to_pylist()
    n_valid = splits.count(VALIDATION)
    assert splits[-n_valid:] == [VALIDATION] * n_valid  # the validation rows come last
    path = tmp_path / "training_set.parquet"
    # the first row group ends halfway through the validation rows
    pq.write_table(table, path, row_group_size=table.num_rows - n_valid // 2)
    assert pq.ParquetFile(path).metadata.num_row_groups == 2
    rows = read_set(str(path), [*SPEC.columns, LABEL], VALIDATION, min_partitions=2)
    lengths = rows.map_partitions(len).compute().tolist()
    assert len(rows.to_delayed()) == len(lengths) >= 2 and min(lengths) > 0 and sum(lengths) == n_valid
    params = TrainingParams(n_trials=0, num_boost_round=20, early_stopping_rounds=20, nthread=1)
    with Client(cluster) as client:
        fit = fit_ctr_model_dask(client, SPEC, str(path), params, RATE)
    assert fit.valid_rows == n_valid and fit.final.booster.num_boosted_rounds() == 20
