"""The model: a time split of the features, then the XGBoost CTR model, tracked and registered."""

import json
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

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

from assets.compute import k8s_op_tags
from assets.guards import require_upstream_checks_passed
from clickloop.contract import LogContract
from clickloop.features import FeatureSpec
from clickloop.model import (
    CTR_MODEL,
    DOWNSAMPLING_ATTR,
    TEST_DAY_TAG,
    VALIDATION_DAY_TAG,
    ModelManifest,
    model_dir,
    save_booster,
    write_model_manifest,
)
from clickloop.presentation import significant
from clickloop.search import trials_markdown
from clickloop.split import (
    FEATURES,
    TEST,
    TEST_SET,
    TRAIN,
    TRAINING_SET,
    VALIDATION,
    SplitParams,
    build_sets,
    choose_split,
    read_split_manifest,
    set_path,
    split_markdown,
)
from clickloop.training import (
    TrainingParams,
    feature_importance,
    fit_ctr_model,
    importance_markdown,
    inputs_left_out,
    read_training_data,
    training_spec,
)
from resources.dask_cluster import DaskCluster
from resources.tracking import ModelRegistry
from resources.warehouse import WarehouseResource

_SPLIT = SplitParams()
_TRAINING = TrainingParams()
#: Every daily ``features`` key, in order; which exist is read from the warehouse.
ALL_FEATURES = AllPartitionMapping()


class TimeSplitConfig(Config):
    train_days: int = Field(
        default=_SPLIT.train_days, ge=1, description="Days of features in the training window."
    )
    test_day: str | None = Field(
        default=_SPLIT.test_day, description="The features partition used as test day; default: the latest."
    )
    negative_downsampling_rate: float = Field(
        default=_SPLIT.negative_downsampling_rate,
        gt=0.0,
        le=1.0,
        description="Share of non-clicks kept in the training days (1.0 = no downsampling).",
    )
    seed: int = Field(default=_SPLIT.seed, description="Seed of the downsampling hash.")

    def params(self) -> SplitParams:
        return SplitParams(**self.model_dump())


class CtrModelConfig(Config):
    num_boost_round: int = Field(
        default=_TRAINING.num_boost_round, ge=1, description="Most rounds of the final model."
    )
    early_stopping_rounds: int = Field(default=_TRAINING.early_stopping_rounds, ge=1)
    max_depth: int = Field(default=_TRAINING.max_depth, ge=1, le=16)
    learning_rate: float = Field(default=_TRAINING.learning_rate, gt=0.0, le=1.0)
    min_child_weight: float | None = Field(
        default=_TRAINING.min_child_weight,
        ge=0.0,
        description="Least hessian in a leaf; unset: 1 % of the training rows' (the same share of "
        "the data at any scale).",
    )
    subsample: float = Field(default=_TRAINING.subsample, gt=0.0, le=1.0)
    colsample_bytree: float = Field(default=_TRAINING.colsample_bytree, gt=0.0, le=1.0)
    reg_lambda: float = Field(default=_TRAINING.reg_lambda, ge=0.0)
    max_bin: int = Field(default=_TRAINING.max_bin, ge=2)
    max_cat_to_onehot: int = Field(default=_TRAINING.max_cat_to_onehot, ge=1)
    n_trials: int = Field(
        default=_TRAINING.n_trials,
        ge=0,
        description="Optuna trials (the first is the configured parameters).",
    )
    search_num_boost_round: int = Field(default=_TRAINING.search_num_boost_round, ge=1)
    search_max_rows: int = Field(
        default=_TRAINING.search_max_rows,
        ge=0,
        description="Search trials train on a sample of this many training rows (0 = all).",
    )
    search_min_gain_se: float = Field(
        default=_TRAINING.search_min_gain_se,
        ge=0.0,
        description="A searched configuration replaces the configured one only when its validation "
        "log loss is lower by more than this many standard errors of the paired per-row difference.",
    )
    nthread: int = Field(default=_TRAINING.nthread, ge=1)
    seed: int = _TRAINING.seed
    recency_half_life_days: float = Field(
        default=_TRAINING.recency_half_life_days,
        ge=0.0,
        description="A training day this many days older than the newest weighs half as much (0 = equal).",
    )

    def params(self) -> TrainingParams:
        return TrainingParams(**self.model_dump())


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
    op_tags=k8s_op_tags(TRAINING_SET),
)
def training_and_test_sets(
    context: AssetExecutionContext, config: TimeSplitConfig, warehouse: WarehouseResource
) -> Iterator[MaterializeResult]:
    """Split the ``features`` partitions by time: training window, validation day, test day."""
    store = warehouse.get()
    keys = context.asset_partition_keys_for_input(FEATURES)
    params = config.params()
    split = choose_split(keys, store.partition_keys(FEATURES), params.train_days, params.test_day)
    require_upstream_checks_passed(context, {FEATURES: split.keys})
    manifest = build_sets(store, split, params)
    context.log.info(f"time split {split.to_dict()}, downsampling {params.negative_downsampling_rate}")
    table = MetadataValue.md(split_markdown(manifest))
    summaries = manifest.summaries
    yield MaterializeResult(
        asset_key=TRAINING_SET,
        metadata={
            "dagster/row_count": summaries[TRAIN].rows + summaries[VALIDATION].rows,
            "train_days": MetadataValue.text(", ".join(split.train)),
            "validation_day": split.validation,
            "train_base_rate": round(manifest.train_base_rate, 5),
            "negative_downsampling_rate": params.negative_downsampling_rate,
            "split": table,
            "path": MetadataValue.path(str(set_path(store, TRAINING_SET))),
        },
    )
    yield MaterializeResult(
        asset_key=TEST_SET,
        metadata={
            "dagster/row_count": summaries[TEST].rows,
            "test_day": split.test,
            "test_ctr": round(summaries[TEST].ctr, 5),
            "split": table,
            "path": MetadataValue.path(str(set_path(store, TEST_SET))),
        },
    )


def ctr_model_asset(contract: LogContract):
    contract_spec = FeatureSpec.from_contract(contract)

    @asset(
        name=CTR_MODEL,
        deps=[TRAINING_SET],
        group_name="model",
        kinds={"xgboost", "mlflow"},
        tags={"clickloop/kind": "training"},
        op_tags=k8s_op_tags(CTR_MODEL),
        description="XGBoost CTR model: a small Optuna search, then the final model with early "
        "stopping on the validation day; saved in XGBoost's own format, tracked in MLflow and "
        "registered as a new version.",
    )
    def _ctr_model(
        context: AssetExecutionContext,
        config: CtrModelConfig,
        warehouse: WarehouseResource,
        model_registry: ModelRegistry,
        dask_cluster: DaskCluster,
    ) -> MaterializeResult:
        store = warehouse.get()
        params = config.params()
        split = read_split_manifest(store)
        rate = split.negative_downsampling_rate
        spec = training_spec(contract_spec, len(split.split.train))
        if dask_cluster.enabled:
            from clickloop.dask_training import fit_ctr_model_dask  # dask's import only where it trains

            with dask_cluster.client() as client:
                context.log.info(f"training on the Dask cluster at {dask_cluster.scheduler_address}")
                fit = fit_ctr_model_dask(client, spec, str(set_path(store, TRAINING_SET)), params, rate)
        else:
            train, valid = read_training_data(set_path(store, TRAINING_SET))
            fit = fit_ctr_model(spec, train, valid, params, rate)
        final = fit.final
        model_path = save_booster(final.booster, model_dir(store) / "model.ubj")
        importance = feature_importance(final.booster)
        run = model_registry.log_training_run(
            final.booster,
            run_name=f"ctr_model test={split.split.test}",
            params=_tracked_params(fit.final.params, params, split, spec),
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
            tags={"dagster.run_id": context.run_id, "clickloop.test_day": split.split.test},
            artifacts={
                "search_trials.json": json.dumps(
                    {
                        "trials": [asdict(t) for t in fit.trials],
                        "choice": None if fit.choice is None else asdict(fit.choice),
                    },
                    indent=2,
                    default=str,
                ),
                "split.json": split.to_json(),
            },
        )
        version = model_registry.register(
            run,
            tags={
                TEST_DAY_TAG: split.split.test,
                VALIDATION_DAY_TAG: split.split.validation,
                DOWNSAMPLING_ATTR: repr(split.negative_downsampling_rate),
                "dagster_run_id": context.run_id,
            },
        )
        write_model_manifest(
            store,
            ModelManifest(
                version=version,
                run_id=run.run_id,
                model_path=str(model_path.relative_to(store.root)),
                split=split.split,
                negative_downsampling_rate=split.negative_downsampling_rate,
                best_iteration=final.best_iteration,
                valid_logloss=final.valid_logloss,
                params=final.params,
            ),
        )
        context.log.info(
            f"ctr_model v{version}: best iteration {final.best_iteration}, valid log loss "
            f"{final.valid_logloss:.5f}, {fit.train_rows:,} rows in {final.seconds:.1f}s "
            f"(search {fit.search_seconds:.1f}s, {len(fit.trials)} trials"
            + ("" if fit.choice is None else f"; {fit.choice.text()}")
            + ")"
        )
        return MaterializeResult(
            metadata={
                "mlflow_run": MetadataValue.url(model_registry.run_url(run.run_id)),
                "model_version": version,
                "registered_model": MetadataValue.url(model_registry.model_version_url(version)),
                "best_iteration": final.best_iteration,
                "valid_logloss": significant(final.valid_logloss),
                "train_rows": fit.train_rows,
                "train_seconds": round(final.seconds, 1),
                "trained_on": dask_cluster.scheduler_address or "this machine",
                "inputs": MetadataValue.text(", ".join(spec.columns)),
                "inputs_left_out": MetadataValue.text(inputs_left_out(contract_spec, len(split.split.train))),
                "search_seconds": round(fit.search_seconds, 1),
                "negative_downsampling_rate": split.negative_downsampling_rate,
                "feature_importance": MetadataValue.md(importance_markdown(importance)),
                "search_trials": MetadataValue.md(trials_markdown(fit.trials, fit.choice)),
                "params": MetadataValue.json(dict(final.params)),
                "path": MetadataValue.path(str(model_path)),
            },
        )

    return _ctr_model


def _tracked_params(
    final: dict[str, Any], params: TrainingParams, split: Any, spec: FeatureSpec
) -> dict[str, Any]:
    return {
        **final,
        "num_boost_round": params.num_boost_round,
        "early_stopping_rounds": params.early_stopping_rounds,
        "n_trials": params.n_trials,
        "search_max_rows": params.search_max_rows,
        "negative_downsampling_rate": split.negative_downsampling_rate,
        "train_days": ",".join(split.split.train),
        "validation_day": split.split.validation,
        "test_day": split.split.test,
        "features": ",".join(spec.columns),
    }
