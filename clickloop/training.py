"""Training the XGBoost CTR model: matrices, early stopping, a small search, feature importance.

XGBoost (``hist``, native categoricals) with early stopping on the validation day; a small Optuna
search (the configured parameters are always the first trial) picks the parameters of the final
model, trained on every training row. With negative downsampling the booster's base score is fixed
to the sample's CTR and the validation rows get a base margin of logit(base score) + log(w), so
early stopping and the reported validation log loss are those of the corrected probability on real
traffic; the rate is stored in the model file (see :mod:`clickloop.model`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import xgboost as xgb

from clickloop.contract import LABEL, TIME
from clickloop.faults import fault_point
from clickloop.features import FeatureSpec
from clickloop.model import CATEGORIES_ATTR, DOWNSAMPLING_ATTR, to_model_frame
from clickloop.split import SPLIT_COLUMN, TRAIN, VALIDATION
from clickloop.storage import StoragePath, read_parquet

_PROBABILITY_EPS = 1e-7


@dataclass(frozen=True)
class TrainingParams:
    """Everything that decides a training run besides the data."""

    #: most boosting rounds of the final model
    num_boost_round: int = 1000
    early_stopping_rounds: int = 30
    max_depth: int = 5
    learning_rate: float = 0.05
    min_child_weight: float = 200.0
    subsample: float = 0.9
    colsample_bytree: float = 0.8
    reg_lambda: float = 10.0
    max_bin: int = 256
    max_cat_to_onehot: int = 4
    #: Optuna trials (the first is the configured parameters); 0 = none
    n_trials: int = 3
    #: most rounds per search trial
    search_num_boost_round: int = 400
    #: search trials train on a random sample of this many training rows (0 = all)
    search_max_rows: int = 200_000
    nthread: int = 2
    seed: int = 7
    #: training rows of a day this many days older than the newest training day weigh half as
    #: much (0 = every day alike): after a change the model follows the days after it sooner
    recency_half_life_days: float = 0.0


@dataclass(frozen=True)
class ModelData:
    """Features (the model frame), labels and (optionally) weights of one split."""

    features: pd.DataFrame
    labels: np.ndarray
    weights: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.labels)


def unscaled_recency_weights(times: np.ndarray, half_life_days: float, newest: np.datetime64) -> np.ndarray:
    """``0.5 ** (age / half_life_days)`` per row, the age in whole UTC days before ``newest``."""
    if half_life_days <= 0:
        raise ValueError(f"the recency half-life is a positive number of days, not {half_life_days}")
    age = (np.datetime64(newest, "D") - np.asarray(times).astype("datetime64[D]")).astype(np.float64)
    return np.power(0.5, age / half_life_days).astype(np.float32)


def recency_weights(times: np.ndarray, half_life_days: float) -> np.ndarray:
    """:func:`unscaled_recency_weights` before the newest row's day, scaled to a mean of 1 (so
    ``min_child_weight`` keeps its meaning)."""
    days = np.asarray(times).astype("datetime64[D]")
    if days.size == 0:
        return np.ones(0, dtype=np.float32)
    weights = unscaled_recency_weights(days, half_life_days, days.max())
    return weights / weights.mean()


def model_data(spec: FeatureSpec, table: pa.Table, half_life_days: float = 0.0) -> ModelData:
    """The model frame, labels and (with a recency half-life) weights of a features table
    (training categories: its own)."""
    frame = to_model_frame(table, spec.columns, spec.categorical)
    weights = None
    if half_life_days > 0:
        times = table.column(TIME).to_numpy(zero_copy_only=False)
        weights = recency_weights(times, half_life_days)
    return ModelData(frame, table.column(LABEL).to_numpy().astype(np.float32), weights)


def read_training_data(path: StoragePath) -> tuple[pa.Table, pa.Table]:
    """The training and validation rows of a ``training_set`` file."""
    table = read_parquet(path)
    part = table.column(SPLIT_COLUMN)
    return table.filter(pc.equal(part, TRAIN)), table.filter(pc.equal(part, VALIDATION))


def training_frames(
    spec: FeatureSpec, train: pa.Table, valid: pa.Table, half_life_days: float = 0.0
) -> tuple[ModelData, ModelData]:
    """Model frames of both splits (the training rows weighted by recency with a half-life);
    validation is pinned to the training categories and never weighted."""
    train_data = model_data(spec, train, half_life_days)
    categories = {c: list(train_data.features[c].cat.categories) for c in spec.categorical}
    valid_frame = to_model_frame(valid, spec.columns, spec.categorical, categories)
    return train_data, ModelData(valid_frame, valid.column(LABEL).to_numpy().astype(np.float32))


def base_params(params: TrainingParams) -> dict[str, Any]:
    """XGBoost parameters (objective, hist, the tunable ones)."""
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_bin": params.max_bin,
        "max_cat_to_onehot": params.max_cat_to_onehot,
        "max_depth": params.max_depth,
        "learning_rate": params.learning_rate,
        "min_child_weight": params.min_child_weight,
        "subsample": params.subsample,
        "colsample_bytree": params.colsample_bytree,
        "reg_lambda": params.reg_lambda,
        "nthread": params.nthread,
        "seed": params.seed,
    }


TUNED = ("max_depth", "learning_rate", "min_child_weight", "subsample", "colsample_bytree", "reg_lambda")


def suggest_params(trial: optuna.Trial) -> dict[str, Any]:
    """The search space of the tuned parameters."""
    return {
        "max_depth": trial.suggest_int("max_depth", 3, 8),
        "learning_rate": trial.suggest_float("learning_rate", 0.03, 0.3, log=True),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 500.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.6, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 0.1, 20.0, log=True),
    }


@dataclass
class Matrices:
    """The training and validation matrices, built once and shared by every trial."""

    train: xgb.DMatrix
    valid: xgb.DMatrix
    base_score: float | None
    rate: float
    #: the training categories per categorical feature (stored in every booster trained on them)
    categories: dict[str, list[str]] = field(default_factory=dict)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def build_matrices(train: ModelData, valid: ModelData, max_bin: int, rate: float) -> Matrices:
    """Quantised matrices with native categoricals; with downsampling (``rate`` < 1) the base
    score is fixed to the sample's CTR and the validation rows get the log(rate) correction as
    base margin, so validation metrics are those of the corrected probability."""
    dtrain = xgb.QuantileDMatrix(
        train.features, label=train.labels, weight=train.weights, enable_categorical=True, max_bin=max_bin
    )
    dvalid = xgb.QuantileDMatrix(
        valid.features, label=valid.labels, enable_categorical=True, max_bin=max_bin, ref=dtrain
    )
    base_score = None
    if rate < 1.0:
        ctr = float(
            np.clip(np.average(train.labels, weights=train.weights), _PROBABILITY_EPS, 1 - _PROBABILITY_EPS)
        )
        base_score = ctr
        dvalid.set_base_margin(np.full(valid.rows, _logit(ctr) + math.log(rate), dtype=np.float32))
    categories = {
        name: [str(v) for v in column.cat.categories]
        for name, column in train.features.items()
        if isinstance(column.dtype, pd.CategoricalDtype)
    }
    return Matrices(dtrain, dvalid, base_score, rate, categories)


@dataclass(frozen=True)
class TrainedBooster:
    """A booster cut at its best iteration, with its learning curves."""

    booster: xgb.Booster
    params: dict[str, Any]
    best_iteration: int
    valid_logloss: float
    curves: dict[str, list[float]]
    seconds: float


def train_booster(
    matrices: Matrices, params: Mapping[str, Any], num_boost_round: int, early_stopping_rounds: int
) -> TrainedBooster:
    """Boost until the validation log loss stops improving; keep the rounds up to the best one."""
    full = dict(params)
    if matrices.base_score is not None:
        full["base_score"] = matrices.base_score
    evals_result: dict[str, dict[str, list[float]]] = {}
    stopper = early_stopping(early_stopping_rounds)
    start = time.perf_counter()
    booster = xgb.train(
        full,
        matrices.train,
        num_boost_round=num_boost_round,
        evals=[(matrices.train, TRAIN), (matrices.valid, VALIDATION)],
        callbacks=[stopper],
        evals_result=evals_result,
        verbose_eval=False,
    )
    seconds = time.perf_counter() - start
    require_finite(booster, matrices, evals_result)
    return finish_booster(booster, full, evals_result, matrices.rate, matrices.categories, seconds)


def early_stopping(rounds: int) -> xgb.callback.EarlyStopping:
    """Stop when the validation log loss has not improved for ``rounds`` rounds; keep the best."""
    return xgb.callback.EarlyStopping(
        rounds=rounds, metric_name="logloss", data_name=VALIDATION, save_best=True
    )


def finish_booster(
    booster: xgb.Booster,
    params: dict[str, Any],
    evals_result: Mapping[str, Mapping[str, Sequence[float]]],
    rate: float,
    categories: Mapping[str, list[str]],
    seconds: float,
) -> TrainedBooster:
    """A booster cut at its best iteration (by :func:`early_stopping`), with the downsampling rate
    and the training categories stored in it, and its learning curves."""
    require_finite_losses(evals_result)
    booster.set_attr(**{DOWNSAMPLING_ATTR: repr(float(rate))})
    if categories:  # the cut at the best iteration lost XGBoost's own copy
        booster.set_attr(**{CATEGORIES_ATTR: json.dumps(dict(categories))})
    best = int(booster.best_iteration)
    return TrainedBooster(
        booster=booster,
        params=params,
        best_iteration=best,
        valid_logloss=float(evals_result[VALIDATION]["logloss"][best]),
        curves={f"{name}_logloss": list(map(float, d["logloss"])) for name, d in evals_result.items()},
        seconds=seconds,
    )


class NonFiniteModelError(ArithmeticError):
    """Training gave a non-finite loss or non-finite predictions: the model must not be saved."""


def require_finite_losses(evals_result: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
    """Fail on a non-finite loss in any round (a diverging learning rate, an overflowing feature),
    naming the set and the round."""
    for name, metrics in evals_result.items():
        for metric, values in metrics.items():
            bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
            if bad:
                raise NonFiniteModelError(
                    f"training diverged: {name} {metric} is {values[bad[0]]} from round {bad[0]} "
                    f"({len(bad)} of {len(values)} rounds non-finite)"
                )


def require_finite(
    booster: xgb.Booster, matrices: Matrices, evals_result: Mapping[str, Mapping[str, Sequence[float]]]
) -> None:
    """Fail on a non-finite loss in any round or a non-finite validation prediction."""
    require_finite_losses(evals_result)
    margins = booster.predict(matrices.valid, output_margin=True)
    bad_predictions = int(np.count_nonzero(~np.isfinite(margins)))
    if bad_predictions:
        raise NonFiniteModelError(
            f"training diverged: {bad_predictions:,} of {margins.size:,} validation predictions are not finite"
        )


@dataclass(frozen=True)
class TrialResult:
    number: int
    params: dict[str, Any]
    valid_logloss: float
    best_iteration: int
    seconds: float


def search_params(
    matrices: Matrices,
    start: Mapping[str, Any],
    n_trials: int,
    num_boost_round: int,
    early_stopping_rounds: int,
    seed: int,
) -> tuple[dict[str, Any], list[TrialResult]]:
    """A small Optuna (TPE) search over :data:`TUNED`; the first trial is ``start`` itself.

    Returns the best parameters (``start`` when ``n_trials`` is 0) and every trial.
    """
    return search_with(
        lambda params, rounds: train_booster(matrices, params, rounds, early_stopping_rounds),
        start,
        n_trials,
        num_boost_round,
        seed,
    )


def search_with(
    fit: Callable[[dict[str, Any], int], TrainedBooster],
    start: Mapping[str, Any],
    n_trials: int,
    num_boost_round: int,
    seed: int,
) -> tuple[dict[str, Any], list[TrialResult]]:
    """:func:`search_params` with any trainer: ``fit(params, num_boost_round)`` (one machine, or a
    Dask cluster, see :mod:`clickloop.dask_training`)."""
    if n_trials == 0:
        return dict(start), []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({k: start[k] for k in TUNED})
    results: list[TrialResult] = []

    def objective(trial: optuna.Trial) -> float:
        params = {**start, **suggest_params(trial)}
        try:
            fitted = fit(params, num_boost_round)
        except NonFiniteModelError as diverged:  # a diverging trial is skipped, not the search
            raise optuna.TrialPruned(str(diverged)) from diverged
        results.append(
            TrialResult(trial.number, params, fitted.valid_logloss, fitted.best_iteration, fitted.seconds)
        )
        return fitted.valid_logloss

    study.optimize(objective, n_trials=n_trials)
    return {**start, **study.best_params}, results


def feature_importance(booster: xgb.Booster) -> pd.DataFrame:
    """Total gain, share of gain, splits and mean gain per feature (features never split: 0)."""
    names = booster.feature_names or []
    total = booster.get_score(importance_type="total_gain")
    weight = booster.get_score(importance_type="weight")
    frame = pd.DataFrame(
        {
            "feature": names,
            "total_gain": [float(total.get(n, 0.0)) for n in names],
            "splits": [int(weight.get(n, 0)) for n in names],
        }
    )
    grand = frame["total_gain"].sum()
    frame["gain_share"] = frame["total_gain"] / grand if grand > 0 else 0.0
    frame["mean_gain"] = frame["total_gain"] / frame["splits"].where(frame["splits"] > 0)
    frame["mean_gain"] = frame["mean_gain"].fillna(0.0)
    return frame.sort_values(["total_gain", "feature"], ascending=[False, True], ignore_index=True)


def importance_markdown(importance: pd.DataFrame, top: int = 15) -> str:
    lines = ["| feature | gain share | total gain | splits |", "|---|---:|---:|---:|"]
    for row in importance.head(top).itertuples():
        lines.append(f"| {row.feature} | {row.gain_share:.1%} | {row.total_gain:.4g} | {row.splits:,} |")
    return "\n".join(lines)


def trials_markdown(trials: Sequence[TrialResult]) -> str:
    lines = ["| trial | valid log loss | best iter | " + " | ".join(TUNED) + " |"]
    lines.append("|---:|---:|---:|" + "---:|" * len(TUNED))
    for t in trials:
        values = " | ".join(f"{t.params[k]:.4g}" for k in TUNED)
        lines.append(f"| {t.number} | {t.valid_logloss:.5f} | {t.best_iteration} | {values} |")
    return "\n".join(lines)


def sample_rows(data: ModelData, max_rows: int, seed: int) -> ModelData:
    """A uniform random sample of at most ``max_rows`` rows, in their original order (0 = all)."""
    if max_rows == 0 or data.rows <= max_rows:
        return data
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(data.rows, size=max_rows, replace=False))
    weights = None if data.weights is None else data.weights[keep]
    return ModelData(data.features.iloc[keep].reset_index(drop=True), data.labels[keep], weights)


@dataclass(frozen=True)
class FitResult:
    final: TrainedBooster
    trials: list[TrialResult]
    search_seconds: float
    train_rows: int
    valid_rows: int


def fit_ctr_model(
    spec: FeatureSpec, train: pa.Table, valid: pa.Table, params: TrainingParams, rate: float
) -> FitResult:
    """Search the parameters (on a sample of the training rows when there are many), then train
    the final model on every training row (everything but I/O and tracking)."""
    train_data, valid_data = training_frames(spec, train, valid, params.recency_half_life_days)
    if train_data.rows == 0 or valid_data.rows == 0:
        raise ValueError("training and validation sets must not be empty")
    matrices = build_matrices(train_data, valid_data, params.max_bin, rate)
    start = time.perf_counter()
    best: dict[str, Any] = base_params(params)
    trials: list[TrialResult] = []
    if params.n_trials > 0:
        search_data = sample_rows(train_data, params.search_max_rows, params.seed)
        search_matrices = (
            matrices
            if search_data is train_data
            else build_matrices(search_data, valid_data, params.max_bin, rate)
        )
        best, trials = search_params(
            search_matrices,
            best,
            params.n_trials,
            params.search_num_boost_round,
            params.early_stopping_rounds,
            params.seed,
        )
    search_seconds = time.perf_counter() - start
    final = train_booster(matrices, best, params.num_boost_round, params.early_stopping_rounds)
    fault_point("training.fitted")
    return FitResult(final, trials, search_seconds, train_data.rows, valid_data.rows)
