"""Training on a Dask cluster against training on one machine, on the same rows.

``training_dask1`` and ``training_dask2``: :func:`clickloop.dask_training.fit_ctr_model_dask` on a
local cluster of 1 worker (2 threads) or 2 workers (1 thread each), worker processes started
before the timed block; the floor of both is :func:`clickloop.training.fit_ctr_model` on this
machine (2 threads), the same parameters as the ``training`` step (no search, exactly
:data:`~bench.steps_model.TRAIN_ROUNDS` rounds) on the same training set. The ratio is the cluster's
price on one machine (scheduling, partitioned matrices, the workers' allreduce); what a cluster
buys is memory and machines, not speed on 2 cores.

Only the standard library at module level (the parent imports this module).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.harness import Ctx
from bench.steps_model import FEATURES, TRAIN_ROUNDS, VALID_EVERY, feature_spec

#: cores of the machine the benchmark assumes (both sides use them all)
CORES = 2


def training_set_path(ctx: Ctx) -> Path:
    return ctx.work / "training_dask" / "training_set.parquet"


def dask_prepare(ctx: Ctx) -> None:
    """A ``training_set`` file of day D: every row for training, every
    :data:`~bench.steps_model.VALID_EVERY`-th row again for validation (as the ``training`` step)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clickloop.split import SPLIT_COLUMN, TRAIN, VALIDATION

    table = pq.read_table(ctx.table_path(FEATURES))
    valid = table.take(np.arange(0, table.num_rows, VALID_EVERY))
    both = pa.concat_tables(
        [
            table.append_column(SPLIT_COLUMN, pa.array([TRAIN] * table.num_rows)),
            valid.append_column(SPLIT_COLUMN, pa.array([VALIDATION] * valid.num_rows)),
        ]
    )
    target = training_set_path(ctx)
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(both, target, compression="zstd")


def _params(threads: int) -> Any:
    from clickloop.training import TrainingParams

    return TrainingParams(
        n_trials=0, num_boost_round=TRAIN_ROUNDS, early_stopping_rounds=TRAIN_ROUNDS, nthread=threads
    )


def _on_cluster(ctx: Ctx, workers: int) -> dict[str, object]:
    from distributed import Client, LocalCluster

    from clickloop.dask_training import fit_ctr_model_dask

    threads = CORES // workers
    started = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        startup = time.perf_counter() - started
        with ctx.timed():
            fit = fit_ctr_model_dask(
                client, feature_spec(), str(training_set_path(ctx)), _params(threads), 1.0
            )
    return {
        "workers": workers,
        "threads_per_worker": threads,
        "cluster_start_seconds": startup,
        "train_rows": fit.train_rows,
        "rounds": len(fit.final.curves["validation_logloss"]),
        "train_seconds": fit.final.seconds,
        "valid_logloss": fit.final.valid_logloss,
    }


def dask1_ours(ctx: Ctx) -> dict[str, object]:
    """``fit_ctr_model_dask`` on 1 worker process (2 threads)."""
    return _on_cluster(ctx, 1)


def dask2_ours(ctx: Ctx) -> dict[str, object]:
    """``fit_ctr_model_dask`` on 2 worker processes (1 thread each)."""
    return _on_cluster(ctx, 2)


def dask_floor(ctx: Ctx) -> dict[str, object]:
    """``fit_ctr_model`` on this machine (2 threads), from the same file, read inside the timing
    (the cluster reads it inside its timing too)."""
    from clickloop.training import fit_ctr_model, read_training_data

    with ctx.timed():
        train, valid = read_training_data(training_set_path(ctx))
        fit = fit_ctr_model(feature_spec(), train, valid, _params(CORES), 1.0)
    return {
        "train_rows": fit.train_rows,
        "rounds": len(fit.final.curves["validation_logloss"]),
        "train_seconds": fit.final.seconds,
        "valid_logloss": fit.final.valid_logloss,
    }


def dask_detail(row: dict[str, Any]) -> str:
    ours, floor = row["ours"]["info"], row["floor"]["info"] if row["floor"] else {}
    text = (
        f"{ours['train_rows']:,} rows, {ours['rounds']} rounds; {ours['workers']} worker(s) × "
        f"{ours['threads_per_worker']} thread(s): train {ours['train_seconds']:.1f} s, valid log loss "
        f"{ours['valid_logloss']:.5f} (cluster start {ours['cluster_start_seconds']:.1f} s, untimed)"
    )
    if floor:
        text += f"; one machine: train {floor['train_seconds']:.1f} s, valid log loss {floor['valid_logloss']:.5f}"
    return text
