"""From typed logs to a model: the ad_events join, feature statistics, features, training.

Only the standard library at module level (the parent imports this module); each function imports
what it needs in its child. The floors' SQL (:func:`stats_floor_sql`, :func:`features_floor_sql`)
is shared with the daily refresh's floor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import (
    HISTORY_DAYS,
    RAW_TABLES,
    Ctx,
    dump,
    floor_connection,
    load,
    same_layout,
    sql_list,
)
from bench.steps_logs import ingest_days

#: The warehouse tables these steps write (clickloop's asset names).
AD_EVENTS = "ad_events"
FEATURE_STATS = "feature_stats"
FEATURES = "features"


def feature_spec() -> Any:
    """The model's features as the log contract defines them."""
    from clickloop.contract_file import load_contract
    from clickloop.features import FeatureSpec

    return FeatureSpec.from_contract(load_contract())


# --- 3. the ad_events join ---------------------------------------------------------------------


def join_prepare(ctx: Ctx) -> None:
    """Ingest (with clickloop, untimed) what day D's join reads besides day D itself: the
    impressions and clicks of D-1 and the clicks of D+1."""
    warehouse = ctx.warehouse()
    ingest_days(ctx, ctx.landing, warehouse, ("impressions", "clicks"), -1)
    ingest_days(ctx, ctx.landing, warehouse, ("clicks",), 1)


def _raw_paths(ctx: Ctx, warehouse: Any, kind: str, offsets: Sequence[int]) -> list[tuple[str, Path]]:
    keys = [ctx.key(o) for o in offsets]
    paths = warehouse.require_partition_paths(RAW_TABLES[kind], keys)
    for offset, path in zip(offsets, paths, strict=True):
        same_layout(path, ctx.table_path(RAW_TABLES[kind], offset))
    return list(zip(keys, paths, strict=True))


def join_ours(ctx: Ctx) -> dict[str, object]:
    """``join_events`` of day D over impressions D-1, D and clicks D-1, D, D+1, with the log
    contract's attribution window."""
    from clickloop.contract_file import load_contract
    from clickloop.events import join_events

    warehouse = ctx.warehouse()
    target = warehouse.partition_path(AD_EVENTS, ctx.key())
    same_layout(target, ctx.table_path(AD_EVENTS))
    impressions = _raw_paths(ctx, warehouse, "impressions", (-1, 0))
    clicks = _raw_paths(ctx, warehouse, "clicks", (-1, 0, 1))
    window = load_contract().attribution_window_hours
    with warehouse.duckdb() as con:
        with ctx.timed():
            accounting = join_events(
                con,
                ctx.key(),
                impressions,
                clicks,
                window,
                target,
                warehouse.quarantine_path(AD_EVENTS, ctx.key()),
            )
    return {"events": accounting.events, "clicked": accounting.clicked}


def join_floor(ctx: Ctx) -> dict[str, object]:
    """Bare DuckDB: day D's impressions LEFT JOIN the first click per impression (clicks of D and
    D+1), written to Parquet; no deduplication, window, quarantine or ordering."""
    con = floor_connection()
    impressions = ctx.table_path(RAW_TABLES["impressions"], 0)
    clicks = [ctx.table_path(RAW_TABLES["clicks"], 0), ctx.table_path(RAW_TABLES["clicks"], 1)]
    target = ctx.floor_path("ad_events.parquet")
    with ctx.timed():
        (rows,) = con.execute(
            f"""COPY (
                SELECT i.* EXCLUDE (source_file, line_number),
                       CAST(c.click_ts IS NOT NULL AS TINYINT) AS clicked, c.click_ts
                FROM read_parquet('{impressions}') i
                LEFT JOIN (SELECT impression_id, min(ts) AS click_ts
                           FROM read_parquet({sql_list(clicks)}) GROUP BY 1) c
                USING (impression_id)
            ) TO '{target}' (FORMAT parquet, COMPRESSION zstd)"""
        ).fetchone()
    return {"events": rows}


# --- 4. features: the statistics of a 7-day window, then the features of day D ----------------


def _history(ctx: Ctx) -> list[tuple[str, Path]]:
    """The 7-day window: day D's ad_events file under the keys D-7 .. D-1 (one day simulated)."""
    return [(ctx.key(-k), ctx.table_path(AD_EVENTS)) for k in range(HISTORY_DAYS, 0, -1)]


def stats_ours(ctx: Ctx) -> dict[str, object]:
    """``build_feature_stats`` of day D over the 7-day window."""
    from clickloop.features import build_feature_stats

    spec = feature_spec()
    warehouse = ctx.warehouse()
    target = warehouse.partition_path(FEATURE_STATS, ctx.key())
    same_layout(target, ctx.table_path(FEATURE_STATS))
    history = _history(ctx)
    with warehouse.duckdb() as con:
        with ctx.timed():
            summary = build_feature_stats(con, spec, ctx.key(), history, target)
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
    sql = stats_floor_sql(f"read_parquet({sql_list(files)})", f"read_parquet('{files[-1]}')")
    target = ctx.floor_path("feature_stats.parquet")
    with ctx.timed():
        (rows,) = con.execute(f"COPY ({sql}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)").fetchone()
    return {"rows": rows}


def features_ours(ctx: Ctx) -> dict[str, object]:
    """``build_features`` of day D's events with the statistics of the window."""
    from clickloop.features import build_features

    spec = feature_spec()
    warehouse = ctx.warehouse()
    target = warehouse.partition_path(FEATURES, ctx.key())
    same_layout(target, ctx.table_path(FEATURES))
    with warehouse.duckdb() as con:
        with ctx.timed():
            build_features(con, spec, ctx.table_path(AD_EVENTS), ctx.table_path(FEATURE_STATS), target)
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
    sql = features_floor_sql(ctx.table_path(AD_EVENTS), ctx.table_path(FEATURE_STATS))
    with ctx.timed():
        (rows,) = con.execute(f"COPY ({sql}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)").fetchone()
    return {"rows": rows}


# --- 5. training: fit_ctr_model against bare xgboost.train -------------------------------------

#: Boosting rounds of both sides of the training step (early stopping can never end it sooner).
TRAIN_ROUNDS = 100
#: The validation rows fit_ctr_model needs: every n-th row of the same day (evaluation only).
VALID_EVERY = 10


def training_dir(ctx: Ctx) -> Path:
    return ctx.work / "training"


def model_path(ctx: Ctx) -> Path:
    """The training step's model file (the scoring step serves it)."""
    return training_dir(ctx) / "model.ubj"


def _training_params() -> Any:
    """The training defaults, no search, exactly :data:`TRAIN_ROUNDS` rounds: with
    ``early_stopping_rounds`` = the rounds, the callback can never stop early."""
    from clickloop.training import TrainingParams

    return TrainingParams(n_trials=0, num_boost_round=TRAIN_ROUNDS, early_stopping_rounds=TRAIN_ROUNDS)


def _training_tables(ctx: Ctx) -> tuple[Any, Any]:
    """Training rows: all of day D's features; validation: every :data:`VALID_EVERY`-th row."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(ctx.table_path(FEATURES))
    return table, table.take(np.arange(0, table.num_rows, VALID_EVERY))


def training_ours(ctx: Ctx) -> dict[str, object]:
    """``fit_ctr_model`` (n_trials=0, 100 rounds) on Arrow tables of day D's features: model frames,
    QuantileDMatrix of train and validation, training with evaluation.

    Afterwards (untimed, once the fit's matrices are freed) it leaves the floor's inputs: the
    model frame and labels of the same training rows (``model_data``, as ``fit_ctr_model`` builds
    them) and the parameters the booster was trained with; and the model, which the scoring step
    serves."""
    from clickloop.model import save_booster
    from clickloop.training import fit_ctr_model, model_data

    spec = feature_spec()
    train, valid = _training_tables(ctx)
    params = _training_params()
    with ctx.timed():
        fit = fit_ctr_model(spec, train, valid, params, rate=1.0)
    final = fit.final
    folder = training_dir(ctx)
    save_booster(final.booster, model_path(ctx))
    (folder / "params.json").write_text(json.dumps(final.params))
    data = model_data(spec, train)
    dump(folder / "floor-frame.pkl", (data.features, data.labels))
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
        "search_max_rows": params.search_max_rows,
        "params": final.params,
    }


def training_floor(ctx: Ctx) -> dict[str, object]:
    """Bare XGBoost: ``QuantileDMatrix`` of the same model frame, ``xgboost.train`` with the
    parameters clickloop's booster was trained with, 100 rounds, no evaluation sets."""
    import xgboost as xgb

    frame, labels = load(training_dir(ctx) / "floor-frame.pkl")
    params = json.loads((training_dir(ctx) / "params.json").read_text())
    with ctx.timed():
        start = time.perf_counter()
        dtrain = xgb.QuantileDMatrix(frame, label=labels, enable_categorical=True, max_bin=params["max_bin"])
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
        f"{ours['frames_and_matrices_seconds']:.1f} s, search {ours['search_seconds']:.1f} s "
        f"(n_trials=0), train + evals {ours['train_seconds']:.1f} s"
    )
    if floor:
        text += f"; floor: DMatrix {floor['dmatrix_seconds']:.1f} s, train {floor['train_seconds']:.1f} s"
    return text
