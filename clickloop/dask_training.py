"""Training the CTR model on a Dask cluster: the same model as :func:`clickloop.training.fit_ctr_model`,
with the rows read and kept by the workers, never gathered on one machine.

* the sets are Dask dataframes read from their Parquet files (a path or a URL such as
  ``s3://bucket/...`` the workers can reach), one Dask partition per Parquet row group;
* the training categories are the sorted distinct values of the training rows, as on one machine
  (``pd.Categorical``), computed on the cluster; the validation rows are pinned to them;
* ``xgboost.dask``: ``DaskQuantileDMatrix`` of both splits (validation with ``ref`` = training),
  ``xgboost.dask.train`` with the same :func:`~clickloop.training.early_stopping` callback
  (validation log loss, best iteration kept), the same base score and validation base margin under
  negative downsampling, the same attributes stored in the booster
  (:func:`~clickloop.training.finish_booster`);
* the Optuna search trains on a sample of at most ``search_max_rows`` training rows (a Bernoulli
  sample per partition, so its size is near, not exactly, the bound) on the cluster too, and
  validates on the whole validation day, as on one machine.

The model is an ordinary :class:`xgboost.Booster`: it is saved, tracked and registered exactly as
one trained on one machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import xgboost as xgb
from distributed import Client
from xgboost import dask as xgb_dask

from clickloop.contract import LABEL, TIME
from clickloop.features import FeatureSpec
from clickloop.metrics import PROBABILITY_EPS, row_log_losses
from clickloop.model import correct_downsampled, to_model_frame
from clickloop.search import SearchChoice, TrialResult, search_with
from clickloop.split import SPLIT_COLUMN, TRAIN, VALIDATION
from clickloop.training import (
    FitResult,
    TrainedBooster,
    TrainingParams,
    base_params,
    early_stopping,
    finish_booster,
    leaf_min_weight,
    unscaled_recency_weights,
)


def read_set(
    source: str,
    columns: Sequence[str],
    split: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    min_partitions: int = 1,
) -> dd.DataFrame:
    """The ``columns`` of a set's Parquet file as a Dask dataframe, one partition per row group
    (at least ``min_partitions``: a small set is split so every worker gets rows); only the rows
    of ``split`` (``train``, ``validation``) when given."""
    wanted = list(dict.fromkeys([*columns, *([SPLIT_COLUMN] if split else [])]))
    frame = dd.read_parquet(
        source,
        columns=wanted,
        split_row_groups=True,
        filters=[(SPLIT_COLUMN, "==", split)] if split else None,
        storage_options=dict(storage_options or {}),
    )
    if split:  # the filter prunes row groups; this keeps exactly the split's rows
        frame = frame[frame[SPLIT_COLUMN] == split]
    # the partitions it will be computed in: Dask fuses small row groups once a filter and a
    # column selection shrink them (two row groups of a validation day became one, and a worker
    # of two got no validation rows: XGBoost refuses an empty worker with categorical features)
    frame = frame.optimize()
    if frame.npartitions < min_partitions:
        frame = frame.repartition(npartitions=min_partitions)
    return frame


#: the weight column of the model rows on the cluster
WEIGHT = "__weight"


@dataclass(frozen=True)
class DaskModelData:
    """Features (the model frame, partitioned), labels and (optionally) weights of one split, on the
    cluster."""

    features: dd.DataFrame
    labels: dd.Series
    weights: dd.Series | None = None


def spread(client: Client, frame: dd.DataFrame) -> dd.DataFrame:
    """``frame`` computed on the cluster, its partitions placed on the workers in turn (so every
    worker trains on rows, whatever the layout of the files it was read from)."""
    workers = sorted(client.nthreads())  # asks the scheduler (scheduler_info() may be stale)
    if not workers:
        raise RuntimeError(f"the Dask cluster at {client.scheduler.address} has no worker")
    parts = frame.to_delayed()
    futures = [
        client.compute(part, workers=[workers[i % len(workers)]], allow_other_workers=False)
        for i, part in enumerate(parts)
    ]
    return dd.from_delayed(futures, meta=frame._meta, verify_meta=False)


def dask_model_data(
    client: Client,
    spec: FeatureSpec,
    rows: dd.DataFrame,
    categories: Mapping[str, Sequence[str]],
    half_life_days: float = 0.0,
) -> DaskModelData:
    """The model frame of each partition (:func:`~clickloop.model.to_model_frame`, pinned to the
    training ``categories``), its labels and (with a recency half-life) its weights, partition by
    partition (so they stay aligned), held by the workers in turn (:func:`spread`)."""
    columns, categorical = list(spec.columns), list(spec.categorical)
    newest = None
    if half_life_days > 0:  # the newest day over every partition, then each partition's weights
        newest = np.datetime64(pd.Timestamp(rows[TIME].max().compute()).tz_localize(None), "D")

    def frame_of(part: pd.DataFrame) -> pd.DataFrame:
        frame = to_model_frame(part, columns, categorical, categories)
        frame[LABEL] = part[LABEL].to_numpy().astype(np.float32)
        if newest is not None:
            times = pd.to_datetime(part[TIME], utc=True).dt.tz_localize(None).to_numpy()
            frame[WEIGHT] = unscaled_recency_weights(times, half_life_days, newest)
        return frame

    model_rows = spread(client, rows.map_partitions(frame_of, meta=frame_of(rows._meta)))
    weights = None
    if newest is not None:
        weights = model_rows[WEIGHT]
        weights = spread(client, weights / weights.mean().compute())
    # what XGBoost reads is pinned too: the scheduler may hand a task derived from a partition to the
    # other worker (work stealing, on a busy machine), which then held both validation partitions and
    # the first none ("A worker cannot have empty input ... categorical features")
    return DaskModelData(spread(client, model_rows[columns]), spread(client, model_rows[LABEL]), weights)


def training_categories(spec: FeatureSpec, train: dd.DataFrame) -> tuple[dict[str, list[str]], float, int]:
    """(the sorted distinct values of each categorical feature, the CTR, the rows) of the training
    rows, in one pass over the cluster. The categories are those ``pd.Categorical`` gives on one
    machine: sorted, missing values left out."""
    uniques = [train[name].dropna().drop_duplicates() for name in spec.categorical]
    *values, ctr, rows = dask.compute(*uniques, train[LABEL].mean(), train[LABEL].count())
    categories = {
        name: sorted(str(v) for v in found) for name, found in zip(spec.categorical, values, strict=True)
    }
    empty = [name for name, found in categories.items() if not found]
    if empty:
        raise ValueError(f"categorical feature(s) {', '.join(empty)} have no value in the training rows")
    return categories, float(ctr), int(rows)


@dataclass
class DaskMatrices:
    """The training and validation matrices on the cluster, built once and shared by every trial."""

    client: Client
    train: xgb_dask.DaskQuantileDMatrix
    valid: xgb_dask.DaskQuantileDMatrix
    base_score: float | None
    rate: float
    categories: dict[str, list[str]]


def build_dask_matrices(
    client: Client,
    train: DaskModelData,
    valid: DaskModelData,
    categories: dict[str, list[str]],
    ctr: float,
    max_bin: int,
    rate: float,
) -> DaskMatrices:
    """As :func:`clickloop.training.build_matrices`: with downsampling (``rate`` < 1) the base score
    is the sample's CTR and the validation rows get logit(CTR) + log(rate) as base margin."""
    base_score, margin = None, None
    if rate < 1.0:
        base_score = float(np.clip(ctr, PROBABILITY_EPS, 1 - PROBABILITY_EPS))
        offset = math.log(base_score / (1.0 - base_score)) + math.log(rate)
        margin = (valid.labels * 0.0 + offset).astype(np.float32)
    dtrain = xgb_dask.DaskQuantileDMatrix(
        client, train.features, train.labels, weight=train.weights, max_bin=max_bin, enable_categorical=True
    )
    dvalid = xgb_dask.DaskQuantileDMatrix(
        client,
        valid.features,
        valid.labels,
        base_margin=margin,
        max_bin=max_bin,
        ref=dtrain,
        enable_categorical=True,
    )
    return DaskMatrices(client, dtrain, dvalid, base_score, rate, categories)


def train_dask_booster(
    matrices: DaskMatrices, params: Mapping[str, Any], num_boost_round: int, early_stopping_rounds: int
) -> TrainedBooster:
    """:func:`clickloop.training.train_booster` on the cluster: boost until the validation log
    loss stops improving; keep the rounds up to the best one."""
    full = dict(params)
    if matrices.base_score is not None:
        full["base_score"] = matrices.base_score
    start = time.perf_counter()
    output = xgb_dask.train(
        matrices.client,
        full,
        matrices.train,
        num_boost_round=num_boost_round,
        evals=[(matrices.train, TRAIN), (matrices.valid, VALIDATION)],
        callbacks=[early_stopping(early_stopping_rounds)],
        verbose_eval=False,
    )
    seconds = time.perf_counter() - start
    return finish_booster(
        output["booster"], full, output["history"], matrices.rate, matrices.categories, seconds
    )


def dask_validation_losses(
    client: Client, booster: xgb.Booster, valid: DaskModelData, rate: float
) -> np.ndarray:
    """Per-row validation log loss of a trial, predicted on the cluster from the validation frame
    (corrected for downsampling as the validation matrix's base margin is) and gathered here: one
    day of floats."""
    predicted = xgb_dask.inplace_predict(client, booster, valid.features)
    probabilities = correct_downsampled(np.asarray(predicted.compute()), rate)
    return row_log_losses(np.asarray(valid.labels.compute()), probabilities)


def fit_ctr_model_dask(
    client: Client,
    spec: FeatureSpec,
    training_set: str,
    params: TrainingParams,
    rate: float,
    storage_options: Mapping[str, Any] | None = None,
) -> FitResult:
    """:func:`clickloop.training.fit_ctr_model` on a Dask cluster, from the ``training_set`` Parquet
    file (path or URL): the search on a sample of the training rows, then the final model on
    every training row, both with early stopping on the validation day."""
    columns = [*spec.columns, LABEL, *([TIME] if params.recency_half_life_days > 0 else [])]
    workers = max(1, len(client.nthreads()))
    train_rows = read_set(training_set, columns, TRAIN, storage_options, workers)
    valid_rows = read_set(training_set, columns, VALIDATION, storage_options, workers)
    categories, ctr, n_train = training_categories(spec, train_rows)
    n_valid = int(valid_rows[LABEL].count().compute())
    if n_train == 0 or n_valid == 0:
        raise ValueError("training and validation sets must not be empty")
    train_data = dask_model_data(client, spec, train_rows, categories, params.recency_half_life_days)
    valid_data = dask_model_data(client, spec, valid_rows, categories)
    if train_data.weights is not None:  # the weighted CTR (the weights' mean is 1)
        ctr = float((train_data.labels * train_data.weights).mean().compute())
    matrices = build_dask_matrices(client, train_data, valid_data, categories, ctr, params.max_bin, rate)
    start = time.perf_counter()
    # recency weights have a mean of 1, so the rows' total weight is their count
    best: dict[str, Any] = base_params(params, leaf_min_weight(params, n_train, ctr))
    trials: list[TrialResult] = []
    choice: SearchChoice | None = None
    if params.n_trials > 0:
        search = matrices
        if 0 < params.search_max_rows < n_train:
            sample = train_rows.sample(frac=params.search_max_rows / n_train, random_state=params.seed)
            search = build_dask_matrices(
                client,
                dask_model_data(client, spec, sample, categories, params.recency_half_life_days),
                valid_data,
                categories,
                ctr,
                params.max_bin,
                rate,
            )
        best, trials, choice = search_with(
            lambda trial, rounds: train_dask_booster(search, trial, rounds, params.early_stopping_rounds),
            lambda trained: dask_validation_losses(client, trained.booster, valid_data, rate),
            best,
            params.n_trials,
            params.search_num_boost_round,
            params.seed,
            params.search_min_gain_se,
        )
    search_seconds = time.perf_counter() - start
    final = train_dask_booster(matrices, best, params.num_boost_round, params.early_stopping_rounds)
    return FitResult(final, trials, search_seconds, n_train, n_valid, choice)
