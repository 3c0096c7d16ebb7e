"""Training set, test set and the XGBoost click-through-rate model.

``training_set`` and ``test_set`` are one split decision, so one multi-asset writes both:

* the test day is the latest ``features`` partition in the warehouse (or ``test_day``);
* the validation day (early stopping) is the partition just before it;
* the training window is the ``train_days`` partitions before the validation day.

The days come from the partition keys Dagster gives the dependency on ``features`` (an
``AllPartitionMapping``: every daily key, in order), never from date arithmetic; a missing partition
inside the window is an error, not a silent gap. Nothing of the test day is seen in training.

Negative downsampling (optional, ``negative_downsampling_rate`` = w < 1): the training days keep
every click and a fraction w of the non-clicks (a deterministic hash of the impression id, so a
rerun keeps the same rows). A model fitted on them predicts q, too high; the probability on real
traffic is p = q / (q + (1 - q) / w), i.e. logit(p) = logit(q) + log(w). The validation day is never
downsampled: the booster's base score is fixed to the sample's CTR and the validation rows get a
base margin of logit(base score) + log(w), so early stopping and the reported validation log loss
are those of the corrected probability on real traffic. The rate is stored in the model file (a
booster attribute), so :func:`predict_ctr` corrects wherever the model is loaded.

``ctr_model``: XGBoost (``hist``, native categoricals) with early stopping on the validation day;
a small Optuna search (the configured parameters are always the first trial) picks the parameters
of the final model. The model is saved in XGBoost's own UBJSON format (atomically) under
``<data_dir>/models/ctr_model/``, tracked as an MLflow run and registered as a new version.
"""

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xgboost as xgb
from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    AssetSpec,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)
from pydantic import Field

import duckdb

from assets.features import (
    CATEGORICAL_FEATURES,
    FEATURE_COLUMNS,
    LABEL,
    model_categories,
    to_model_frame,
)
from assets.guards import require_upstream_checks_passed
from resources.tracking import ModelRegistry
from resources.warehouse import (
    PARQUET_NAME,
    Warehouse,
    atomic_copy_query_to_parquet,
    atomic_write_bytes,
    parquet_list_sql,
)

FEATURES = "features"
TRAINING_SET = "training_set"
TEST_SET = "test_set"
CTR_MODEL = "ctr_model"
SPLIT_COLUMN = "split"
TRAIN = "train"
VALIDATION = "validation"
#: Booster attribute holding the negative downsampling rate w the model was trained with.
DOWNSAMPLING_ATTR = "negative_downsampling_rate"
#: Every daily ``features`` key, in order; which exist is read from the warehouse.
ALL_FEATURES = AllPartitionMapping()
_HASH_BUCKETS = 1_000_000
_PROBABILITY_EPS = 1e-7


# --- The time split -----------------------------------------------------------------------------


class TimeSplitConfig(Config):
    train_days: int = Field(
        default=7, ge=1, description="Days of features in the training window (before validation)."
    )
    test_day: str | None = Field(
        default=None,
        description="The features partition used as test day; default: the latest one that exists.",
    )
    negative_downsampling_rate: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Share of non-clicks kept in the training days (1.0 = no downsampling).",
    )
    seed: int = Field(default=7, description="Seed of the downsampling hash.")


@dataclass(frozen=True)
class TimeSplit:
    """Training days, then one validation day, then the test day (partition keys, in order)."""

    train: tuple[str, ...]
    validation: str
    test: str

    def __post_init__(self) -> None:
        ordered = (*self.train, self.validation, self.test)
        if list(ordered) != sorted(set(ordered)):
            raise ValueError(f"split days must be distinct and increasing: {ordered}")

    @property
    def keys(self) -> list[str]:
        return [*self.train, self.validation, self.test]

    def to_dict(self) -> dict[str, Any]:
        return {"train": list(self.train), "validation": self.validation, "test": self.test}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TimeSplit":
        return cls(train=tuple(data["train"]), validation=data["validation"], test=data["test"])


def choose_split(
    partition_keys: Sequence[str],
    available: Sequence[str],
    train_days: int,
    test_day: str | None = None,
) -> TimeSplit:
    """Pick the split from the ordered partition keys and the ones that exist.

    ``partition_keys`` is every key of the partitions definition, in order (consecutive days);
    the window is taken by position in it, so a missing day fails loudly instead of stretching
    the window. ``test_day`` defaults to the latest available key.
    """
    if train_days < 1:
        raise ValueError(f"train_days must be >= 1, not {train_days}")
    keys = list(partition_keys)
    present = set(available)
    if test_day is None:
        existing = [k for k in keys if k in present]
        if not existing:
            raise ValueError(f"no {FEATURES} partition exists yet: materialize some days first")
        test_day = existing[-1]
    if test_day not in keys:
        raise ValueError(f"test day {test_day} is not a partition key of {FEATURES}")
    position = keys.index(test_day)
    if position < train_days + 1:
        raise ValueError(
            f"test day {test_day} has {position} partition(s) before it; "
            f"{train_days} training day(s) + 1 validation day are needed"
        )
    split = TimeSplit(
        train=tuple(keys[position - 1 - train_days : position - 1]),
        validation=keys[position - 1],
        test=test_day,
    )
    missing = [k for k in split.keys if k not in present]
    if missing:
        raise ValueError(f"{FEATURES} partition(s) of the split are missing: {', '.join(missing)}")
    return split


# --- Negative downsampling ----------------------------------------------------------------------


def correct_downsampled(q: np.ndarray | float, rate: float) -> np.ndarray:
    """The probability on real traffic of a prediction ``q`` of a model trained with a share
    ``rate`` of the negatives: p = q / (q + (1 - q) / rate)."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"downsampling rate must be in (0, 1], not {rate}")
    q = np.asarray(q, dtype=np.float64)
    return q / (q + (1.0 - q) / rate)


def keep_row_sql(rate: float, seed: int, id_column: str = "impression_id") -> str:
    """A DuckDB predicate that keeps every click and a share ``rate`` of the non-clicks.

    The decision is a hash of (seed, impression id): deterministic across reruns and machines.
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"downsampling rate must be in (0, 1], not {rate}")
    if rate == 1.0:
        return "TRUE"
    threshold = int(round(rate * _HASH_BUCKETS))
    return (
        f"({LABEL} = 1 OR hash({id_column} || ':{int(seed)}') % {_HASH_BUCKETS} < {threshold})"
    )


# --- Building the sets --------------------------------------------------------------------------


@dataclass(frozen=True)
class SetSummary:
    """Rows and clicks of a split, before and after downsampling."""

    rows: int
    clicks: int
    rows_before_sampling: int
    clicks_before_sampling: int

    @property
    def ctr(self) -> float:
        return self.clicks / self.rows if self.rows else 0.0

    @property
    def ctr_before_sampling(self) -> float:
        return self.clicks_before_sampling / self.rows_before_sampling if self.rows_before_sampling else 0.0


def _count(con: duckdb.DuckDBPyConnection, relation: str, where: str = "TRUE") -> tuple[int, int]:
    rows, clicks = con.execute(
        f"SELECT count(*), coalesce(sum({LABEL}), 0) FROM {relation} WHERE {where}"
    ).fetchone()
    return int(rows), int(clicks)


def build_training_set(
    con: duckdb.DuckDBPyConnection,
    split: TimeSplit,
    paths: Mapping[str, Path],
    rate: float,
    seed: int,
    target: Path,
) -> dict[str, SetSummary]:
    """Write the training days (downsampled) and the validation day (never) to ``target``.

    ``paths`` maps each split key to its ``features`` Parquet file. Rows get a ``split`` column.
    """
    train = parquet_list_sql([paths[k] for k in split.train])
    valid = parquet_list_sql([paths[split.validation]])
    keep = keep_row_sql(rate, seed)
    sql = f"""
        SELECT *, '{TRAIN}' AS {SPLIT_COLUMN} FROM {train} WHERE {keep}
        UNION ALL BY NAME
        SELECT *, '{VALIDATION}' AS {SPLIT_COLUMN} FROM {valid}
        ORDER BY {SPLIT_COLUMN}, ts, impression_id
    """
    atomic_copy_query_to_parquet(con, sql, target)
    written = f"read_parquet('{target}')"
    summaries = {}
    for name, source in ((TRAIN, train), (VALIDATION, valid)):
        rows, clicks = _count(con, written, f"{SPLIT_COLUMN} = '{name}'")
        rows0, clicks0 = _count(con, source)
        summaries[name] = SetSummary(rows, clicks, rows0, clicks0)
    return summaries


def build_test_set(
    con: duckdb.DuckDBPyConnection, split: TimeSplit, paths: Mapping[str, Path], target: Path
) -> SetSummary:
    """Write the test day (every row, never downsampled) to ``target``."""
    source = parquet_list_sql([paths[split.test]])
    atomic_copy_query_to_parquet(con, f"SELECT * FROM {source} ORDER BY ts, impression_id", target)
    rows, clicks = _count(con, f"read_parquet('{target}')")
    return SetSummary(rows, clicks, rows, clicks)


def set_path(warehouse: Warehouse, asset_name: str) -> Path:
    """The one Parquet file of a non-partitioned set (``training_set`` or ``test_set``)."""
    return warehouse.root / asset_name / PARQUET_NAME


def split_manifest_path(warehouse: Warehouse) -> Path:
    """The split the current ``training_set`` and ``test_set`` were built with (JSON)."""
    return warehouse.root / TRAINING_SET / "split.json"


@dataclass(frozen=True)
class SplitManifest:
    """What the sets were built from: read by the model, the evaluation and the promotion gate."""

    split: TimeSplit
    negative_downsampling_rate: float
    seed: int
    train_base_rate: float
    summaries: dict[str, SetSummary] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "split": self.split.to_dict(),
                "negative_downsampling_rate": self.negative_downsampling_rate,
                "seed": self.seed,
                "train_base_rate": self.train_base_rate,
                "summaries": {k: asdict(v) for k, v in self.summaries.items()},
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> "SplitManifest":
        data = json.loads(text)
        return cls(
            split=TimeSplit.from_dict(data["split"]),
            negative_downsampling_rate=float(data["negative_downsampling_rate"]),
            seed=int(data["seed"]),
            train_base_rate=float(data["train_base_rate"]),
            summaries={k: SetSummary(**v) for k, v in data.get("summaries", {}).items()},
        )


def read_split_manifest(warehouse: Warehouse) -> SplitManifest:
    path = split_manifest_path(warehouse)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialize {TRAINING_SET}/{TEST_SET} first")
    return SplitManifest.from_json(path.read_text())


def split_markdown(manifest: SplitManifest) -> str:
    """The split as a Markdown table (days, rows, clicks, CTR)."""
    s = manifest.split
    days = {
        TRAIN: f"{s.train[0]} … {s.train[-1]} ({len(s.train)} d)",
        VALIDATION: s.validation,
        "test": s.test,
    }
    lines = ["| split | days | rows | clicks | CTR | rows before sampling |", "|---|---|---:|---:|---:|---:|"]
    for name, summary in manifest.summaries.items():
        lines.append(
            f"| {name} | {days[name]} | {summary.rows:,} | {summary.clicks:,} | {summary.ctr:.4f} "
            f"| {summary.rows_before_sampling:,} |"
        )
    return "\n".join(lines)


@multi_asset(
    specs=[
        AssetSpec(
            TRAINING_SET,
            deps=[AssetDep(FEATURES, partition_mapping=ALL_FEATURES)],
            description="The training days (optionally with negatives downsampled) and the "
            "validation day that follows them, in time order.",
            group_name="model",
            kinds={"parquet", "duckdb"},
        ),
        AssetSpec(
            TEST_SET,
            deps=[AssetDep(FEATURES, partition_mapping=ALL_FEATURES)],
            description="The test day: the features partition after the validation day.",
            group_name="model",
            kinds={"parquet", "duckdb"},
        ),
    ],
    can_subset=False,
)
def training_and_test_sets(
    context: AssetExecutionContext, config: TimeSplitConfig, warehouse: Warehouse
) -> Iterator[MaterializeResult]:
    """Split the ``features`` partitions by time: training window, validation day, test day."""
    keys = context.asset_partition_keys_for_input(FEATURES)
    available = [k for k in keys if warehouse.has_partition(FEATURES, k)]
    split = choose_split(keys, available, config.train_days, config.test_day)
    require_upstream_checks_passed(context, {FEATURES: split.keys})
    paths = dict(zip(split.keys, warehouse.require_partition_paths(FEATURES, split.keys)))
    train_path, test_path = set_path(warehouse, TRAINING_SET), set_path(warehouse, TEST_SET)
    with warehouse.duckdb() as con:
        summaries = build_training_set(
            con, split, paths, config.negative_downsampling_rate, config.seed, train_path
        )
        summaries["test"] = build_test_set(con, split, paths, test_path)
    manifest = SplitManifest(
        split=split,
        negative_downsampling_rate=config.negative_downsampling_rate,
        seed=config.seed,
        train_base_rate=summaries[TRAIN].ctr_before_sampling,
        summaries=summaries,
    )
    atomic_write_bytes(split_manifest_path(warehouse), manifest.to_json().encode())
    context.log.info(f"time split {split.to_dict()}, downsampling {config.negative_downsampling_rate}")
    table = MetadataValue.md(split_markdown(manifest))
    yield MaterializeResult(
        asset_key=TRAINING_SET,
        metadata={
            "dagster/row_count": summaries[TRAIN].rows + summaries[VALIDATION].rows,
            "train_days": MetadataValue.text(", ".join(split.train)),
            "validation_day": split.validation,
            "train_base_rate": manifest.train_base_rate,
            "negative_downsampling_rate": config.negative_downsampling_rate,
            "split": table,
            "path": MetadataValue.path(str(train_path)),
        },
    )
    yield MaterializeResult(
        asset_key=TEST_SET,
        metadata={
            "dagster/row_count": summaries["test"].rows,
            "test_day": split.test,
            "test_ctr": summaries["test"].ctr,
            "split": table,
            "path": MetadataValue.path(str(test_path)),
        },
    )


# --- Training -----------------------------------------------------------------------------------


class CtrModelConfig(Config):
    num_boost_round: int = Field(default=1000, ge=1, description="Most boosting rounds of the final model.")
    early_stopping_rounds: int = Field(default=30, ge=1)
    max_depth: int = Field(default=5, ge=1, le=16)
    learning_rate: float = Field(default=0.05, gt=0.0, le=1.0)
    min_child_weight: float = Field(default=200.0, ge=0.0)
    subsample: float = Field(default=0.9, gt=0.0, le=1.0)
    colsample_bytree: float = Field(default=0.8, gt=0.0, le=1.0)
    reg_lambda: float = Field(default=10.0, ge=0.0)
    max_bin: int = Field(default=256, ge=2)
    max_cat_to_onehot: int = Field(default=4, ge=1)
    n_trials: int = Field(
        default=3, ge=0, description="Optuna trials (the first is the configured parameters); 0 = none."
    )
    search_num_boost_round: int = Field(default=400, ge=1, description="Most rounds per search trial.")
    search_max_rows: int = Field(
        default=200_000,
        ge=0,
        description="Search trials train on a random sample of this many training rows (0 = all); "
        "the final model trains on all of them.",
    )
    nthread: int = Field(default=2, ge=1)
    seed: int = 7


@dataclass(frozen=True)
class ModelData:
    """Features (the model frame) and labels of one split."""

    features: pd.DataFrame
    labels: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.labels)


def model_data(table: pa.Table) -> ModelData:
    """The model frame and labels of a features table (training categories: its own)."""
    return ModelData(to_model_frame(table), table.column(LABEL).to_numpy().astype(np.float32))


def read_training_data(path: Path) -> tuple[pa.Table, pa.Table]:
    """The training and validation rows of a ``training_set`` file."""
    table = pq.read_table(path)
    part = table.column(SPLIT_COLUMN)
    return table.filter(pc.equal(part, TRAIN)), table.filter(pc.equal(part, VALIDATION))


def training_frames(train: pa.Table, valid: pa.Table) -> tuple[ModelData, ModelData]:
    """Model frames of both splits; validation is pinned to the training categories."""
    train_data = model_data(train)
    categories = {c: list(train_data.features[c].cat.categories) for c in CATEGORICAL_FEATURES}
    valid_frame = to_model_frame(valid, categories)
    return train_data, ModelData(valid_frame, valid.column(LABEL).to_numpy().astype(np.float32))


def base_params(config: CtrModelConfig) -> dict[str, Any]:
    """XGBoost parameters from the config (objective, hist, the tunable ones)."""
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_bin": config.max_bin,
        "max_cat_to_onehot": config.max_cat_to_onehot,
        "max_depth": config.max_depth,
        "learning_rate": config.learning_rate,
        "min_child_weight": config.min_child_weight,
        "subsample": config.subsample,
        "colsample_bytree": config.colsample_bytree,
        "reg_lambda": config.reg_lambda,
        "nthread": config.nthread,
        "seed": config.seed,
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


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def build_matrices(train: ModelData, valid: ModelData, max_bin: int, rate: float) -> Matrices:
    """Quantised matrices with native categoricals; with downsampling (``rate`` < 1) the base
    score is fixed to the sample's CTR and the validation rows get the log(rate) correction as
    base margin, so validation metrics are those of the corrected probability."""
    dtrain = xgb.QuantileDMatrix(
        train.features, label=train.labels, enable_categorical=True, max_bin=max_bin
    )
    dvalid = xgb.QuantileDMatrix(
        valid.features, label=valid.labels, enable_categorical=True, max_bin=max_bin, ref=dtrain
    )
    base_score = None
    if rate < 1.0:
        ctr = float(np.clip(train.labels.mean(), _PROBABILITY_EPS, 1 - _PROBABILITY_EPS))
        base_score = ctr
        dvalid.set_base_margin(np.full(valid.rows, _logit(ctr) + math.log(rate), dtype=np.float32))
    return Matrices(dtrain, dvalid, base_score, rate)


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
    stopper = xgb.callback.EarlyStopping(
        rounds=early_stopping_rounds, metric_name="logloss", data_name=VALIDATION, save_best=True
    )
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
    booster.set_attr(**{DOWNSAMPLING_ATTR: repr(float(matrices.rate))})
    best = int(booster.best_iteration)
    return TrainedBooster(
        booster=booster,
        params=full,
        best_iteration=best,
        valid_logloss=float(evals_result[VALIDATION]["logloss"][best]),
        curves={f"{name}_logloss": list(map(float, d["logloss"])) for name, d in evals_result.items()},
        seconds=seconds,
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
    if n_trials == 0:
        return dict(start), []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({k: start[k] for k in TUNED})
    results: list[TrialResult] = []

    def objective(trial: optuna.Trial) -> float:
        params = {**start, **suggest_params(trial)}
        fitted = train_booster(matrices, params, num_boost_round, early_stopping_rounds)
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


# --- Saving and predicting ----------------------------------------------------------------------


def model_dir(warehouse: Warehouse) -> Path:
    return warehouse.root / "models" / CTR_MODEL


def save_booster(booster: xgb.Booster, target: Path) -> Path:
    """Save in XGBoost's own format (UBJSON for ``.ubj``, JSON for ``.json``), atomically."""
    suffix = target.suffix.lstrip(".")
    if suffix not in ("ubj", "json"):
        raise ValueError(f"model files are .ubj or .json, not {target.name}")
    return atomic_write_bytes(target, bytes(booster.save_raw(raw_format=suffix)))


def load_booster(path: Path) -> xgb.Booster:
    return xgb.Booster(model_file=str(path))


def downsampling_rate_of(booster: xgb.Booster) -> float:
    """The negative downsampling rate stored in a model (1.0 when it has none)."""
    value = booster.attr(DOWNSAMPLING_ATTR)
    return 1.0 if value is None else float(value)


def predict_ctr(booster: xgb.Booster, table: pa.Table) -> np.ndarray:
    """Click probabilities on real traffic for rows of a features table.

    The frame is pinned to the model's categories (unseen ones become missing) and the prediction
    is corrected for the model's negative downsampling.
    """
    frame = to_model_frame(table, model_categories(booster) or None)
    raw = booster.inplace_predict(frame[booster.feature_names or list(FEATURE_COLUMNS)])
    return correct_downsampled(np.asarray(raw, dtype=np.float64), downsampling_rate_of(booster))


@dataclass(frozen=True)
class ModelManifest:
    """The latest trained model: what ``model_evaluation`` and the gate read."""

    version: str
    run_id: str
    model_path: str
    split: TimeSplit
    negative_downsampling_rate: float
    best_iteration: int
    valid_logloss: float
    params: dict[str, Any]

    def to_json(self) -> str:
        data = asdict(self)
        data["split"] = self.split.to_dict()
        return json.dumps(data, indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> "ModelManifest":
        data = json.loads(text)
        data["split"] = TimeSplit.from_dict(data["split"])
        return cls(**data)


def manifest_path(warehouse: Warehouse) -> Path:
    return model_dir(warehouse) / "manifest.json"


def read_model_manifest(warehouse: Warehouse) -> ModelManifest:
    path = manifest_path(warehouse)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialize {CTR_MODEL} first")
    return ModelManifest.from_json(path.read_text())


def sample_rows(data: ModelData, max_rows: int, seed: int) -> ModelData:
    """A uniform random sample of at most ``max_rows`` rows, in their original order (0 = all)."""
    if max_rows == 0 or data.rows <= max_rows:
        return data
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(data.rows, size=max_rows, replace=False))
    return ModelData(data.features.iloc[keep].reset_index(drop=True), data.labels[keep])


@dataclass(frozen=True)
class FitResult:
    final: TrainedBooster
    trials: list[TrialResult]
    search_seconds: float
    train_rows: int
    valid_rows: int


def fit_ctr_model(train: pa.Table, valid: pa.Table, config: CtrModelConfig, rate: float) -> FitResult:
    """Search the parameters (on a sample of the training rows when there are many), then train
    the final model on every training row (everything but I/O and tracking)."""
    train_data, valid_data = training_frames(train, valid)
    if train_data.rows == 0 or valid_data.rows == 0:
        raise ValueError("training and validation sets must not be empty")
    matrices = build_matrices(train_data, valid_data, config.max_bin, rate)
    start = time.perf_counter()
    search_data = sample_rows(train_data, config.search_max_rows, config.seed)
    search_matrices = (
        matrices
        if search_data is train_data
        else build_matrices(search_data, valid_data, config.max_bin, rate)
    )
    best, trials = search_params(
        search_matrices,
        base_params(config),
        config.n_trials,
        config.search_num_boost_round,
        config.early_stopping_rounds,
        config.seed,
    )
    search_seconds = time.perf_counter() - start
    final = train_booster(matrices, best, config.num_boost_round, config.early_stopping_rounds)
    return FitResult(final, trials, search_seconds, train_data.rows, valid_data.rows)


def _tracked_params(fit: FitResult, manifest: SplitManifest, config: CtrModelConfig) -> dict[str, Any]:
    return {
        **fit.final.params,
        "num_boost_round": config.num_boost_round,
        "early_stopping_rounds": config.early_stopping_rounds,
        "n_trials": config.n_trials,
        "search_max_rows": config.search_max_rows,
        "negative_downsampling_rate": manifest.negative_downsampling_rate,
        "train_days": ",".join(manifest.split.train),
        "validation_day": manifest.split.validation,
        "test_day": manifest.split.test,
        "features": ",".join(FEATURE_COLUMNS),
    }


@asset(
    deps=[TRAINING_SET],
    group_name="model",
    kinds={"xgboost", "mlflow"},
)
def ctr_model(
    context: AssetExecutionContext,
    config: CtrModelConfig,
    warehouse: Warehouse,
    model_registry: ModelRegistry,
) -> MaterializeResult:
    """XGBoost CTR model: Optuna search, then the final model with early stopping on the
    validation day; saved as UBJSON, tracked in MLflow and registered as a new version."""
    split_manifest = read_split_manifest(warehouse)
    train, valid = read_training_data(set_path(warehouse, TRAINING_SET))
    fit = fit_ctr_model(train, valid, config, split_manifest.negative_downsampling_rate)
    final = fit.final
    model_path = save_booster(final.booster, model_dir(warehouse) / "model.ubj")
    importance = feature_importance(final.booster)
    run = model_registry.log_training_run(
        final.booster,
        run_name=f"ctr_model test={split_manifest.split.test}",
        params=_tracked_params(fit, split_manifest, config),
        metrics={
            "valid_logloss": final.valid_logloss,
            "best_iteration": final.best_iteration,
            "train_rows": fit.train_rows,
            "valid_rows": fit.valid_rows,
            "train_seconds": final.seconds,
            "search_seconds": fit.search_seconds,
        },
        metric_history=final.curves,
        feature_importance=importance,
        tags={"dagster.run_id": context.run_id, "clickloop.test_day": split_manifest.split.test},
        artifacts={
            "search_trials.json": json.dumps([asdict(t) for t in fit.trials], indent=2, default=str),
            "split.json": split_manifest.to_json(),
        },
    )
    version = model_registry.register(
        run,
        tags={
            "test_day": split_manifest.split.test,
            DOWNSAMPLING_ATTR: repr(split_manifest.negative_downsampling_rate),
            "dagster_run_id": context.run_id,
        },
    )
    manifest = ModelManifest(
        version=version,
        run_id=run.run_id,
        model_path=str(model_path),
        split=split_manifest.split,
        negative_downsampling_rate=split_manifest.negative_downsampling_rate,
        best_iteration=final.best_iteration,
        valid_logloss=final.valid_logloss,
        params=final.params,
    )
    atomic_write_bytes(manifest_path(warehouse), manifest.to_json().encode())
    context.log.info(
        f"ctr_model v{version}: best iteration {final.best_iteration}, valid log loss "
        f"{final.valid_logloss:.5f}, {fit.train_rows:,} rows in {final.seconds:.1f}s "
        f"(search {fit.search_seconds:.1f}s, {len(fit.trials)} trials)"
    )
    return MaterializeResult(
        metadata={
            "mlflow_run": MetadataValue.url(model_registry.run_url(run.run_id)),
            "model_version": version,
            "registered_model": MetadataValue.url(model_registry.model_version_url(version)),
            "best_iteration": final.best_iteration,
            "valid_logloss": final.valid_logloss,
            "train_rows": fit.train_rows,
            "train_seconds": final.seconds,
            "search_seconds": fit.search_seconds,
            "negative_downsampling_rate": split_manifest.negative_downsampling_rate,
            "feature_importance": MetadataValue.md(importance_markdown(importance)),
            "search_trials": MetadataValue.md(trials_markdown(fit.trials)),
            "params": MetadataValue.json({k: v for k, v in final.params.items()}),
            "path": MetadataValue.path(str(model_path)),
        },
    )
