"""The simulator's steps and ingest: simulate a day, write its logs, type them into Parquet.

Only the standard library at module level (the parent imports this module); each function imports
what it needs in its child.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from bench.harness import (
    RAW_TABLES,
    SEED,
    Ctx,
    bench_settings,
    dump,
    floor_connection,
    load,
    sql_list,
    total_bytes,
)

KINDS = ("impressions", "clicks")
#: How a hand-written floor types the contract's field types (DuckDB) ...
DUCKDB_TYPES = {"string": "VARCHAR", "timestamp": "TIMESTAMPTZ", "int": "INTEGER", "float": "DOUBLE"}


def raw_columns() -> dict[str, dict[str, str]]:
    """The raw logs' fields as a floor types them, per log: source field -> DuckDB type, from the
    log contract (clickloop.contract_file: YAML and dataclasses, no DuckDB, no Dagster)."""
    from clickloop.contract_file import load_contract

    contract = load_contract()
    return {kind: {f.source: DUCKDB_TYPES[f.type] for f in contract.log(kind).fields} for kind in KINDS}


def log_files(landing: Path, kind: Any, day: date) -> list[Path]:
    """The log files of one day, as the landing-folder log source lists them."""
    from clickloop.landing import list_log_files

    return list_log_files(landing, kind, day)


# --- 1. the simulator: simulate, then write the logs ------------------------------------------


def simulate(ctx: Ctx, offset: int) -> Any:
    """``simulate_day`` of a neighbour day (a fresh ``World``: days are independent)."""
    from clickloop.simulator import World, simulate_day

    return simulate_day(World(SEED), ctx.day(offset), requests_per_day=ctx.requests)


def simulate_ours(ctx: Ctx) -> dict[str, object]:
    """``World`` (untimed) and ``simulate_day`` of day D (timed); saves the day for the writers."""
    from clickloop.simulator import World, simulate_day

    world = World(SEED)
    with ctx.timed():
        traffic = simulate_day(world, ctx.day(), requests_per_day=ctx.requests)
    dump(ctx.traffic_path(), traffic)
    dump(ctx.frames_path(), (traffic.impressions, traffic.clicks))
    return {"impressions": len(traffic.impressions), "clicks": len(traffic.clicks)}


def write_ours(ctx: Ctx) -> dict[str, object]:
    """``write_day`` of day D with the default fault rates: rendering, faults, gzip, manifest."""
    from clickloop.simulator import FaultRates, write_day

    traffic = load(ctx.traffic_path())
    with ctx.timed():
        manifest = write_day(traffic, ctx.landing, FaultRates(), settings=bench_settings(ctx))
    files = [ctx.landing / name for name in manifest["files"]]
    return {
        "lines": sum(f["lines"] for f in manifest["files"].values()),
        "bytes": total_bytes(files),
    }


def write_floor(ctx: Ctx) -> dict[str, object]:
    """DuckDB writes the same clean impressions and clicks frames as gzip JSON lines."""
    impressions, clicks = load(ctx.frames_path())
    con = floor_connection()
    con.register("impressions_frame", impressions)
    con.register("clicks_frame", clicks)
    targets = [ctx.floor_path("impressions.jsonl.gz"), ctx.floor_path("clicks.jsonl.gz")]
    with ctx.timed():
        for frame, target in zip(("impressions_frame", "clicks_frame"), targets, strict=True):
            con.execute(f"COPY {frame} TO '{target}' (FORMAT json, COMPRESSION gzip)")
    return {"lines": len(impressions) + len(clicks), "bytes": total_bytes(targets)}


# --- 2. ingest: JSON lines -> typed Parquet with quarantine -----------------------------------


def ingest_prepare(ctx: Ctx) -> None:
    """Simulate and write days D-1 and D+1 (the clicks of D include D-1's late clicks)."""
    from clickloop.simulator import FaultRates, write_day

    for offset in (-1, 1):
        traffic = simulate(ctx, offset)
        write_day(traffic, ctx.landing, FaultRates(), settings=bench_settings(ctx))
        del traffic


def ingest_days(
    ctx: Ctx, landing: Path, warehouse: Any, kinds: Sequence[str], offset: int
) -> dict[str, object]:
    """clickloop's ``ingest_day`` of the given logs of one day (what the raw assets run: the
    contract's typing and row rules, quarantine, atomic Parquet writes); returns the counts."""
    from clickloop.contract_file import load_contract
    from clickloop.privacy import pseudonymiser_for
    from clickloop.quarantine import ingest_day

    contract = load_contract()
    pseudonymiser = pseudonymiser_for(contract, None)  # the simulator's ids: its public key
    counts: dict[str, object] = {}
    for kind in kinds:
        files = log_files(landing, kind, ctx.day(offset))
        day = ctx.day(offset)
        done = ingest_day(warehouse, files, contract.log(kind), RAW_TABLES[kind], day, pseudonymiser)
        counts[kind] = {
            "lines": done.parsed.lines_read,
            "valid": done.parsed.valid_rows,
            "quarantined": done.parsed.quarantine.num_rows,
        }
        del done
    return counts


def ingest_ours(ctx: Ctx) -> dict[str, object]:
    """``ingest_day`` of day D's impressions and clicks: typed Parquet plus quarantine."""
    warehouse = ctx.warehouse()
    with ctx.timed():
        counts = ingest_days(ctx, ctx.landing, warehouse, KINDS, 0)
    return counts


def _duckdb_read_json_to_parquet(ctx: Ctx, landing: Path, prefix: str) -> dict[str, object]:
    con = floor_connection()
    counts: dict[str, object] = {}
    jobs = []
    for kind, columns in raw_columns().items():
        files = log_files(landing, kind, ctx.day())
        spec = "{" + ", ".join(f"'{name}': '{sql}'" for name, sql in columns.items()) + "}"
        jobs.append((kind, files, spec, ctx.floor_path(f"{prefix}-{kind}.parquet")))
    with ctx.timed():
        for kind, files, spec, target in jobs:
            (rows,) = con.execute(
                f"""COPY (SELECT * FROM read_json({sql_list(files)}, format = 'newline_delimited',
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
    from clickloop.simulator import FaultRates, write_day

    traffic = load(ctx.traffic_path())
    write_day(traffic, ctx.landing_clean, FaultRates.clean(), settings=bench_settings(ctx))


def ingest_clean_ours(ctx: Ctx) -> dict[str, object]:
    """``ingest_day`` of the clean copy of day D (only D: its clicks folder lacks D-1's)."""
    warehouse = ctx.warehouse("warehouse_clean")
    with ctx.timed():
        counts = ingest_days(ctx, ctx.landing_clean, warehouse, KINDS, 0)
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
    for kind, columns in raw_columns().items():
        schema = pa.schema([(name, types[sql]) for name, sql in columns.items()])
        files = log_files(ctx.landing_clean, kind, ctx.day())
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
