"""The benchmark of clickloop: each step of the loop next to the bare library doing the same work.

``make bench`` (``python -m pipelines.bench``) simulates days of 1M and 5M impressions
(``--sizes``; ``--quick`` is one day of 100k, each step at its first point) and, for each size,
runs every step of :data:`STEPS` twice on the same files in the same run: clickloop's own
function, and a *floor*, the bare library (DuckDB, pyarrow, XGBoost, Evidently) doing the same work
without clickloop's guarantees (quarantine, deduplication, accounting, ordering, atomic writes,
category pinning, sampling). Speed is reported as a ratio (clickloop seconds / floor seconds): the
machine may be shared and noisy, a ratio of two neighbours is not.

The steps: simulate, write logs, ingest (with faults and clean), the ad_events join, feature
stats, features, training (``fit_ctr_model`` against ``xgboost.train``, 100 rounds), scoring (one
request x 1M candidates through ``ChampionPolicy.predict_ctr`` against ``inplace_predict``; median
and p99 of 20 calls) and the drift report (``read_sample`` + ``compute_drift`` against Evidently on
frames already sampled, at the day's rows and 10x as many). Scoring and drift do not depend on the
day's size: they are measured once, at the first size (a step's ``points``). ``--steps`` measures
only the named steps; the steps they need run first, clickloop's side only, unreported.

How a number is taken:

- Every measured run (clickloop or floor) is its own child process,
  ``python -m pipelines.bench --child ours|floor --step NAME --size N --work DIR --result FILE``.
  The child imports what it needs, loads its inputs, and times only the work (wall clock and
  process CPU time); the parent reads the child's peak resident memory from ``os.wait4``
  (``ru_maxrss``), so each peak is that run's own, imports and loaded inputs included.
- The parent imports the standard library only: ``subprocess`` starts children with ``vfork``, and
  a child's ``ru_maxrss`` starts at its parent's high-water mark, so a heavy parent would inflate
  every peak. Untimed preparation (simulating the neighbour days, ingesting them) runs in children
  too (``--child prepare``).
- DuckDB runs with the warehouse's settings on both sides (:data:`DUCKDB_THREADS` threads,
  :data:`DUCKDB_MEMORY_LIMIT`, UTC); pyarrow and OpenMP get the same thread count.

Results: a Markdown table on stdout, ``<data_dir>/bench/results.md`` and ``results.json`` (both
written atomically); scratch files live in ``<data_dir>/bench/work`` and are removed at the end
(``--keep-work`` keeps them). The data directory is ``CLICKLOOP_DATA_DIR`` or ``./data``.

Adding a step (training against bare ``xgboost.train``, scoring latency, drift report, daily
refresh): write its ``ours`` and ``floor`` functions (each loads its inputs, wraps exactly the
measured work in ``with ctx.timed():`` and returns a small dict of facts), optionally a
``prepare`` function that leaves the inputs in ``ctx.work``, and append a :class:`Step` to
:data:`STEPS` (``needs``: the steps whose files it reads; ``points``: what it is measured at, when
not the day's size; ``detail``: the table's last column). Steps run in list order, so a step may use
what an earlier one left behind. A function timing repetitions inside its block reports their
median with ``ctx.report_seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines.bench_refresh import (
    refresh_detail,
    refresh_floor,
    refresh_ours,
    refresh_points,
    refresh_prepare,
)

# --- Settings ----------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SIZES: tuple[int, ...] = (1_000_000, 5_000_000)
QUICK_SIZE = 100_000
#: Both sides of every comparison use the warehouse's DuckDB settings (resources/warehouse.py).
DUCKDB_THREADS = 2
DUCKDB_MEMORY_LIMIT = "4GB"
SEED = 7
#: The measured day D; D-1 and D+1 are simulated for the join, D-7 .. D-1 label the window.
DAY = date(2026, 10, 8)
HISTORY_DAYS = 7
ATTRIBUTION_WINDOW_HOURS = 24.0
ROLES = ("prepare", "ours", "floor")

#: The raw log contract as a hand-written floor would type it (mirrors assets/raw_logs.py; kept
#: here so the floor children never import clickloop, nor Dagster through it).
RAW_COLUMNS: dict[str, dict[str, str]] = {
    "impressions": {
        "impression_id": "VARCHAR",
        "ts": "TIMESTAMPTZ",
        "request_id": "VARCHAR",
        "user_id": "VARCHAR",
        "user_segment": "VARCHAR",
        "ad_id": "VARCHAR",
        "campaign_id": "VARCHAR",
        "advertiser_id": "VARCHAR",
        "ad_category": "VARCHAR",
        "site_id": "VARCHAR",
        "site_category": "VARCHAR",
        "device_type": "VARCHAR",
        "os": "VARCHAR",
        "country": "VARCHAR",
        "position": "INTEGER",
        "bid_cpc": "DOUBLE",
        "model_version": "VARCHAR",
        "predicted_ctr": "DOUBLE",
    },
    "clicks": {"click_id": "VARCHAR", "impression_id": "VARCHAR", "ts": "TIMESTAMPTZ"},
}
RAW_ASSETS = {"impressions": "raw_impressions", "clicks": "raw_clicks"}


def data_dir() -> Path:
    """The data directory (``CLICKLOOP_DATA_DIR`` or ``./data``), as ``pipelines.settings`` has it;
    not imported from there because that module imports Dagster into the parent."""
    return Path(os.getenv("CLICKLOOP_DATA_DIR", "data")).expanduser().resolve()


def size_label(size: int) -> str:
    """``5000000`` -> ``5M``, ``100000`` -> ``100k``."""
    for unit, suffix in ((1_000_000, "M"), (1_000, "k")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return f"{size:,}"


# --- What a child sees -------------------------------------------------------------------------


@dataclass
class Timing:
    """What one ``with ctx.timed():`` block measured."""

    wall_s: float
    cpu_s: float
    rss_start_mib: float
    hwm_end_mib: float


def _proc_status_mib(field_name: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (0 where /proc is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Ctx:
    """One size's scratch folder and the paths and helpers every step function shares."""

    size: int
    work: Path
    #: what this measurement is taken at (rows, candidates); the day's size unless a step's
    #: ``points`` say otherwise
    rows: int = 0
    timing: Timing | None = field(default=None, init=False)
    #: the seconds reported instead of the timed block's wall time (see :meth:`report_seconds`)
    reported_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rows <= 0:
            self.rows = self.size

    # -- the timed block -------------------------------------------------------------------

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Time exactly the measured work; a step function uses this once."""
        if self.timing is not None:
            raise RuntimeError("a step function times one block only")
        rss = _proc_status_mib("VmRSS")
        cpu, wall = time.process_time(), time.perf_counter()
        yield
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.timing = Timing(wall, cpu, rss, _proc_status_mib("VmHWM"))

    def report_seconds(self, seconds: float) -> None:
        """Report ``seconds`` (e.g. the median of repetitions timed inside the block) as this
        run's time; the block's own wall time is kept as ``block_wall_s``."""
        self.reported_s = float(seconds)

    # -- days and paths --------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """Page views per day: two impressions each."""
        return max(1, self.size // 2)

    def day(self, offset: int = 0) -> date:
        return DAY + timedelta(days=offset)

    def key(self, offset: int = 0) -> str:
        return self.day(offset).isoformat()

    @property
    def landing(self) -> Path:
        """The simulator's landing folder, faults injected at the default rates."""
        return self.work / "landing"

    @property
    def landing_clean(self) -> Path:
        """Day D written again with every fault rate at 0 (pyarrow's JSON reader needs it)."""
        return self.work / "landing_clean"

    @property
    def floor_dir(self) -> Path:
        return self.work / "floor"

    def traffic_path(self, offset: int = 0) -> Path:
        """The pickled ``DayTraffic`` of a simulated day (input of clickloop's writer)."""
        return self.work / "pickles" / f"traffic-{self.key(offset)}.pkl"

    def frames_path(self, offset: int = 0) -> Path:
        """The clean impressions and clicks frames of a day (input of the writing floor)."""
        return self.work / "pickles" / f"frames-{self.key(offset)}.pkl"

    def warehouse(self, name: str = "warehouse") -> Any:
        """clickloop's warehouse under the scratch folder, with the benchmark's DuckDB settings."""
        from resources.warehouse import Warehouse

        return Warehouse(
            data_dir=str(self.work / name),
            duckdb_threads=DUCKDB_THREADS,
            duckdb_memory_limit=DUCKDB_MEMORY_LIMIT,
        )

    def floor_path(self, name: str) -> Path:
        path = self.floor_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def floor_connection() -> Any:
    """A bare DuckDB connection with the warehouse's settings."""
    import duckdb

    con = duckdb.connect(config={"threads": DUCKDB_THREADS, "memory_limit": DUCKDB_MEMORY_LIMIT})
    con.execute("SET TimeZone = 'UTC'")
    return con


def _dump(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)


def _load(path: Path) -> Any:
    with open(path, "rb") as handle:
        return pickle.load(handle)


def _sql_list(paths: Sequence[Path]) -> str:
    return "[" + ", ".join(f"'{p}'" for p in paths) + "]"


def _landed_files(landing: Path, kind: str, day: date) -> list[Path]:
    """The log files of one day, as ``resources.landing.list_log_files`` lists them."""
    files = sorted((landing / kind / f"date={day.isoformat()}").glob("*.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"no {kind} files of {day} under {landing}")
    return files


def _bytes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def _bench_settings(ctx: Ctx) -> dict[str, object]:
    """What the manifests record about who wrote the days."""
    return {"source": "pipelines.bench", "seed": SEED, "requests_per_day": ctx.requests}


# --- 1. the simulator: simulate, then write the logs ------------------------------------------


def _simulate(ctx: Ctx, offset: int) -> Any:
    from resources.simulator import World, simulate_day

    return simulate_day(World(SEED), ctx.day(offset), requests_per_day=ctx.requests)


def _save_day(ctx: Ctx, traffic: Any, offset: int) -> None:
    _dump(ctx.traffic_path(offset), traffic)
    _dump(ctx.frames_path(offset), (traffic.impressions, traffic.clicks))


def simulate_ours(ctx: Ctx) -> dict[str, object]:
    """``World`` (untimed) and ``simulate_day`` of day D (timed); saves the day for the writers."""
    from resources.simulator import World, simulate_day

    world = World(SEED)
    with ctx.timed():
        traffic = simulate_day(world, ctx.day(), requests_per_day=ctx.requests)
    _save_day(ctx, traffic, 0)
    return {"impressions": len(traffic.impressions), "clicks": len(traffic.clicks)}


def write_ours(ctx: Ctx) -> dict[str, object]:
    """``write_day`` of day D with the default fault rates: rendering, faults, gzip, manifest."""
    from resources.simulator import FaultRates, write_day

    traffic = _load(ctx.traffic_path())
    with ctx.timed():
        manifest = write_day(traffic, ctx.landing, FaultRates(), settings=_bench_settings(ctx))
    files = [ctx.landing / name for name in manifest["files"]]
    return {"lines": sum(f["lines"] for f in manifest["files"].values()), "bytes": _bytes(files)}


def write_floor(ctx: Ctx) -> dict[str, object]:
    """DuckDB writes the same clean impressions and clicks frames as gzip JSON lines."""
    impressions, clicks = _load(ctx.frames_path())
    con = floor_connection()
    con.register("impressions_frame", impressions)
    con.register("clicks_frame", clicks)
    targets = [ctx.floor_path("impressions.jsonl.gz"), ctx.floor_path("clicks.jsonl.gz")]
    with ctx.timed():
        for frame, target in zip(("impressions_frame", "clicks_frame"), targets):
            con.execute(f"COPY {frame} TO '{target}' (FORMAT json, COMPRESSION gzip)")
    return {"lines": len(impressions) + len(clicks), "bytes": _bytes(targets)}


# --- 2. ingest: JSON lines -> typed Parquet with quarantine -----------------------------------


def ingest_prepare(ctx: Ctx) -> None:
    """Simulate and write days D-1 and D+1 (the clicks of D include D-1's late clicks)."""
    from resources.simulator import FaultRates, write_day

    for offset in (-1, 1):
        traffic = _simulate(ctx, offset)
        write_day(traffic, ctx.landing, FaultRates(), settings=_bench_settings(ctx))
        del traffic


def _ingest_day(
    ctx: Ctx, landing: Path, warehouse: Any, kinds: Sequence[str], offset: int
) -> dict[str, object]:
    """clickloop's ``ingest_partition`` of the given kinds of one day; returns the counts."""
    from assets.raw_logs import ingest_partition
    from resources.landing import LandingFolder

    source = LandingFolder(landing_dir=str(landing))
    counts: dict[str, object] = {}
    for kind in kinds:
        parsed, _, _ = ingest_partition(source, warehouse, kind, RAW_ASSETS[kind], ctx.day(offset))
        counts[kind] = {
            "lines": parsed.lines_read,
            "valid": parsed.valid.num_rows,
            "quarantined": parsed.quarantine.num_rows,
        }
        del parsed
    return counts


def ingest_ours(ctx: Ctx) -> dict[str, object]:
    """``ingest_partition`` of day D's impressions and clicks: typed Parquet plus quarantine."""
    warehouse = ctx.warehouse()
    with ctx.timed():
        counts = _ingest_day(ctx, ctx.landing, warehouse, ("impressions", "clicks"), 0)
    return counts


def _duckdb_read_json_to_parquet(ctx: Ctx, landing: Path, prefix: str) -> dict[str, object]:
    con = floor_connection()
    counts: dict[str, object] = {}
    jobs = []
    for kind, columns in RAW_COLUMNS.items():
        files = _landed_files(landing, kind, ctx.day())
        spec = "{" + ", ".join(f"'{name}': '{sql}'" for name, sql in columns.items()) + "}"
        jobs.append((kind, files, spec, ctx.floor_path(f"{prefix}-{kind}.parquet")))
    with ctx.timed():
        for kind, files, spec, target in jobs:
            (rows,) = con.execute(
                f"""COPY (SELECT * FROM read_json({_sql_list(files)}, format = 'newline_delimited',
                          ignore_errors = true, hive_partitioning = false, columns = {spec}))
                    TO '{target}' (FORMAT parquet, COMPRESSION zstd)"""
            ).fetchone()
            counts[kind] = {"rows": rows}
    return counts


def ingest_floor(ctx: Ctx) -> dict[str, object]:
    """DuckDB ``read_json(..., ignore_errors=true)`` -> ``COPY TO parquet`` of the same files."""
    return _duckdb_read_json_to_parquet(ctx, ctx.landing, "raw")


def ingest_clean_prepare(ctx: Ctx) -> None:
    """Write day D again with every fault rate at 0, into its own landing folder."""
    from resources.simulator import FaultRates, write_day

    write_day(_load(ctx.traffic_path()), ctx.landing_clean, FaultRates.clean(), settings=_bench_settings(ctx))


def ingest_clean_ours(ctx: Ctx) -> dict[str, object]:
    """``ingest_partition`` of the clean copy of day D (only D: its clicks folder lacks D-1's)."""
    warehouse = ctx.warehouse("warehouse_clean")
    with ctx.timed():
        counts = _ingest_day(ctx, ctx.landing_clean, warehouse, ("impressions", "clicks"), 0)
    return counts


def ingest_clean_floor(ctx: Ctx) -> dict[str, object]:
    """pyarrow ``json.read_json`` with an explicit schema -> ``parquet.write_table``; clean files
    only, because pyarrow's reader stops at the first line it cannot parse."""
    import pyarrow as pa
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    types = {
        "VARCHAR": pa.string(),
        "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
        "INTEGER": pa.int32(),
        "DOUBLE": pa.float64(),
    }
    jobs = []
    for kind, columns in RAW_COLUMNS.items():
        schema = pa.schema([(name, types[sql]) for name, sql in columns.items()])
        files = _landed_files(ctx.landing_clean, kind, ctx.day())
        jobs.append((kind, files, schema, ctx.floor_path(f"pyarrow-{kind}.parquet")))
    counts: dict[str, object] = {}
    with ctx.timed():
        for kind, files, schema, target in jobs:
            options = pa_json.ParseOptions(explicit_schema=schema)
            table = pa.concat_tables(
                pa_json.read_json(pa.input_stream(f, compression="gzip"), parse_options=options)
                for f in files
            )
            pq.write_table(table, target, compression="zstd")
            counts[kind] = {"rows": table.num_rows}
            del table
    return counts


# --- 3. the ad_events join ---------------------------------------------------------------------


def join_prepare(ctx: Ctx) -> None:
    """Ingest (with clickloop, untimed) what day D's join reads besides day D itself: the
    impressions and clicks of D-1 and the clicks of D+1."""
    warehouse = ctx.warehouse()
    _ingest_day(ctx, ctx.landing, warehouse, ("impressions", "clicks"), -1)
    _ingest_day(ctx, ctx.landing, warehouse, ("clicks",), 1)


def _raw_paths(ctx: Ctx, kind: str, offsets: Sequence[int]) -> list[tuple[str, Path]]:
    warehouse = ctx.warehouse()
    keys = [ctx.key(o) for o in offsets]
    paths = warehouse.require_partition_paths(RAW_ASSETS[kind], keys)
    for offset, path in zip(offsets, paths):
        _same_layout(path, _raw_file(ctx, kind, offset))
    return list(zip(keys, paths))


def _events_path(ctx: Ctx) -> Path:
    return ctx.work / "warehouse" / "ad_events" / f"date={ctx.key()}" / "part-0.parquet"


def join_ours(ctx: Ctx) -> dict[str, object]:
    """``join_events`` of day D over impressions D-1, D and clicks D-1, D, D+1."""
    from assets.events import join_events

    warehouse = ctx.warehouse()
    _same_layout(warehouse.partition_path("ad_events", ctx.key()), _events_path(ctx))
    impressions = _raw_paths(ctx, "impressions", (-1, 0))
    clicks = _raw_paths(ctx, "clicks", (-1, 0, 1))
    with warehouse.duckdb() as con:
        with ctx.timed():
            accounting = join_events(
                con,
                ctx.key(),
                impressions,
                clicks,
                ATTRIBUTION_WINDOW_HOURS,
                warehouse.partition_path("ad_events", ctx.key()),
                warehouse.quarantine_path("ad_events", ctx.key()),
            )
    return {"events": accounting.events, "clicked": accounting.clicked}


def _same_layout(warehouse_path: Path, bench_path: Path) -> None:
    """The floors find clickloop's files without importing the warehouse: the layouts must agree."""
    if warehouse_path.resolve() != bench_path.resolve():
        raise RuntimeError(f"warehouse layout changed: {warehouse_path} != {bench_path}")


def _raw_file(ctx: Ctx, kind: str, offset: int) -> Path:
    return ctx.work / "warehouse" / RAW_ASSETS[kind] / f"date={ctx.key(offset)}" / "part-0.parquet"


def join_floor(ctx: Ctx) -> dict[str, object]:
    """Bare DuckDB: day D's impressions LEFT JOIN the first click per impression (clicks of D and
    D+1), written to Parquet; no deduplication, window, quarantine or ordering."""
    con = floor_connection()
    impressions = _raw_file(ctx, "impressions", 0)
    clicks = [_raw_file(ctx, "clicks", 0), _raw_file(ctx, "clicks", 1)]
    target = ctx.floor_path("ad_events.parquet")
    with ctx.timed():
        (rows,) = con.execute(
            f"""COPY (
                SELECT i.* EXCLUDE (source_file, line_number),
                       CAST(c.click_ts IS NOT NULL AS TINYINT) AS clicked, c.click_ts
                FROM read_parquet('{impressions}') i
                LEFT JOIN (SELECT impression_id, min(ts) AS click_ts
                           FROM read_parquet({_sql_list(clicks)}) GROUP BY 1) c
                USING (impression_id)
            ) TO '{target}' (FORMAT parquet, COMPRESSION zstd)"""
        ).fetchone()
    return {"events": rows}


# --- 4. features: the statistics of a 7-day window, then the features of day D ----------------


def _history(ctx: Ctx) -> list[tuple[str, Path]]:
    """The 7-day window: day D's ad_events file under the keys D-7 .. D-1 (one day simulated)."""
    return [(ctx.key(-k), _events_path(ctx)) for k in range(HISTORY_DAYS, 0, -1)]


def _stats_path(ctx: Ctx) -> Path:
    return ctx.work / "warehouse" / "feature_stats" / f"date={ctx.key()}" / "part-0.parquet"


def stats_ours(ctx: Ctx) -> dict[str, object]:
    """``build_feature_stats`` of day D over the 7-day window."""
    from assets.features import build_feature_stats

    warehouse = ctx.warehouse()
    _same_layout(warehouse.partition_path("feature_stats", ctx.key()), _stats_path(ctx))
    history = _history(ctx)
    with warehouse.duckdb() as con:
        with ctx.timed():
            summary = build_feature_stats(con, ctx.key(), history, _stats_path(ctx))
    return {"history_rows": summary.history_rows, "keys": summary.keys}


def stats_floor_sql(window: str, previous: str) -> str:
    """Bare DuckDB: impressions and clicks per ad, advertiser, site, (ad, site category) over the
    ``window`` relation and per user over ``previous``, one GROUP BY each, UNION ALL."""
    groups = [
        ("ad", "ad_id", "NULL", "ad_id"),
        ("advertiser", "advertiser_id", "NULL", "advertiser_id"),
        ("site", "site_id", "NULL", "site_id"),
        ("ad_site_category", "ad_id", "site_category", "ad_id, site_category"),
    ]
    parts = [
        f"SELECT 'global' AS key_type, NULL::VARCHAR AS key1, NULL::VARCHAR AS key2, "
        f"count(*) AS impressions, sum(clicked) AS clicks FROM {window}"
    ]
    parts += [
        f"SELECT '{name}', {k1}, {k2}, count(*), sum(clicked) FROM {window} GROUP BY {by}"
        for name, k1, k2, by in groups
    ]
    parts.append(
        f"SELECT 'user_prev_day', user_id, NULL, count(*), sum(clicked) FROM {previous} GROUP BY user_id"
    )
    return " UNION ALL ".join(parts)


def stats_floor(ctx: Ctx) -> dict[str, object]:
    """:func:`stats_floor_sql` over the 7-day window, to Parquet."""
    con = floor_connection()
    files = [p for _, p in _history(ctx)]
    sql = stats_floor_sql(f"read_parquet({_sql_list(files)})", f"read_parquet('{files[-1]}')")
    target = ctx.floor_path("feature_stats.parquet")
    with ctx.timed():
        (rows,) = con.execute(
            f"COPY ({sql}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)"
        ).fetchone()
    return {"rows": rows}


def features_ours(ctx: Ctx) -> dict[str, object]:
    """``build_features`` of day D's events with the statistics of the window."""
    from assets.features import build_features

    warehouse = ctx.warehouse()
    target = warehouse.partition_path("features", ctx.key())
    with warehouse.duckdb() as con:
        with ctx.timed():
            build_features(con, _events_path(ctx), _stats_path(ctx), target)
        (rows,) = con.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()
    return {"rows": rows}


def features_floor_sql(events: Path, stats_file: Path) -> str:
    """Bare DuckDB: the features' columns from plain equality LEFT JOINs of the events to the
    statistics file, in no particular order."""
    stats = f"read_parquet('{stats_file}')"
    lookups = [
        ("ad", "ad", "k.key1 = e.ad_id"),
        ("advertiser", "advertiser", "k.key1 = e.advertiser_id"),
        ("site", "site", "k.key1 = e.site_id"),
        ("ad_site_category", "ad_site_category", "k.key1 = e.ad_id AND k.key2 = e.site_category"),
    ]
    columns = [
        "e.impression_id", "e.request_id", "e.ts", "e.clicked", "e.ad_id", "e.campaign_id",
        "e.bid_cpc", "e.model_version", "e.predicted_ctr", "e.user_segment", "e.ad_category",
        "e.site_id", "e.site_category", "e.device_type", "e.os", "e.country", "e.advertiser_id",
        "hour(e.ts) AS hour", "isodow(e.ts) - 1 AS weekday", "e.position",
    ]  # fmt: skip
    joins = []
    for i, (name, key_type, condition) in enumerate(lookups):
        alias = f"k{i}"
        columns += [
            f"coalesce({alias}.impressions, 0) AS hist_{name}_impressions",
            f"coalesce({alias}.ctr, p.prior) AS hist_{name}_ctr",
        ]
        joins.append(
            f"LEFT JOIN (SELECT key1, key2, impressions, ctr FROM {stats} "
            f"WHERE key_type = '{key_type}') {alias} ON {condition.replace('k.', alias + '.')}"
        )
    columns.append("coalesce(u.impressions, 0) AS user_impressions_24h")
    joins.append(
        f"LEFT JOIN (SELECT key1, impressions FROM {stats} WHERE key_type = 'user_prev_day') u "
        "ON u.key1 = e.user_id"
    )
    return f"""
        SELECT {", ".join(columns)}
        FROM read_parquet('{events}') e
        CROSS JOIN (SELECT ctr AS prior FROM {stats} WHERE key_type = 'global') p
        {" ".join(joins)}
    """


def features_floor(ctx: Ctx) -> dict[str, object]:
    """:func:`features_floor_sql` of day D's events and the window's statistics, to Parquet."""
    con = floor_connection()
    target = ctx.floor_path("features.parquet")
    sql = features_floor_sql(_events_path(ctx), _stats_path(ctx))
    with ctx.timed():
        (rows,) = con.execute(
            f"COPY ({sql}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)"
        ).fetchone()
    return {"rows": rows}


# --- 5. training: fit_ctr_model against bare xgboost.train -------------------------------------

#: Boosting rounds of both sides of the training step (early stopping can never end it sooner).
TRAIN_ROUNDS = 100
#: The validation rows fit_ctr_model needs: every n-th row of the same day (evaluation only).
VALID_EVERY = 10


def _features_path(ctx: Ctx) -> Path:
    """Day D's ``features`` file, written by the features step at this size."""
    return ctx.work / "warehouse" / "features" / f"date={ctx.key()}" / "part-0.parquet"


def _training_dir(ctx: Ctx) -> Path:
    return ctx.work / "training"


def _training_model_path(ctx: Ctx) -> Path:
    return _training_dir(ctx) / "model.ubj"


def _training_config() -> Any:
    """The asset's defaults, no search, exactly :data:`TRAIN_ROUNDS` rounds: with
    ``early_stopping_rounds`` = the rounds, the callback can never stop early."""
    from assets.model import CtrModelConfig

    return CtrModelConfig(
        n_trials=0, num_boost_round=TRAIN_ROUNDS, early_stopping_rounds=TRAIN_ROUNDS
    )


def _training_tables(ctx: Ctx) -> tuple[Any, Any]:
    """Training rows: all of day D's features; validation: every :data:`VALID_EVERY`-th row."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(_features_path(ctx))
    return table, table.take(np.arange(0, table.num_rows, VALID_EVERY))


def training_ours(ctx: Ctx) -> dict[str, object]:
    """``fit_ctr_model`` (n_trials=0, 100 rounds) on Arrow tables of day D's features: model frames,
    QuantileDMatrix of train and validation, the search sample, training with evaluation.

    Afterwards (untimed, once the fit's matrices are freed) it leaves the floor's inputs: the
    model frame and labels of the same training rows (``model_data``, as ``fit_ctr_model`` builds
    them) and the parameters the booster was trained with; and the model, which the scoring step
    serves."""
    from assets.model import fit_ctr_model, model_data, save_booster

    train, valid = _training_tables(ctx)
    config = _training_config()
    with ctx.timed():
        fit = fit_ctr_model(train, valid, config, rate=1.0)
    final = fit.final
    folder = _training_dir(ctx)
    save_booster(final.booster, _training_model_path(ctx))
    (folder / "params.json").write_text(json.dumps(final.params))
    data = model_data(train)
    _dump(folder / "floor-frame.pkl", (data.features, data.labels))
    total = ctx.timing.wall_s if ctx.timing else 0.0
    return {
        "train_rows": fit.train_rows,
        "valid_rows": fit.valid_rows,
        # rounds trained (one log loss per round); the returned model keeps best_iteration + 1
        "rounds": len(final.curves["validation_logloss"]),
        "rounds_kept": final.booster.num_boosted_rounds(),
        "best_iteration": final.best_iteration,
        "valid_logloss": final.valid_logloss,
        "train_seconds": final.seconds,
        "search_seconds": fit.search_seconds,
        "frames_and_matrices_seconds": total - final.seconds - fit.search_seconds,
        "search_max_rows": config.search_max_rows,
        "params": final.params,
    }


def training_floor(ctx: Ctx) -> dict[str, object]:
    """Bare XGBoost: ``QuantileDMatrix`` of the same model frame, ``xgboost.train`` with the
    parameters clickloop's booster was trained with, 100 rounds, no evaluation sets."""
    import xgboost as xgb

    frame, labels = _load(_training_dir(ctx) / "floor-frame.pkl")
    params = json.loads((_training_dir(ctx) / "params.json").read_text())
    with ctx.timed():
        start = time.perf_counter()
        dtrain = xgb.QuantileDMatrix(
            frame, label=labels, enable_categorical=True, max_bin=params["max_bin"]
        )
        built = time.perf_counter()
        booster = xgb.train(params, dtrain, num_boost_round=TRAIN_ROUNDS)
        trained = time.perf_counter()
    return {
        "train_rows": len(labels),
        "rounds": booster.num_boosted_rounds(),
        "dmatrix_seconds": built - start,
        "train_seconds": trained - built,
    }


def training_detail(row: dict[str, Any]) -> str:
    ours, floor = row["ours"]["info"], row["floor"]["info"] if row["floor"] else {}
    text = (
        f"{ours['train_rows']:,} rows, {ours['rounds']} rounds; clickloop: frames + matrices "
        f"{ours['frames_and_matrices_seconds']:.1f} s, search sample "
        f"{ours['search_seconds']:.1f} s "
        f"(n_trials=0), train + evals {ours['train_seconds']:.1f} s"
    )
    if floor:
        text += (
            f"; floor: DMatrix {floor['dmatrix_seconds']:.1f} s, "
            f"train {floor['train_seconds']:.1f} s"
        )
    return text


# --- 6. scoring: one request's candidates through the champion's policy ------------------------

#: Candidates of the one request scored (capped at the day's size, so --quick stays quick).
SCORING_CANDIDATES = 1_000_000
#: Timed repetitions (after one untimed warm-up call) on each side; median and p99 are reported.
SCORING_REPS = 20


def scoring_points(size: int, sizes: Sequence[int]) -> tuple[int, ...]:
    """Size-independent: measured once, at the run's first size, with min(size, 1M) candidates."""
    return (min(size, SCORING_CANDIDATES),) if size == sizes[0] else ()


def _scoring_frame_path(ctx: Ctx) -> Path:
    return ctx.work / "scoring" / f"frame-{ctx.rows}.pkl"


def _candidates(ctx: Ctx) -> Any:
    """One simulated request of day D crossed with every ad of a ``World`` built with ``rows``
    ads: the ``candidate_frame`` the ad server hands to a ranking policy."""
    import numpy as np

    from resources.simulator import World, candidate_frame, draw_context

    n = ctx.rows
    world = World(SEED, n_ads=n)
    context = draw_context(world, world.scenario, ctx.day(), 1, np.random.default_rng([SEED, 99]))
    return candidate_frame(
        world, ctx.day(), context, np.zeros(n, dtype=np.int64), np.arange(n, dtype=np.int64)
    )


def _latencies(call: Callable[[], Any], reps: int) -> tuple[list[float], Any]:
    """Wall seconds of ``reps`` calls, and the last result."""
    seconds, result = [], None
    for _ in range(reps):
        start = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def _latency_facts(first: float, seconds: Sequence[float], predictions: Any) -> dict[str, object]:
    import numpy as np

    values = np.asarray(seconds)
    predictions = np.asarray(predictions, dtype=np.float64)
    return {
        "reps": len(values),
        "first_call_s": first,
        "median_s": float(np.median(values)),
        "p99_s": float(np.percentile(values, 99)),
        "min_s": float(values.min()),
        "max_s": float(values.max()),
        "all_s": [float(v) for v in values],
        "predictions": int(predictions.size),
        "mean_prediction": float(predictions.mean()),
    }


def scoring_ours(ctx: Ctx) -> dict[str, object]:
    """``ChampionPolicy.predict_ctr`` of one request's candidates (built untimed, in this child):
    DuckDB feature lookups against ``feature_stats``, the model frame pinned to the model's
    categories, in-place prediction, calibration. The model is the training step's; one untimed
    warm-up call, then :data:`SCORING_REPS` timed calls. Afterwards (untimed) the model frame
    ``predict_ctr`` builds is left for the floor."""
    import duckdb

    from assets.features import (
        FEATURE_COLUMNS,
        candidate_features,
        model_categories,
        to_model_frame,
    )
    from assets.model import load_booster
    from resources.serving import ChampionPolicy, candidates_table

    booster = load_booster(_training_model_path(ctx))
    candidates = _candidates(ctx)
    policy = ChampionPolicy("bench", booster, _stats_path(ctx))
    first, _ = _latencies(lambda: policy.predict_ctr(candidates), 1)
    with ctx.timed():
        seconds, predictions = _latencies(lambda: policy.predict_ctr(candidates), SCORING_REPS)
    facts = _latency_facts(first[0], seconds, predictions)
    ctx.report_seconds(facts["median_s"])  # type: ignore[arg-type]
    # one more call, untimed, stage by stage (where the time goes), as predict_ctr does it
    stages: dict[str, float] = {}
    start = time.perf_counter()
    table = candidates_table(candidates)
    stages["to_arrow"] = time.perf_counter() - start
    with duckdb.connect() as con:  # as ChampionPolicy.predict_ctr connects: DuckDB's defaults
        ((threads,),) = con.execute("SELECT current_setting('threads')").fetchall()
        start = time.perf_counter()
        features = candidate_features(con, table, _stats_path(ctx))
        stages["duckdb_features"] = time.perf_counter() - start
    start = time.perf_counter()
    categories = model_categories(booster) or None
    stages["model_categories"] = time.perf_counter() - start
    start = time.perf_counter()
    frame = to_model_frame(features, categories)[booster.feature_names or list(FEATURE_COLUMNS)]
    stages["model_frame"] = time.perf_counter() - start
    start = time.perf_counter()
    booster.inplace_predict(frame)
    stages["inplace_predict"] = time.perf_counter() - start
    _dump(_scoring_frame_path(ctx), frame)
    return {
        **facts,
        "candidates": len(candidates),
        "duckdb_threads": int(threads),
        "stages_s": stages,
    }


def scoring_floor(ctx: Ctx) -> dict[str, object]:
    """Bare XGBoost ``inplace_predict`` of the model frame clickloop's run built (same model, same
    candidates); warm-up, then the same :data:`SCORING_REPS` timed calls."""
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(_training_model_path(ctx)))
    frame = _load(_scoring_frame_path(ctx))
    first, _ = _latencies(lambda: booster.inplace_predict(frame), 1)
    with ctx.timed():
        seconds, predictions = _latencies(lambda: booster.inplace_predict(frame), SCORING_REPS)
    facts = _latency_facts(first[0], seconds, predictions)
    ctx.report_seconds(facts["median_s"])  # type: ignore[arg-type]
    return {**facts, "candidates": len(frame)}


def scoring_detail(row: dict[str, Any]) -> str:
    ours, floor = row["ours"]["info"], row["floor"]["info"] if row["floor"] else {}
    text = (
        f"{ours['candidates']:,} candidates, {ours['reps']} reps; clickloop median "
        f"{ours['median_s']:.3f} s, p99 {ours['p99_s']:.3f} s"
    )
    if floor:
        text += f"; floor median {floor['median_s']:.3f} s, p99 {floor['p99_s']:.3f} s"
    stages = ours.get("stages_s")
    if stages:
        text += "; one clickloop call by stage: " + ", ".join(
            f"{name} {seconds:.3f} s" for name, seconds in stages.items()
        )
    return text + "; s columns = medians"


# --- 7. the drift report: samples of day D against a reference, Evidently ----------------------

#: The drift report is measured at the day's rows and at this many times as many.
DRIFT_SCALE = 10


def drift_points(size: int, sizes: Sequence[int]) -> tuple[int, ...]:
    """Measured once, at the run's first size: that many rows of ``features`` and 10x as many."""
    return (size, DRIFT_SCALE * size) if size == sizes[0] else ()


def _drift_dir(ctx: Ctx) -> Path:
    return ctx.work / "drift"


def _drift_current(ctx: Ctx) -> Path:
    return _drift_dir(ctx) / f"features-{ctx.rows}.parquet"


def _drift_reference(ctx: Ctx) -> Path:
    return _drift_dir(ctx) / "reference.parquet"


def _drift_config() -> Any:
    from assets.monitoring import DriftReportConfig

    return DriftReportConfig()


def _copies_sql(source: Path, copies: int, tag: str) -> str:
    """``copies`` copies of a features file, each with new impression ids (``id#<tag><k>``)."""
    new_id = f"f.impression_id || '#{tag}' || CAST(c.k AS VARCHAR)"
    return (
        f"SELECT f.* REPLACE ({new_id} AS impression_id) "
        f"FROM range({int(copies)}) c(k), read_parquet('{source}') f"
    )


def drift_prepare(ctx: Ctx) -> None:
    """The current day at ``rows`` rows: day D's features repeated ``rows / size`` times with new
    impression ids; the reference: day D's features once more with other ids (so the hash sample
    picks other rows). Bare DuckDB with the warehouse's settings, Parquet with zstd as the
    warehouse writes it (no clickloop import: a cheap child). For contrast, the time pyarrow
    takes to read the whole current file."""
    import pyarrow.parquet as pq

    if ctx.rows % ctx.size:
        raise ValueError(f"drift rows {ctx.rows} are not a multiple of the day's size {ctx.size}")
    source, current, reference = _features_path(ctx), _drift_current(ctx), _drift_reference(ctx)
    current.parent.mkdir(parents=True, exist_ok=True)
    con = floor_connection()
    jobs = [(current, ctx.rows // ctx.size, "c")]
    if not reference.exists():
        jobs.append((reference, 1, "r"))
    for target, copies, tag in jobs:
        con.execute(
            f"COPY ({_copies_sql(source, copies, tag)}) TO '{target}' "
            "(FORMAT parquet, COMPRESSION zstd)"
        )
    con.close()
    start = time.perf_counter()
    table = pq.read_table(current)
    read_s = time.perf_counter() - start
    facts = {"rows": table.num_rows, "bytes": current.stat().st_size, "pyarrow_read_s": read_s}
    (_drift_dir(ctx) / f"full-read-{ctx.rows}.json").write_text(json.dumps(facts))


def drift_ours(ctx: Ctx) -> dict[str, object]:
    """What ``drift_report`` computes, with its default config: ``read_sample`` of the current
    file and of the reference (warehouse DuckDB settings), then ``compute_drift``. The HTML
    rendering is timed apart (untimed for the ratio) and reported in the facts."""
    from assets.monitoring import DRIFT_CATEGORICAL, DRIFT_NUMERIC, read_sample

    config = _drift_config()
    warehouse = ctx.warehouse()
    current_path, reference_path = _drift_current(ctx), _drift_reference(ctx)
    with warehouse.duckdb() as con:
        with ctx.timed():
            start = time.perf_counter()
            current = read_sample(con, [current_path], config.sample_rows, config.seed)
            reference = read_sample(con, [reference_path], config.sample_rows, config.seed)
            sampled = time.perf_counter()
            summary = config.drift(reference, current)
            done = time.perf_counter()
    start_html = time.perf_counter()
    html = summary.html()
    html_s = time.perf_counter() - start_html
    # the floor's inputs: the same samples, and the report's columns and settings
    _dump(_drift_dir(ctx) / f"samples-{ctx.rows}.pkl", (current, reference))
    spec = {
        "categorical": list(DRIFT_CATEGORICAL),
        "numeric": list(DRIFT_NUMERIC),
        "drift_share": config.drift_share,
    }
    (_drift_dir(ctx) / "spec.json").write_text(json.dumps(spec))
    full = json.loads((_drift_dir(ctx) / f"full-read-{ctx.rows}.json").read_text())
    return {
        "file_rows": full["rows"],
        "file_bytes": full["bytes"],
        "sample_rows": config.sample_rows,
        "current_rows": summary.current_rows,
        "reference_rows": summary.reference_rows,
        "drifted_features": len(summary.drifted),
        "features": len(summary.features),
        "read_sample_seconds": sampled - start,
        "compute_drift_seconds": done - sampled,
        "html_seconds": html_s,
        "html_bytes": len(html),
        "pyarrow_full_read_seconds": full["pyarrow_read_s"],
    }


def drift_floor(ctx: Ctx) -> dict[str, object]:
    """Bare Evidently: ``Report([DataDriftPreset])`` on the samples clickloop's run read (left by
    it), already in memory, in a fresh process like clickloop's (both pay Evidently's first-run
    cost)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    current, reference = _load(_drift_dir(ctx) / f"samples-{ctx.rows}.pkl")
    spec = json.loads((_drift_dir(ctx) / "spec.json").read_text())
    columns = [*spec["categorical"], *spec["numeric"]]
    definition = DataDefinition(
        numerical_columns=spec["numeric"], categorical_columns=spec["categorical"]
    )
    cur, ref = current[columns], reference[columns]
    with ctx.timed():
        Report([DataDriftPreset(columns=columns, drift_share=spec["drift_share"])]).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )
    return {"sample_rows": len(cur), "reference_rows": len(ref)}


def drift_detail(row: dict[str, Any]) -> str:
    ours = row["ours"]["info"]
    text = (
        f"{ours['file_rows']:,} rows ({ours['file_bytes'] / 2**20:,.1f} MiB), samples of "
        f"{ours['current_rows']:,} + {ours['reference_rows']:,}; clickloop: read_sample "
        f"{ours['read_sample_seconds']:.1f} s, compute_drift {ours['compute_drift_seconds']:.1f} s "
        f"(HTML apart: {ours['html_seconds']:.1f} s)"
    )
    return text + f"; pyarrow read of the whole file: {ours['pyarrow_full_read_seconds']:.1f} s"


# --- The list of steps -------------------------------------------------------------------------

StepFn = Callable[[Ctx], dict[str, object]]


@dataclass(frozen=True)
class Step:
    """One measured step: clickloop's function next to its floor (None: nothing to compare)."""

    name: str
    title: str
    ours: StepFn
    floor: StepFn | None
    floor_label: str
    prepare: Callable[[Ctx], None] | None = None
    #: the steps whose files this one reads (run first, unreported, when ``--steps`` omits them)
    needs: tuple[str, ...] = ()
    #: what the step is measured at for a day's size, given the run's sizes (the table's "size");
    #: None: the day's size. An empty tuple skips the step at that size.
    points: Callable[[int, Sequence[int]], Sequence[int]] | None = None
    #: the table's last column, from the row's facts
    detail: Callable[[dict[str, Any]], str] | None = None

    def points_at(self, size: int, sizes: Sequence[int]) -> tuple[int, ...]:
        return (size,) if self.points is None else tuple(self.points(size, sizes))


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
        "search sample, training with train/validation log loss each round)",
        needs=("features",),
        detail=training_detail,
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
        "drift",
        "drift report",
        drift_ours,
        drift_floor,
        "Evidently Report([DataDriftPreset]) on the same samples, already pandas frames "
        "(no read, no prediction/target drift, no tests)",
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
        "the bare join, GROUP BYs, LEFT JOINs, Evidently DataDriftPreset on 20k-row samples",
        prepare=refresh_prepare,
        points=refresh_points,
        detail=refresh_detail,
    ),
]

NOTES: tuple[str, ...] = (
    "ratio = clickloop wall seconds / floor wall seconds, same files, same run; "
    f"DuckDB {DUCKDB_THREADS} threads and {DUCKDB_MEMORY_LIMIT} on both sides.",
    "peak = the child process's ru_maxrss (os.wait4): interpreter, imports (Dagster on the "
    "clickloop side) and loaded inputs included; RSS when the timed work started is in results.json.",
    "simulate: World construction is untimed; the simulator has no bare-library floor.",
    "write logs: clickloop renders ISO timestamps, injects faults and gzips at level 1; "
    "the floor writes the clean frames with DuckDB's own JSON and gzip defaults.",
    "ingest: DuckDB's ignore_errors does not drop bad lines: a malformed line becomes an "
    "all-NULL row and a wrongly typed value NULL, without a reason; clickloop quarantines them.",
    "ingest, clean files: pyarrow.json.read_json stops at the first bad line, so this row reads "
    "day D written again with every fault rate at 0 (clicks folder: day D's own clicks only).",
    "ad_events join: days D-1, D and D+1 are simulated at the size; clickloop reads impressions "
    "D-1, D and clicks D-1, D, D+1 (dedup, window, quarantine); the floor reads impressions D and "
    "clicks D, D+1.",
    f"feature stats: the {HISTORY_DAYS}-day window reuses day D's ad_events file under "
    f"{HISTORY_DAYS} keys (same file on both sides).",
    f"training: size = rows of day D's real features file (the features step's output at that "
    f"size); validation = every {VALID_EVERY}th row of the same file (fit_ctr_model needs one). "
    f"CtrModelConfig defaults with n_trials=0, num_boost_round={TRAIN_ROUNDS}, "
    f"early_stopping_rounds={TRAIN_ROUNDS} (cannot stop early; save_best may slice the returned "
    "model, training still runs every round); the floor trains with the params of clickloop's "
    "booster (base_params of that config: hist, max_bin 256, depth 5, learning rate 0.05, "
    "nthread 2, ...) on the model frame clickloop's model_data builds of the same rows.",
    f"scoring: measured once (first size) with min(size, {SCORING_CANDIDATES:,}) candidates: one "
    "simulated request of day D crossed with every ad of a World built with that many ads "
    "(candidate_frame, built untimed in the clickloop child); model: the training step's "
    f"({TRAIN_ROUNDS} rounds on day D at the first size); statistics: the feature stats step's "
    "file. ChampionPolicy opens its own DuckDB connection (DuckDB's default threads = cores). "
    "The size and s columns are the candidates and the median latency; ratio = ratio of medians.",
    f"drift report: measured once (first size) at the day's rows and {DRIFT_SCALE}x as many; the "
    f"bigger file is day D's features repeated {DRIFT_SCALE} times with new impression_ids, the "
    "reference is day D's features once more with other ids (one file, where the asset reads "
    "the whole training window). Both sides get DriftReportConfig's default sample size.",
    "daily refresh: what the schedule and its chain run after day D+1 ends, through Dagster "
    "(execute_in_process, SQLite instance, landing-folder log source): ingest_job of D+1, "
    "events_job of D (join, features, GX checks, Evidently drift report, online metrics), "
    "feature_stats_job of D+2. D-1, D and D+1 have the size; the older history 100k impressions a "
    "day (prepared through the same jobs, untimed). Measured at every size of the run and at 10M. "
    "The floor: the bare libraries doing the same work one after the other on the same files "
    "(see pipelines/bench_refresh.py); no checks, quarantine, accounting or run bookkeeping.",
)


def step_named(name: str) -> Step:
    for step in STEPS:
        if step.name == name:
            return step
    raise KeyError(f"no step {name!r}; steps: {[s.name for s in STEPS]}")


# --- Child processes ---------------------------------------------------------------------------


def child_main(
    role: str, step_name: str, size: int, work: Path, result: Path, rows: int | None = None
) -> int:
    """Run one role of one step in this (child) process; write its measurement to ``result``."""
    step = step_named(step_name)
    ctx = Ctx(size=size, work=work, rows=rows or size)
    work.mkdir(parents=True, exist_ok=True)
    if role == "prepare":
        if step.prepare is None:
            raise ValueError(f"step {step_name} has nothing to prepare")
        step.prepare(ctx)
        result.write_text(json.dumps({}))
        return 0
    fn = step.ours if role == "ours" else step.floor
    if fn is None:
        raise ValueError(f"step {step_name} has no floor")
    info = fn(ctx)
    if ctx.timing is None:
        raise RuntimeError(f"{step_name}/{role} never entered ctx.timed()")
    payload = {**ctx.timing.__dict__, "info": info}
    if ctx.reported_s is not None:
        payload["block_wall_s"] = payload["wall_s"]
        payload["wall_s"] = ctx.reported_s
    result.write_text(json.dumps(payload, default=str))
    return 0


@dataclass(frozen=True)
class Run:
    """One child's measurement as the parent sees it."""

    wall_s: float
    cpu_s: float
    peak_mib: float
    rss_start_mib: float
    hwm_end_mib: float
    child_wall_s: float
    info: dict[str, object]
    #: the timed block's wall time when the child reported another time (a median)
    block_wall_s: float | None = None


class ChildFailed(RuntimeError):
    """A child process exited with an error; the message holds the end of its log."""


def run_child(role: str, step: Step, size: int, work: Path, rows: int | None = None) -> Run:
    """Start one child, wait for it with ``os.wait4`` and return its timing and peak RSS."""
    rows = rows or size
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result = logs / f"{step.name}-{rows}-{role}.json"
    log = logs / f"{step.name}-{rows}-{role}.log"
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pipelines.bench", "--child", role, "--step", step.name]
    command += ["--size", str(size), "--rows", str(rows)]
    command += ["--work", str(work), "--result", str(result)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = str(DUCKDB_THREADS)  # pyarrow's and XGBoost's thread pools
    env["PYTHONWARNINGS"] = "ignore"
    start = time.perf_counter()
    with open(log, "wb") as out:
        # cwd = the scratch folder: DuckDB's spill directory (.tmp) lands there and is removed.
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=work, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: stop our child, then let the interruption through
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    child_wall = time.perf_counter() - start
    if proc.returncode != 0 or not result.exists():
        tail = log.read_text(errors="replace")[-4000:]
        raise ChildFailed(
            f"{step.name}/{role} at {rows:,} (day {size:,}) exited {proc.returncode}:\n{tail}"
        )
    payload = json.loads(result.read_text())
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    return Run(
        wall_s=payload.get("wall_s", 0.0),
        cpu_s=payload.get("cpu_s", 0.0),
        peak_mib=peak,
        rss_start_mib=payload.get("rss_start_mib", 0.0),
        hwm_end_mib=payload.get("hwm_end_mib", 0.0),
        child_wall_s=child_wall,
        info=payload.get("info", {}),
        block_wall_s=payload.get("block_wall_s"),
    )


# --- The parent: run, report -------------------------------------------------------------------


def machine() -> dict[str, object]:
    """The machine and library versions, without importing the libraries."""

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "duckdb": version("duckdb"),
        "pyarrow": version("pyarrow"),
        "pandas": version("pandas"),
        "numpy": version("numpy"),
        "xgboost": version("xgboost"),
        "load_average_start": list(os.getloadavg()),
    }


def _row(
    size: int, step: Step, ours: Run, floor: Run | None, rows: int | None = None
) -> dict[str, object]:
    def as_dict(run: Run | None) -> dict[str, object] | None:
        if run is None:
            return None
        facts: dict[str, object] = {
            "seconds": run.wall_s,
            "cpu_seconds": run.cpu_s,
            "peak_mib": run.peak_mib,
            "rss_start_mib": run.rss_start_mib,
            "hwm_end_mib": run.hwm_end_mib,
            "child_wall_seconds": run.child_wall_s,
            "info": run.info,
        }
        if run.block_wall_s is not None:
            facts["block_wall_seconds"] = run.block_wall_s
        return facts

    ratio = ours.wall_s / floor.wall_s if floor and floor.wall_s > 0 else None
    cpu_ratio = ours.cpu_s / floor.cpu_s if floor and floor.cpu_s > 0 else None
    return {
        "size": rows or size,
        "day_size": size,
        "step": step.name,
        "title": step.title,
        "floor_label": step.floor_label,
        "ours": as_dict(ours),
        "floor": as_dict(floor),
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
    }


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The report: the table, the floors, the notes and the machine."""
    lines = [
        "# clickloop benchmark",
        "",
        "| size | step | clickloop s | floor s | ratio | clickloop peak MiB | floor peak MiB "
        "| detail |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in results["rows"]:
        ours, floor = row["ours"], row["floor"]
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.2f}×"
        step = step_named(row["step"])
        detail = step.detail(row) if step.detail else ""
        digits = 3 if step.points is not None and ours["seconds"] < 10 else 2
        lines.append(
            f"| {size_label(row['size'])} | {row['title']} | {_num(ours['seconds'], digits)} | "
            f"{_num(floor and floor['seconds'], digits)} | {ratio} | {_num(ours['peak_mib'], 0)} | "
            f"{_num(floor and floor['peak_mib'], 0)} | {detail} |"
        )
    measured = {row["step"] for row in results["rows"]}
    lines += ["", "Floors:", ""]
    lines += [f"- {step.title}: {step.floor_label}" for step in STEPS if step.name in measured]
    lines += ["", "Notes:", ""]
    lines += [f"- {note}" for note in results["notes"]]
    m = results["machine"]
    lines += [
        "",
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}; Python {m['python']}, "
        f"DuckDB {m['duckdb']}, pyarrow {m['pyarrow']}, pandas {m['pandas']}, numpy {m['numpy']}, "
        f"xgboost {m['xgboost']}. Load average at start {m['load_average_start']}, "
        f"at end {m['load_average_end']}.",
        "",
        f"Total wall time: {results['total_wall_seconds']:.0f} s "
        f"(started {results['started_at']}).",
        "",
    ]
    return "\n".join(lines)


def _atomic_write_text(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _fastest(runs: Sequence[Run]) -> Run:
    """The fastest of repeated runs (the least disturbed by a busy machine), with the highest
    peak memory of them all."""
    best = min(runs, key=lambda run: run.wall_s)
    return replace(best, peak_mib=max(run.peak_mib for run in runs))


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


def run_benchmark(
    sizes: Sequence[int],
    bench_dir: Path,
    *,
    repeat: int = 1,
    keep_work: bool = False,
    steps: Sequence[str] | None = None,
    first_point_only: bool = False,
) -> dict[str, Any]:
    """Run every step (or the ``steps`` named, after the steps they need, which run unmeasured:
    clickloop's side only, not reported) at every size (ours and floor alternately ``repeat``
    times, keeping the fastest of each); write and return the results. ``first_point_only``
    (``--quick``): a step with several points (the drift report) is measured at its first."""
    selected = set(steps) if steps else {step.name for step in STEPS}
    work_root = bench_dir / "work"
    shutil.rmtree(work_root, ignore_errors=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "sizes": list(sizes),
            "duckdb_threads": DUCKDB_THREADS,
            "duckdb_memory_limit": DUCKDB_MEMORY_LIMIT,
            "seed": SEED,
            "day": DAY.isoformat(),
            "repeat": repeat,
            "steps": [step.name for step in STEPS if step.name in selected],
            "first_point_only": first_point_only,
        },
        "notes": [
            *NOTES,
            f"each time is the fastest of {repeat} run(s), clickloop and floor alternating "
            "(--repeat); the CPU-time ratio, less sensitive to a busy machine, is in results.json.",
        ],
        "rows": [],
    }
    try:
        for size in sizes:
            work = work_root / f"size-{size}"
            for step in required_steps(sorted(selected)):
                points = step.points_at(size, sizes)
                for rows in points[:1] if first_point_only else points:
                    label = f"{size_label(size)} {step.name}" + (
                        "" if rows == size else f" at {size_label(rows)}"
                    )
                    if step.prepare is not None:
                        _progress(f"{label}: preparing")
                        run_child("prepare", step, size, work, rows)
                    if step.name not in selected:
                        run = run_child("ours", step, size, work, rows)
                        _progress(f"{label}: run for the steps that need it ({run.wall_s:.2f} s)")
                        continue
                    ours_runs: list[Run] = []
                    floor_runs: list[Run] = []
                    for _ in range(repeat):
                        ours_runs.append(run_child("ours", step, size, work, rows))
                        if step.floor is not None:
                            floor_runs.append(run_child("floor", step, size, work, rows))
                    ours = _fastest(ours_runs)
                    floor = _fastest(floor_runs) if floor_runs else None
                    row = _row(size, step, ours, floor, rows)
                    row["ours"]["all_seconds"] = [run.wall_s for run in ours_runs]
                    if floor_runs:
                        row["floor"]["all_seconds"] = [run.wall_s for run in floor_runs]
                    results["rows"].append(row)
                    ratio = "" if row["ratio"] is None else f", ratio {row['ratio']:.2f}"
                    floor_s = "" if floor is None else f", floor {floor.wall_s:.2f} s"
                    _progress(f"{label}: clickloop {ours.wall_s:.2f} s{floor_s}{ratio}")
    finally:
        if not keep_work:
            shutil.rmtree(work_root, ignore_errors=True)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["total_wall_seconds"] = time.perf_counter() - started
    _atomic_write_text(bench_dir / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    _atomic_write_text(bench_dir / "results.md", markdown(results))
    return results


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.bench",
        description="clickloop's steps side by side with the bare libraries doing the same work.",
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="impressions per day (default: 1000000 5000000)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run at {QUICK_SIZE:,} (unless --sizes); the drift report at the day's rows "
        f"only (not also {DRIFT_SCALE}x)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run clickloop and floor alternately N times and keep the fastest of each (default 1)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep <data_dir>/bench/work")
    parser.add_argument(
        "--steps",
        nargs="+",
        choices=[step.name for step in STEPS],
        metavar="STEP",
        help="measure only these steps (the steps they need still run, unmeasured); "
        f"choices: {' '.join(step.name for step in STEPS)}",
    )
    # Internal: one child process of the benchmark.
    parser.add_argument("--child", choices=ROLES, help=argparse.SUPPRESS)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sizes and min(args.sizes) < 1_000:
        parser.error("sizes must be at least 1000 impressions per day")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.step, args.size, args.work, args.result, args.rows)
    sizes = args.sizes or ([QUICK_SIZE] if args.quick else list(DEFAULT_SIZES))
    results = run_benchmark(
        sizes,
        data_dir() / "bench",
        repeat=args.repeat,
        keep_work=args.keep_work,
        steps=args.steps,
        first_point_only=args.quick,
    )
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
