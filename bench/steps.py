"""The ordered list of steps (:data:`STEPS`), what their floors are, and the notes of the report."""

from __future__ import annotations

from collections.abc import Sequence

from bench.harness import DUCKDB_MEMORY_LIMIT, DUCKDB_THREADS, HISTORY_DAYS, Step, size_label
from bench.refresh import (
    HISTORY_SIZE,
    LARGE_POINTS,
    refresh_detail,
    refresh_floor,
    refresh_ours,
    refresh_points,
    refresh_prepare,
)
from bench.steps_dask import dask1_ours, dask2_ours, dask_detail, dask_floor, dask_prepare
from bench.steps_logs import (
    ingest_clean_floor,
    ingest_clean_ours,
    ingest_clean_prepare,
    ingest_floor,
    ingest_ours,
    ingest_prepare,
    simulate_ours,
    write_floor,
    write_ours,
)
from bench.steps_model import (
    TRAIN_ROUNDS,
    VALID_EVERY,
    features_floor,
    features_ours,
    join_floor,
    join_ours,
    join_prepare,
    stats_floor,
    stats_ours,
    training_detail,
    training_floor,
    training_ours,
)
from bench.steps_ranker import (
    RANKER_CANDIDATES,
    RANKER_RATE,
    ranker_detail,
    ranker_floor,
    ranker_ours,
    ranker_points,
)
from bench.steps_serving import (
    DRIFT_SCALE,
    SCORING_CANDIDATES,
    SCORING_REPS,
    drift_detail,
    drift_floor,
    drift_ours,
    drift_points,
    drift_prepare,
    scoring_detail,
    scoring_floor,
    scoring_ours,
    scoring_points,
)
from bench.tiling import TILE_BASE

STEPS: list[Step] = [
    Step("simulate", "simulate day", simulate_ours, None, "none (no bare equivalent)"),
    Step(
        "write_logs",
        "write logs (jsonl.gz)",
        write_ours,
        write_floor,
        "DuckDB COPY of the clean frames to gzip JSON lines",
        needs=("simulate",),
    ),
    Step(
        "ingest",
        "ingest → Parquet + quarantine",
        ingest_ours,
        ingest_floor,
        "DuckDB read_json(ignore_errors) → COPY parquet",
        prepare=ingest_prepare,
        needs=("write_logs",),
    ),
    Step(
        "ingest_clean",
        "ingest, clean files",
        ingest_clean_ours,
        ingest_clean_floor,
        "pyarrow json.read_json → parquet.write_table (clean files: fault rates 0)",
        prepare=ingest_clean_prepare,
        needs=("simulate",),
    ),
    Step(
        "join",
        "ad_events join",
        join_ours,
        join_floor,
        "DuckDB imps LEFT JOIN first click per impression → parquet",
        prepare=join_prepare,
        needs=("ingest",),
    ),
    Step(
        "feature_stats",
        "feature stats (7-day window)",
        stats_ours,
        stats_floor,
        "DuckDB one GROUP BY per key, UNION ALL → parquet",
        needs=("join",),
    ),
    Step(
        "features",
        "features",
        features_ours,
        features_floor,
        "DuckDB equality LEFT JOINs to the stats → parquet",
        needs=("feature_stats",),
    ),
    Step(
        "training",
        f"training ({TRAIN_ROUNDS} rounds)",
        training_ours,
        training_floor,
        f"xgboost.QuantileDMatrix of the same model frame + xgboost.train, same params, "
        f"{TRAIN_ROUNDS} rounds, no evaluation sets (timed: DMatrix + train; clickloop's time is "
        "the whole fit_ctr_model from Arrow tables: model frames, train and validation matrices, "
        "training with train/validation log loss each round)",
        needs=("features",),
        detail=training_detail,
    ),
    Step(
        "training_dask1",
        f"training on Dask, 1 worker ({TRAIN_ROUNDS} rounds)",
        dask1_ours,
        dask_floor,
        "fit_ctr_model on this machine, same file, params and rounds (ratio: the cluster's price)",
        prepare=dask_prepare,
        needs=("features",),
        detail=dask_detail,
    ),
    Step(
        "training_dask2",
        f"training on Dask, 2 workers ({TRAIN_ROUNDS} rounds)",
        dask2_ours,
        dask_floor,
        "fit_ctr_model on this machine, same file, params and rounds (ratio: the cluster's price)",
        prepare=dask_prepare,
        needs=("features",),
        detail=dask_detail,
    ),
    Step(
        "scoring",
        "score 1 request × candidates (median)",
        scoring_ours,
        scoring_floor,
        "booster.inplace_predict of the already-built model frame (same model, same candidates); "
        f"median of {SCORING_REPS} calls after one warm-up, same on both sides",
        needs=("training",),
        points=scoring_points,
        detail=scoring_detail,
    ),
    Step(
        "ranker",
        f"/rank over HTTP, {RANKER_CANDIDATES} candidates (p50)",
        ranker_ours,
        ranker_floor,
        "RankingEngine.rank in-process on the same requests (no HTTP, JSON or validation), "
        "one call after another",
        needs=("training",),
        points=ranker_points,
        detail=ranker_detail,
    ),
    Step(
        "drift",
        "drift report",
        drift_ours,
        drift_floor,
        "Evidently Report([DriftedColumnsCount, ValueDrift per feature]) on the same samples, already "
        "pandas frames (no read, no prediction/target drift, no tests)",
        prepare=drift_prepare,
        needs=("features",),
        points=drift_points,
        detail=drift_detail,
    ),
    Step(
        "refresh",
        "daily refresh (3 runs)",
        refresh_ours,
        refresh_floor,
        "the sum of the floors of the same work on the same files: DuckDB read_json → Parquet, "
        "the bare join, GROUP BYs, LEFT JOINs, Evidently drift metrics on 20k-row samples",
        prepare=refresh_prepare,
        points=refresh_points,
        detail=refresh_detail,
    ),
]

NOTES: tuple[str, ...] = (
    "ratio = clickloop wall seconds / floor wall seconds, same files, same run; "
    f"DuckDB {DUCKDB_THREADS} threads and {DUCKDB_MEMORY_LIMIT} on both sides.",
    "peak = the child process's ru_maxrss (os.wait4): interpreter, imports (the clickloop core; "
    "Dagster too in the daily refresh) and loaded inputs included; RSS when the timed work "
    "started is in results.json.",
    "simulate: World construction is untimed; the simulator has no bare-library floor.",
    "write logs: clickloop renders ISO timestamps, injects faults and gzips at level 1; "
    "the floor writes the clean frames with DuckDB's own JSON and gzip defaults.",
    "ingest: clickloop's ingest_day (what the raw assets run): the files read in 64 MiB chunks of "
    "whole lines, typed by the log contract with its row rules, every line valid or quarantined "
    "with a reason, both written atomically. DuckDB's ignore_errors does not drop bad lines: a "
    "malformed line becomes an all-NULL row and a wrongly typed value NULL, without a reason. "
    "The floors type the contract's fields (clickloop/contracts/simulator.yaml) by hand.",
    "ingest, clean files: pyarrow.json.read_json stops at the first bad line, so this row reads "
    "day D written again with every fault rate at 0 (clicks folder: day D's own clicks only).",
    "ad_events join: days D-1, D and D+1 are simulated at the size; clickloop's join_events reads "
    "impressions D-1, D and clicks D-1, D, D+1 (dedup, the contract's attribution window, "
    "quarantine); the floor reads impressions D and clicks D, D+1.",
    f"feature stats: the {HISTORY_DAYS}-day window reuses day D's ad_events file under "
    f"{HISTORY_DAYS} keys (same file on both sides); clickloop's build_feature_stats takes its "
    "entities from the log contract and groups them in one GROUPING SETS query.",
    f"training: size = rows of day D's real features file (the features step's output at that "
    f"size); validation = every {VALID_EVERY}th row of the same file (fit_ctr_model needs one). "
    f"TrainingParams defaults with n_trials=0, num_boost_round={TRAIN_ROUNDS}, "
    f"early_stopping_rounds={TRAIN_ROUNDS} (cannot stop early; save_best may slice the returned "
    "model, training still runs every round); the floor trains with the params of clickloop's "
    "booster (base_params of those TrainingParams: hist, max_bin 256, depth 5, learning rate "
    "0.05, nthread 2, ...) on the model frame clickloop's model_data builds of the same rows.",
    f"scoring: measured once (first size) with min(size, {SCORING_CANDIDATES:,}) candidates: one "
    "simulated request of day D crossed with every ad of a World built with that many ads "
    "(candidate_frame, built untimed in the clickloop child); model: the training step's "
    f"({TRAIN_ROUNDS} rounds on day D at the first size); statistics: the feature stats step's "
    "file. ChampionPolicy.predict_ctr reads the statistics once into per-entity lookups "
    "(clickloop/lookup.py, in the untimed warm-up call), then per call looks the candidates' "
    "features up, builds the model frame and predicts in place. The size and s columns are the "
    "candidates and the median latency; ratio = ratio of medians.",
    f"ranker: the service (clickloop/service, uvicorn, one process) on the training step's model "
    f"and the feature stats step's file, loaded at {RANKER_RATE:.0f} requests/s open loop over "
    "loopback (latency from each request's due time) by 8 client threads in the measuring child, "
    "on the same 2 cores; size = candidates per request.",
    f"drift report: measured once (first size) at the day's rows and {DRIFT_SCALE}x as many; the "
    f"bigger file is day D's features repeated {DRIFT_SCALE} times with new impression_ids, the "
    "reference is day D's features once more with other ids (one file, where the asset reads "
    "the whole training window). Both sides get DriftParams' default sample size; clickloop's "
    "compute_drift also scores the served prediction and the click label (ValueDrift).",
    "daily refresh: what the schedule and its chain run after day D+1 ends, through Dagster "
    "(pipelines.cli.runner.LoopRunner, execute_in_process on a SQLite instance, the definitions "
    "of build_defs with a landing-folder log source and the in-process executor): ingest_job of "
    "D+1, events_job of D (join, features, GX checks, Evidently drift report, online metrics), "
    "feature_stats_job of D+2. D-1, D and D+1 have the size; the older history "
    f"{size_label(HISTORY_SIZE)} impressions a day (prepared through the same jobs, untimed). "
    f"Measured at every size of the run and at {' and '.join(map(size_label, LARGE_POINTS))}; days "
    f"over {size_label(TILE_BASE)} are copies of a simulated {size_label(TILE_BASE)} day with ids made "
    "unique per copy (bench/tiling.py). The floor: the bare "
    "libraries doing the same work one after the other on the same files (see bench/refresh.py); "
    "no checks, quarantine, accounting or run bookkeeping.",
)


def step_named(name: str) -> Step:
    for step in STEPS:
        if step.name == name:
            return step
    raise KeyError(f"no step {name!r}; steps: {[s.name for s in STEPS]}")


def required_steps(selected: Sequence[str]) -> list[Step]:
    """The selected steps and every step they need (transitively), in :data:`STEPS` order."""
    wanted: set[str] = set()
    pending = list(selected)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(step_named(name).needs)
    return [step for step in STEPS if step.name in wanted]
