"""The ``refresh`` step: one whole daily refresh through Dagster, next to the sum of its
bare-library floors on the same files.

The refresh is what the daily schedule and its chain run after day D+1 ends: ``ingest_job`` of D+1
(typed Parquet, quarantine, blocking GX checks), ``events_job`` of D (the join, features with their
GX check, the Evidently drift report and the online metrics) and ``feature_stats_job`` of D+2, each
run by ``pipelines.cli.runner.LoopRunner`` (``execute_in_process``) on a SQLite instance, with the
definitions of a deployment that reads a landing folder: ``pipelines.definitions.build_defs`` of
hand-built :class:`pipelines.settings.Settings` (log source ``landing``, in-process executor, the
benchmark's DuckDB settings). Days D-1, D and D+1 have the measured size; the older history (D-9 ..
D-2, which the feature window reads) has :data:`HISTORY_SIZE` impressions per day. All of it is
simulated, ingested and joined through the same jobs, untimed, by the step's ``prepare``.

The floor does the same work with the bare libraries, one after the other in one timed block:
DuckDB ``read_json`` → Parquet of D+1's logs; the join of D's impressions to their first click;
the window's GROUP BYs; the features' LEFT JOINs; Evidently's drift metrics on 20,000-row
samples. No checks, quarantine, accounting, ordering, atomic writes or run bookkeeping.

Only the standard library at module level: the benchmark's parent process imports this module.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import (
    DUCKDB_MEMORY_LIMIT,
    DUCKDB_THREADS,
    RAW_TABLES,
    SEED,
    Ctx,
    bench_settings,
    floor_connection,
    sql_list,
)
from bench.steps_logs import log_files, raw_columns
from bench.steps_model import (
    AD_EVENTS,
    FEATURE_STATS,
    FEATURES,
    feature_spec,
    features_floor_sql,
    stats_floor_sql,
)
from bench.tiling import TILE_BASE, tile_files

#: Impressions per day of the history older than D-1 (only the feature window reads it).
HISTORY_SIZE = 100_000
#: Days before D the history starts at (the feature window of D reads D-8 .. D-2); a smoke run
#: (under 1M a day) keeps two, the least the refresh reads.
HISTORY_DAYS = 9
SMOKE_HISTORY_DAYS = 2
#: The large days the refresh is also measured at when the run is at full scale (days over
#: :data:`bench.tiling.TILE_BASE` impressions are tiled from a simulated day of that size).
LARGE_POINTS = (10_000_000, 50_000_000)
#: The drift report's reference without a trained model: the features of up to 7 days before D.
DRIFT_REFERENCE_DAYS = 7
DRIFT_SAMPLE_ROWS = 20_000


def refresh_points(size: int, sizes: Sequence[int]) -> tuple[int, ...]:
    """At the run's first size: every size of the run, and 10M and 50M when the run is at full
    scale (``CLICKLOOP_BENCH_REFRESH_POINTS``, comma-separated impressions, overrides them)."""
    if size != sizes[0]:
        return ()
    points = set(sizes)
    if min(sizes) >= 1_000_000:
        points.update(LARGE_POINTS)
    override = os.getenv("CLICKLOOP_BENCH_REFRESH_POINTS")
    if override:
        points = {int(value) for value in override.split(",") if value.strip()}
    return tuple(sorted(points))


def _dir(ctx: Ctx) -> Path:
    return ctx.work / f"refresh-{ctx.rows}"


def _history_days(ctx: Ctx) -> int:
    return HISTORY_DAYS if ctx.rows >= 1_000_000 else SMOKE_HISTORY_DAYS


def _runner(ctx: Ctx) -> Any:
    """The jobs of a landing-folder deployment whose partitions start with the history, on a SQLite
    instance under the step's folder (settings built here: nothing is read from the environment)."""
    from dagster import DagsterInstance

    from pipelines.cli.runner import LoopRunner
    from pipelines.definitions import build_defs
    from pipelines.settings import Settings, ensure_dagster_home

    root = _dir(ctx)
    settings = Settings(
        data_dir=root,
        start_date=ctx.key(-_history_days(ctx)),
        log_source="landing",
        executor="in_process",
        resources={
            "log_source": {"landing_dir": str(root / "landing")},
            "warehouse": {
                "duckdb_threads": DUCKDB_THREADS,
                "duckdb_memory_limit": DUCKDB_MEMORY_LIMIT,
            },
        },
    )
    instance = DagsterInstance.from_config(str(ensure_dagster_home(root / "dagster_home")))
    return LoopRunner(build_defs(settings), instance)  # run logs at WARNING (QUIET)


def _execute(runner: Any, job: str, key: str) -> float:
    """Run one job for one partition; its seconds, or an error naming the failed steps."""
    report = runner.run(job, key, echo=False)
    if not report.success:
        raise RuntimeError(f"{job} {key} failed: {report.failures}")
    return report.seconds


def refresh_prepare(ctx: Ctx) -> None:
    """Simulate and write the days (history small, D-1 .. D+1 at the size), then build everything
    the refresh reads through the jobs: ingest D-9 .. D, events D-9 .. D-1, statistics D-9 .. D+1.
    Also leaves the drift report's columns for the floor."""
    from clickloop.contract_file import load_contract
    from clickloop.drift import DriftColumns, DriftParams
    from clickloop.simulator import FaultRates, World, simulate_day, write_day

    landing = _dir(ctx) / "landing"
    world = World(SEED)
    first = -_history_days(ctx)
    copies, rest = divmod(ctx.rows, TILE_BASE)
    if ctx.rows > TILE_BASE and rest:
        raise ValueError(f"a refresh day over {TILE_BASE:,} impressions must be a multiple of it")
    for offset in range(first, 2):
        size = ctx.rows if offset >= -1 else min(HISTORY_SIZE, ctx.rows)
        tile = offset >= -1 and ctx.rows > TILE_BASE
        target = _dir(ctx) / "tile-base" if tile else landing
        simulated = TILE_BASE if tile else size
        traffic = simulate_day(world, ctx.day(offset), requests_per_day=max(1, simulated // 2))
        write_day(traffic, target, FaultRates(), settings={**bench_settings(ctx), "impressions": simulated})
        del traffic
        if tile:
            tile_files(target, landing, copies)
            shutil.rmtree(target)
    runner = _runner(ctx)
    for offset in range(first, 1):
        _execute(runner, "feature_stats_job", ctx.key(offset))
        _execute(runner, "ingest_job", ctx.key(offset))
        if offset > first:
            _execute(runner, "events_job", ctx.key(offset - 1))
    _execute(runner, "feature_stats_job", ctx.key(1))
    columns = DriftColumns.of(feature_spec(), load_contract().has_served_predictions)
    params = DriftParams()
    if (params.sample_rows, params.reference_days) != (DRIFT_SAMPLE_ROWS, DRIFT_REFERENCE_DAYS):
        raise RuntimeError(f"the drift report's defaults changed ({params}): update the floor")
    drift = {"categorical": list(columns.categorical), "numeric": list(columns.numeric)}
    (_dir(ctx) / "drift-columns.json").write_text(json.dumps(drift))


def refresh_ours(ctx: Ctx) -> dict[str, object]:
    """The three runs of the refresh after day D+1, through Dagster."""
    runner = _runner(ctx)
    runs = [("ingest_job", ctx.key(1)), ("events_job", ctx.key(0)), ("feature_stats_job", ctx.key(2))]
    seconds: dict[str, float] = {}
    with ctx.timed():
        for job, key in runs:
            start = time.perf_counter()
            _execute(runner, job, key)
            seconds[job] = time.perf_counter() - start
    import pyarrow.parquet as pq

    events = pq.ParquetFile(_dir(ctx) / AD_EVENTS / f"date={ctx.key(0)}" / "part-0.parquet")
    return {"events": events.metadata.num_rows, **{f"{job}_seconds": s for job, s in seconds.items()}}


def refresh_floor(ctx: Ctx) -> dict[str, object]:
    """The bare libraries doing the refresh's work on the same files, timed as one block."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    root = _dir(ctx)
    first = -_history_days(ctx)
    floor = root / "floor"
    floor.mkdir(parents=True, exist_ok=True)
    landing = root / "landing"

    def part(asset: str, offset: int) -> Path:
        return root / asset / f"date={ctx.key(offset)}" / "part-0.parquet"

    drift = json.loads((root / "drift-columns.json").read_text())
    categorical, numeric = drift["categorical"], drift["numeric"]
    typed = raw_columns()
    files = {kind: log_files(landing, kind, ctx.day(1)) for kind in typed}
    con = floor_connection()
    seconds: dict[str, float] = {}
    with ctx.timed():
        # ingest D+1
        start = time.perf_counter()
        raw = {}
        for kind, columns in typed.items():
            spec = "{" + ", ".join(f"'{n}': '{t}'" for n, t in columns.items()) + "}"
            raw[kind] = floor / f"raw-{kind}.parquet"
            con.execute(
                f"""COPY (SELECT * FROM read_json({sql_list(files[kind])},
                          format = 'newline_delimited', ignore_errors = true,
                          hive_partitioning = false, columns = {spec}))
                    TO '{raw[kind]}' (FORMAT parquet, COMPRESSION zstd)"""
            )
        seconds["ingest"] = time.perf_counter() - start
        # join D: impressions of D, first click per impression among the clicks of D and D+1
        start = time.perf_counter()
        events = floor / "ad_events.parquet"
        clicks = [part(RAW_TABLES["clicks"], 0), raw["clicks"]]
        con.execute(
            f"""COPY (
                SELECT i.*, CAST(c.click_ts IS NOT NULL AS TINYINT) AS clicked
                FROM read_parquet('{part(RAW_TABLES["impressions"], 0)}') i
                LEFT JOIN (SELECT impression_id, min(ts) AS click_ts
                           FROM read_parquet({sql_list(clicks)})
                           GROUP BY 1) c USING (impression_id)
            ) TO '{events}' (FORMAT parquet, COMPRESSION zstd)"""
        )
        seconds["join"] = time.perf_counter() - start
        # statistics of D+2: the window D-6 .. D (clickloop's older days, the floor's day D)
        start = time.perf_counter()
        columns = "ad_id, advertiser_id, site_id, site_category, user_id, clicked"
        older = [part(AD_EVENTS, o) for o in range(max(-6, first), 0)]
        window = (
            f"(SELECT {columns} FROM read_parquet({sql_list(older)})"
            f" UNION ALL SELECT {columns} FROM read_parquet('{events}'))"
        )
        previous = f"read_parquet('{events}')"
        con.execute(
            f"COPY ({stats_floor_sql(window, previous)}) "
            f"TO '{floor / 'feature_stats.parquet'}' (FORMAT parquet, COMPRESSION zstd)"
        )
        seconds["feature_stats"] = time.perf_counter() - start
        # features of D: the floor's events of D joined to the statistics of D
        start = time.perf_counter()
        features = floor / "features.parquet"
        con.execute(
            f"COPY ({features_floor_sql(events, part(FEATURE_STATS, 0))}) TO '{features}' "
            "(FORMAT parquet, COMPRESSION zstd)"
        )
        seconds["features"] = time.perf_counter() - start
        # drift of D against the days before, on samples
        start = time.perf_counter()
        sample = f"USING SAMPLE {DRIFT_SAMPLE_ROWS} ROWS (reservoir, 7)"
        reference_files = [part(FEATURES, o) for o in range(max(-DRIFT_REFERENCE_DAYS, first), 0)]
        current = con.sql(f"SELECT * FROM read_parquet('{features}') {sample}").df()
        reference = con.sql(f"SELECT * FROM read_parquet({sql_list(reference_files)}) {sample}").df()
        used = [*categorical, *numeric]
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        Report([DriftedColumnsCount(columns=used), *(ValueDrift(column=c) for c in used)]).run(
            Dataset.from_pandas(current[used], data_definition=definition),
            Dataset.from_pandas(reference[used], data_definition=definition),
        )
        seconds["drift"] = time.perf_counter() - start
    return {f"{k}_seconds": v for k, v in seconds.items()}


def refresh_detail(row: dict[str, Any]) -> str:
    ours = row["ours"]["info"]
    floor_row = row.get("floor") or {}
    floor, floor_s = floor_row.get("info", {}), floor_row.get("seconds")
    per_million = 1e6 / row["size"]
    text = (
        f"{row['ours']['seconds'] * per_million:.1f} s per 1M impressions"
        + ("" if floor_s is None else f" (floor {floor_s * per_million:.1f} s)")
        + f"; {ours['events']:,} events of D; clickloop: ingest_job {ours['ingest_job_seconds']:.1f} s, "
        f"events_job {ours['events_job_seconds']:.1f} s, feature_stats_job "
        f"{ours['feature_stats_job_seconds']:.1f} s"
    )
    if floor:
        text += "; floors: " + ", ".join(f"{k.removesuffix('_seconds')} {v:.1f} s" for k, v in floor.items())
    return text
