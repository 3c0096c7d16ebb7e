"""Training the XGBoost CTR model: matrices, early stopping, a small search, feature importance.

XGBoost (``hist``, native categoricals) with early stopping on the validation day; a small Optuna
search (the configured parameters are always the first trial, and keep their place unless a trial
beats them beyond the validation day's noise: :mod:`clickloop.search`) picks the parameters of the
final model, trained on every training row. With negative downsampling the booster's base score is fixed
to the sample's CTR and the validation rows get a base margin of logit(base score) + log(w), so
early stopping and the reported validation log loss are those of the corrected probability on real
traffic; the rate is stored in the model file (see :mod:`clickloop.model`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import xgboost as xgb

from clickloop.contract import LABEL, TIME
from clickloop.faults import fault_point
from clickloop.features import WEEKDAY, FeatureSpec
from clickloop.metrics import PROBABILITY_EPS, row_log_losses
from clickloop.model import CATEGORIES_ATTR, DOWNSAMPLING_ATTR, to_model_frame
from clickloop.search import NonFiniteModelError, SearchChoice, TrialResult, search_with
from clickloop.split import SPLIT_COLUMN, TRAIN, VALIDATION
from clickloop.storage import StoragePath, read_parquet

#: With ``min_child_weight`` unset, a leaf holds at least this share of the training rows' total
#: hessian, n × p(1 − p) at the training CTR. 1 %: at ``make run``'s 700,000 training rows that is
#: about 200, which its search had found best; a fixed 200 left the trees far too coarse at the
#: 40,000 rows of 3,000 requests a day (oracle capture 70-78 % against 84 % with about 15).
MIN_LEAF_HESSIAN_SHARE = 0.01
#: Weekday is a model input only when the training window holds each weekday at least twice. In a
#: 7-day window a weekday is one day: the model learns that day's level (the policy that served it,
#: a drift that began on it) as the weekday's effect and applies it again a week later. Measured on
#: ``ctr_drop`` at 20,000 requests a day: the model retrained after the drop over-predicted by 21 %
#: on the next Monday (weekday's mean SHAP +0.21 on that day, -0.04 on the others) and its
#: calibration, fitted on that Monday, under-predicted two days later (0.83). The simulated world
#: has no weekday effect; a real one is learned from two weeks of training days.
WEEKDAY_MIN_TRAIN_DAYS = 14


@dataclass(frozen=True)
class TrainingParams:
    """Everything that decides a training run besides the data."""

    #: most boosting rounds of the final model
    num_boost_round: int = 1000
    early_stopping_rounds: int = 30
    max_depth: int = 5
    learning_rate: float = 0.05
    #: the least hessian a leaf holds; None: a share :data:`MIN_LEAF_HESSIAN_SHARE` of the training
    #: rows' (:func:`leaf_min_weight`), so a leaf holds the same share of the data at any scale
    min_child_weight: float | None = None
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
    #: a searched configuration replaces the configured one only when its validation log loss is
    #: lower by more than this many standard errors of the paired per-row difference (0: the lowest
    #: loss wins). 3, not 2: the best of several trials is compared, and the validation day is the
    #: champion's own traffic, whose log loss is not the ranking's revenue (clickloop.search)
    search_min_gain_se: float = 3.0
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


def training_spec(spec: FeatureSpec, train_days: int) -> FeatureSpec:
    """The inputs a model trained on ``train_days`` days can learn: the contract's, weekday only
    from a window that holds each weekday twice (:data:`WEEKDAY_MIN_TRAIN_DAYS`)."""
    if train_days >= WEEKDAY_MIN_TRAIN_DAYS or WEEKDAY not in spec.time_features:
        return spec
    return replace(spec, time_features=tuple(f for f in spec.time_features if f != WEEKDAY))


def inputs_left_out(spec: FeatureSpec, train_days: int) -> str:
    """What :func:`training_spec` leaves out of ``spec`` for ``train_days`` days, and why ("none")."""
    kept = training_spec(spec, train_days).columns
    left_out = [c for c in spec.columns if c not in kept]
    if not left_out:
        return "none"
    return f"{', '.join(left_out)} ({train_days} training days hold each weekday at most once: it would name a day)"


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


def leaf_min_weight(params: TrainingParams, rows: float, ctr: float) -> float:
    """``min_child_weight`` for training rows of total weight ``rows`` and CTR ``ctr``: the
    configured one, else :data:`MIN_LEAF_HESSIAN_SHARE` of their hessian (at least 1)."""
    if params.min_child_weight is not None:
        return params.min_child_weight
    return max(1.0, MIN_LEAF_HESSIAN_SHARE * rows * ctr * (1.0 - ctr))


def base_params(params: TrainingParams, min_child_weight: float | None = None) -> dict[str, Any]:
    """XGBoost parameters (objective, hist, the tunable ones); ``min_child_weight`` resolved for the
    training rows (:func:`leaf_min_weight`) when the params leave it unset."""
    weight = params.min_child_weight if min_child_weight is None else min_child_weight
    if weight is None:
        raise ValueError("min_child_weight is unset: resolve it for the training rows (leaf_min_weight)")
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_bin": params.max_bin,
        "max_cat_to_onehot": params.max_cat_to_onehot,
        "max_depth": params.max_depth,
        "learning_rate": params.learning_rate,
        "min_child_weight": weight,
        "subsample": params.subsample,
        "colsample_bytree": params.colsample_bytree,
        "reg_lambda": params.reg_lambda,
        "nthread": params.nthread,
        "seed": params.seed,
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
            np.clip(np.average(train.labels, weights=train.weights), PROBABILITY_EPS, 1 - PROBABILITY_EPS)
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


def validation_losses(trained: TrainedBooster, matrices: Matrices) -> np.ndarray:
    """Per-row validation log loss of a trial (the validation matrix carries the downsampling
    correction as base margin, so these are losses of the probability on real traffic)."""
    return row_log_losses(matrices.valid.get_label(), trained.booster.predict(matrices.valid))


def search_params(
    matrices: Matrices,
    start: Mapping[str, Any],
    n_trials: int,
    num_boost_round: int,
    early_stopping_rounds: int,
    seed: int,
    min_gain_se: float = TrainingParams.search_min_gain_se,
) -> tuple[dict[str, Any], list[TrialResult], SearchChoice | None]:
    """A small Optuna (TPE) search over :data:`clickloop.search.TUNED`; the first trial is ``start``.

    Returns the chosen parameters (:func:`clickloop.search.search_with`), every trial, and the
    choice.
    """
    return search_with(
        lambda params, rounds: train_booster(matrices, params, rounds, early_stopping_rounds),
        lambda trained: validation_losses(trained, matrices),
        start,
        n_trials,
        num_boost_round,
        seed,
        min_gain_se,
    )


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
    #: which trial the final model took, and why (None without a search)
    choice: SearchChoice | None = None


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
    # recency weights have a mean of 1, so the rows' total weight is their count
    ctr = float(np.average(train_data.labels, weights=train_data.weights))
    best: dict[str, Any] = base_params(params, leaf_min_weight(params, train_data.rows, ctr))
    trials: list[TrialResult] = []
    choice: SearchChoice | None = None
    if params.n_trials > 0:
        search_data = sample_rows(train_data, params.search_max_rows, params.seed)
        search_matrices = (
            matrices
            if search_data is train_data
            else build_matrices(search_data, valid_data, params.max_bin, rate)
        )
        best, trials, choice = search_params(
            search_matrices,
            best,
            params.n_trials,
            params.search_num_boost_round,
            params.early_stopping_rounds,
            params.seed,
            params.search_min_gain_se,
        )
    search_seconds = time.perf_counter() - start
    final = train_booster(matrices, best, params.num_boost_round, params.early_stopping_rounds)
    fault_point("training.fitted")
    return FitResult(final, trials, search_seconds, train_data.rows, valid_data.rows, choice)
