"""The benchmark's ``refresh`` step: one whole daily refresh through Dagster, next to the sum of
its bare-library floors on the same files.

The refresh is what the daily schedule and its chain run after day D+1 ends: ``ingest_job`` of D+1
(typed Parquet, quarantine, blocking GX checks), ``events_job`` of D (the join, features with their
GX check, the Evidently drift report and the online metrics) and ``feature_stats_job`` of D+2, each
``execute_in_process`` on a SQLite instance, with the real log source of a deployment (a landing
folder). Days D-1, D and D+1 have the measured size; the older history (D-9 .. D-2, which the
feature window reads) has :data:`HISTORY_SIZE` impressions per day. All of it is simulated, ingested
and joined through the same jobs, untimed, by the step's ``prepare``.

The floor does the same work with the bare libraries, one after the other in one timed block:
DuckDB ``read_json`` → Parquet of D+1's logs; the join of D's impressions to their first click;
the window's GROUP BYs; the features' LEFT JOINs; Evidently's ``DataDriftPreset`` on 20,000-row
samples. No checks, quarantine, accounting, ordering, atomic writes or run bookkeeping.

Only the standard library is imported here: the benchmark's parent process imports this module.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.bench import Ctx

#: Impressions per day of the history older than D-1 (only the feature window reads it).
HISTORY_SIZE = 100_000
#: Days before D the history starts at (the feature window of D reads D-8 .. D-2); a smoke run
#: (under 1M a day) keeps two, the least the refresh reads.
HISTORY_DAYS = 9
SMOKE_HISTORY_DAYS = 2
#: The largest day the refresh is measured at, besides the run's sizes.
LARGEST = 10_000_000


def refresh_points(size: int, sizes: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """At the run's first size: every size of the run, and 10M when the run is at full scale."""
    if size != sizes[0]:
        return ()
    points = set(sizes)
    if min(sizes) >= 1_000_000:
        points.add(LARGEST)
    return tuple(sorted(points))


def _dir(ctx: Ctx) -> Path:
    return ctx.work / f"refresh-{ctx.rows}"


def _history_days(ctx: Ctx) -> int:
    return HISTORY_DAYS if ctx.rows >= 1_000_000 else SMOKE_HISTORY_DAYS


def _start(ctx: Ctx) -> str:
    return ctx.key(-_history_days(ctx))


def _use_partitions_from(ctx: Ctx) -> None:
    """The partitions start with the history (set before clickloop is imported in the child)."""
    os.environ["CLICKLOOP_START_DATE"] = _start(ctx)
    os.environ["CLICKLOOP_DATA_DIR"] = str(_dir(ctx))
    os.environ["DAGSTER_HOME"] = str(_dir(ctx) / "dagster_home")


def _defs_and_instance(ctx: Ctx) -> tuple[Any, Any]:
    _use_partitions_from(ctx)
    from dagster import DagsterInstance

    from pipelines.automation import RetrainPolicy
    from pipelines.definitions import build_defs
    from pipelines.settings import ensure_dagster_home
    from resources.landing import LandingFolder
    from resources.monitoring_store import MonitoringStore
    from resources.tracking import ModelRegistry
    from resources.warehouse import Warehouse

    from pipelines.bench import DUCKDB_MEMORY_LIMIT, DUCKDB_THREADS

    root = str(_dir(ctx))
    defs = build_defs(
        {
            "warehouse": Warehouse(
                data_dir=root, duckdb_threads=DUCKDB_THREADS, duckdb_memory_limit=DUCKDB_MEMORY_LIMIT
            ),
            "model_registry": ModelRegistry(data_dir=root),
            "monitoring_store": MonitoringStore(data_dir=root),
            "log_source": LandingFolder(landing_dir=str(_dir(ctx) / "landing")),
            "retrain_policy": RetrainPolicy(),
        }
    )
    ensure_dagster_home()
    return defs, DagsterInstance.get()


def _execute(defs: Any, instance: Any, job: str, key: str) -> None:
    result = defs.resolve_job_def(job).execute_in_process(
        instance=instance,
        partition_key=key,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    if not result.success:
        failures = [
            f"{e.step_key}: {e.step_failure_data.error.message if e.step_failure_data.error else '?'}"
            for e in result.get_step_failure_events()
        ]
        raise RuntimeError(f"{job} {key} failed: {failures}")


def refresh_prepare(ctx: Ctx) -> None:
    """Simulate and write the days (history small, D-1 .. D+1 at the size), then build everything
    the refresh reads through the jobs: ingest D-9 .. D, events D-9 .. D-1, statistics D-9 .. D+1."""
    _use_partitions_from(ctx)
    from pipelines.bench import SEED, _bench_settings
    from resources.simulator import FaultRates, World, simulate_day, write_day

    landing = _dir(ctx) / "landing"
    world = World(SEED)
    first = -_history_days(ctx)
    for offset in range(first, 2):
        size = ctx.rows if offset >= -1 else min(HISTORY_SIZE, ctx.rows)
        traffic = simulate_day(world, ctx.day(offset), requests_per_day=max(1, size // 2))
        write_day(traffic, landing, FaultRates(), settings={**_bench_settings(ctx), "impressions": size})
        del traffic
    defs, instance = _defs_and_instance(ctx)
    for offset in range(first, 1):
        _execute(defs, instance, "feature_stats_job", ctx.key(offset))
        _execute(defs, instance, "ingest_job", ctx.key(offset))
        if offset > first:
            _execute(defs, instance, "events_job", ctx.key(offset - 1))
    _execute(defs, instance, "feature_stats_job", ctx.key(1))


def refresh_ours(ctx: Ctx) -> dict[str, object]:
    """The three runs of the refresh after day D+1, through Dagster."""
    defs, instance = _defs_and_instance(ctx)
    runs = [("ingest_job", ctx.key(1)), ("events_job", ctx.key(0)), ("feature_stats_job", ctx.key(2))]
    seconds: dict[str, float] = {}
    with ctx.timed():
        for job, key in runs:
            start = time.perf_counter()
            _execute(defs, instance, job, key)
            seconds[job] = time.perf_counter() - start
    import pyarrow.parquet as pq

    events = pq.ParquetFile(_dir(ctx) / "ad_events" / f"date={ctx.key(0)}" / "part-0.parquet")
    return {"events": events.metadata.num_rows, **{f"{job}_seconds": s for job, s in seconds.items()}}


def refresh_floor(ctx: Ctx) -> dict[str, object]:
    """The bare libraries doing the refresh's work on the same files, timed as one block."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from pipelines.bench import (
        RAW_COLUMNS,
        _landed_files,
        _sql_list,
        features_floor_sql,
        floor_connection,
        stats_floor_sql,
    )

    root = _dir(ctx)
    first = -_history_days(ctx)
    floor = root / "floor"
    floor.mkdir(parents=True, exist_ok=True)
    landing = root / "landing"

    def part(asset: str, offset: int) -> Path:
        return root / asset / f"date={ctx.key(offset)}" / "part-0.parquet"

    # the drift report's columns (assets.monitoring.DRIFT_CATEGORICAL / DRIFT_NUMERIC)
    categorical = ["user_segment", "ad_category", "site_category", "device_type", "os", "country",
                   "advertiser_id"]  # fmt: skip
    numeric = ["hour", "position"] + [
        f"hist_{n}_{m}" for n in ("ad", "advertiser", "site", "ad_site_category")
        for m in ("impressions", "ctr")
    ] + ["user_impressions_24h"]  # fmt: skip
    con = floor_connection()
    seconds: dict[str, float] = {}
    with ctx.timed():
        # ingest D+1
        start = time.perf_counter()
        raw = {}
        for kind, columns in RAW_COLUMNS.items():
            spec = "{" + ", ".join(f"'{n}': '{t}'" for n, t in columns.items()) + "}"
            raw[kind] = floor / f"raw-{kind}.parquet"
            con.execute(
                f"""COPY (SELECT * FROM read_json({_sql_list(_landed_files(landing, kind, ctx.day(1)))},
                          format = 'newline_delimited', ignore_errors = true,
                          hive_partitioning = false, columns = {spec}))
                    TO '{raw[kind]}' (FORMAT parquet, COMPRESSION zstd)"""
            )
        seconds["ingest"] = time.perf_counter() - start
        # join D: impressions of D, first click per impression among the clicks of D and D+1
        start = time.perf_counter()
        events = floor / "ad_events.parquet"
        con.execute(
            f"""COPY (
                SELECT i.*, CAST(c.click_ts IS NOT NULL AS TINYINT) AS clicked
                FROM read_parquet('{part("raw_impressions", 0)}') i
                LEFT JOIN (SELECT impression_id, min(ts) AS click_ts
                           FROM read_parquet({_sql_list([part("raw_clicks", 0), raw["clicks"]])})
                           GROUP BY 1) c USING (impression_id)
            ) TO '{events}' (FORMAT parquet, COMPRESSION zstd)"""
        )
        seconds["join"] = time.perf_counter() - start
        # statistics of D+2: the window D-6 .. D (clickloop's older days, the floor's day D)
        start = time.perf_counter()
        columns = "ad_id, advertiser_id, site_id, site_category, user_id, clicked"
        window = (
            f"(SELECT {columns} FROM read_parquet({_sql_list([part('ad_events', o) for o in range(max(-6, first), 0)])})"
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
            f"COPY ({features_floor_sql(events, part('feature_stats', 0))}) TO '{features}' "
            "(FORMAT parquet, COMPRESSION zstd)"
        )
        seconds["features"] = time.perf_counter() - start
        # drift of D against the days before, on samples
        start = time.perf_counter()
        sample = "USING SAMPLE 20000 ROWS (reservoir, 7)"
        current = con.sql(f"SELECT * FROM read_parquet('{features}') {sample}").df()
        reference = con.sql(
            f"SELECT * FROM read_parquet({_sql_list([part('features', o) for o in range(max(-7, first), 0)])}) {sample}"
        ).df()
        used = [*categorical, *numeric]
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        Report([DataDriftPreset(columns=used)]).run(
            Dataset.from_pandas(current[used], data_definition=definition),
            Dataset.from_pandas(reference[used], data_definition=definition),
        )
        seconds["drift"] = time.perf_counter() - start
    return {f"{k}_seconds": v for k, v in seconds.items()}


def refresh_detail(row: dict[str, Any]) -> str:
    ours = row["ours"]["info"]
    floor = (row.get("floor") or {}).get("info", {})
    text = (
        f"{ours['events']:,} events of D; clickloop: ingest_job {ours['ingest_job_seconds']:.1f} s, "
        f"events_job {ours['events_job_seconds']:.1f} s, feature_stats_job "
        f"{ours['feature_stats_job_seconds']:.1f} s"
    )
    if floor:
        text += "; floors: " + ", ".join(
            f"{k.removesuffix('_seconds')} {v:.1f} s" for k, v in floor.items()
        )
    return text

