"""After training: scoring one request's candidates with the champion, and the drift report.

Both are measured once, at the run's first size (their ``points``): what they cost does not depend
on the day's size. Only the standard library at module level (the parent imports this module).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.harness import SEED, Ctx, dump, floor_connection, load
from bench.steps_model import FEATURE_STATS, FEATURES, feature_spec, model_path

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

    from clickloop.simulator import World, candidate_frame, draw_context

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
    the served day's statistics read once into lookups (in the warm-up call), features looked up per
    candidate, the model frame pinned to the model's categories, in-place prediction, the
    downsampling correction. The model is the training step's; one untimed warm-up call, then
    :data:`SCORING_REPS` timed calls.
    Afterwards (untimed) the model frame ``predict_ctr`` builds is left for the floor."""
    import numpy as np

    from clickloop.lookup import StatsLookup
    from clickloop.model import (
        correct_downsampled,
        downsampling_rate_of,
        load_booster,
        model_categories,
        model_frame_for,
    )
    from clickloop.ranking import ChampionPolicy

    spec = feature_spec()
    stats = ctx.table_path(FEATURE_STATS)
    booster = load_booster(model_path(ctx))
    candidates = _candidates(ctx)
    from clickloop.contract_file import load_contract
    from clickloop.privacy import pseudonymiser_for

    # the candidates carry the simulator's raw user ids; the statistics its pseudonyms
    policy = ChampionPolicy(
        "bench", booster, stats, spec, pseudonymiser=pseudonymiser_for(load_contract(), None)
    )
    first, _ = _latencies(lambda: policy.predict_ctr(candidates), 1)
    with ctx.timed():
        seconds, predictions = _latencies(lambda: policy.predict_ctr(candidates), SCORING_REPS)
    facts = _latency_facts(first[0], seconds, predictions)
    ctx.report_seconds(facts["median_s"])  # type: ignore[arg-type]
    # one more call, untimed, stage by stage (where the time goes), as predict_ctr does it
    stages: dict[str, float] = {}
    start = time.perf_counter()
    lookup = StatsLookup(stats, spec)
    categories = model_categories(booster)
    stages["read_statistics_once"] = time.perf_counter() - start
    start = time.perf_counter()
    features = lookup.features(candidates, spec.reference_position)
    stages["lookup_features"] = time.perf_counter() - start
    start = time.perf_counter()
    frame = model_frame_for(booster, features, categories)
    stages["model_frame"] = time.perf_counter() - start
    start = time.perf_counter()
    raw = booster.inplace_predict(frame)
    stages["inplace_predict"] = time.perf_counter() - start
    start = time.perf_counter()
    correct_downsampled(np.asarray(raw, dtype=np.float64), downsampling_rate_of(booster))
    stages["downsampling_correction"] = time.perf_counter() - start
    dump(_scoring_frame_path(ctx), frame)
    return {
        **facts,
        "candidates": len(candidates),
        "stages_s": stages,
    }


def scoring_floor(ctx: Ctx) -> dict[str, object]:
    """Bare XGBoost ``inplace_predict`` of the model frame clickloop's run built (same model, same
    candidates); warm-up, then the same :data:`SCORING_REPS` timed calls."""
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(model_path(ctx)))
    frame = load(_scoring_frame_path(ctx))
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
    source, current, reference = ctx.table_path(FEATURES), _drift_current(ctx), _drift_reference(ctx)
    current.parent.mkdir(parents=True, exist_ok=True)
    con = floor_connection()
    jobs = [(current, ctx.rows // ctx.size, "c")]
    if not reference.exists():
        jobs.append((reference, 1, "r"))
    for target, copies, tag in jobs:
        con.execute(
            f"COPY ({_copies_sql(source, copies, tag)}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)"
        )
    con.close()
    start = time.perf_counter()
    table = pq.read_table(current)
    read_s = time.perf_counter() - start
    facts = {"rows": table.num_rows, "bytes": current.stat().st_size, "pyarrow_read_s": read_s}
    (_drift_dir(ctx) / f"full-read-{ctx.rows}.json").write_text(json.dumps(facts))


def drift_ours(ctx: Ctx) -> dict[str, object]:
    """What the ``drift_report`` asset computes, with its default parameters: ``read_sample`` of
    the current file and of the reference (warehouse DuckDB settings), then ``compute_drift``
    (ValueDrift on every feature, the served prediction and the label; DriftedColumnsCount). The
    HTML rendering is timed apart (untimed for the ratio) and reported in the facts."""
    from clickloop.contract_file import load_contract
    from clickloop.drift import DriftColumns, DriftParams, compute_drift, read_sample

    columns = DriftColumns.of(feature_spec(), load_contract().has_served_predictions)
    params = DriftParams()
    warehouse = ctx.warehouse()
    # compute_drift imports Evidently on first use (the code location loads without it); the floor
    # imports it before its timer, so this side does too (the import alone is some 2.5 s)
    import evidently.metrics  # noqa: F401

    current_path, reference_path = _drift_current(ctx), _drift_reference(ctx)
    with warehouse.duckdb() as con:
        with ctx.timed():
            start = time.perf_counter()
            current = read_sample(con, [current_path], params.sample_rows, params.seed, columns)
            reference = read_sample(con, [reference_path], params.sample_rows, params.seed, columns)
            sampled = time.perf_counter()
            summary = compute_drift(reference, current, columns, params)
            done = time.perf_counter()
    start_html = time.perf_counter()
    html = summary.html()
    html_s = time.perf_counter() - start_html
    # the floor's inputs: the same samples, and the report's feature columns and settings
    dump(_drift_dir(ctx) / f"samples-{ctx.rows}.pkl", (current, reference))
    spec = {
        "categorical": list(columns.categorical),
        "numeric": list(columns.numeric),
        "drift_share": params.drift_share,
    }
    (_drift_dir(ctx) / "spec.json").write_text(json.dumps(spec))
    full = json.loads((_drift_dir(ctx) / f"full-read-{ctx.rows}.json").read_text())
    return {
        "file_rows": full["rows"],
        "file_bytes": full["bytes"],
        "sample_rows": params.sample_rows,
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
    """Bare Evidently: a ``Report`` of ``DriftedColumnsCount`` and a ``ValueDrift`` per feature (what
    ``DataDriftPreset`` generates, without its summary table, as clickloop's report) on the samples
    clickloop's run read (left by it), already in memory, in a fresh process like clickloop's (both
    pay Evidently's first-run cost)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    current, reference = load(_drift_dir(ctx) / f"samples-{ctx.rows}.pkl")
    spec = json.loads((_drift_dir(ctx) / "spec.json").read_text())
    columns = [*spec["categorical"], *spec["numeric"]]
    definition = DataDefinition(numerical_columns=spec["numeric"], categorical_columns=spec["categorical"])
    cur, ref = current[columns], reference[columns]
    with ctx.timed():
        metrics = [DriftedColumnsCount(columns=columns, drift_share=spec["drift_share"])]
        Report(metrics + [ValueDrift(column=c) for c in columns]).run(
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
