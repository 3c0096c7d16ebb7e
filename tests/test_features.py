"""Point-in-time features on real Parquet files in DuckDB, the model frame, the GX check, Dagster.

``ad_events`` partitions are written by hand (small synthetic days with the real schema); the
statistics and features are then computed by the module's own functions and assets.
"""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import xgboost as xgb
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    asset,
    materialize,
)

from assets.expectations import outcome_markdown
from assets.features import (
    CATEGORICAL_FEATURES,
    DEFAULT_CTR,
    FEATURE_COLUMNS,
    FEATURE_WINDOW_DAYS,
    FEATURES_TABLE_COLUMNS,
    GLOBAL_KEY_TYPE,
    HISTORICAL_FEATURES,
    LABEL,
    NUMERIC_FEATURES,
    PRIOR_STRENGTH,
    REFERENCE_POSITION,
    add_features,
    build_feature_stats,
    build_features,
    candidate_features,
    check_features,
    feature_checks,
    feature_stats,
    features,
    features_expectations,
    model_categories,
    to_model_frame,
)
from assets.partitions import daily_partitions
from resources.warehouse import Warehouse

KEYS = daily_partitions.get_partition_keys()[:10]
D = KEYS[8]  # a day with a full window behind it (7 days unless CLICKLOOP_FEATURE_WINDOW_DAYS)
TS = pa.timestamp("us", tz="UTC")

EVENTS_SCHEMA = pa.schema(
    [
        ("impression_id", pa.string()),
        ("ts", TS),
        ("request_id", pa.string()),
        ("user_id", pa.string()),
        ("user_segment", pa.string()),
        ("ad_id", pa.string()),
        ("campaign_id", pa.string()),
        ("advertiser_id", pa.string()),
        ("ad_category", pa.string()),
        ("site_id", pa.string()),
        ("site_category", pa.string()),
        ("device_type", pa.string()),
        ("os", pa.string()),
        ("country", pa.string()),
        ("position", pa.int32()),
        ("bid_cpc", pa.float64()),
        ("model_version", pa.string()),
        ("predicted_ctr", pa.float64()),
        ("clicked", pa.int8()),
        ("click_id", pa.string()),
        ("click_ts", TS),
        ("click_delay_s", pa.float64()),
    ]
)
SITE_CATEGORY = {"s0": "news", "s1": "sports", "s2": "games", "s3": None}


def at(day: str, seconds: float) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=timezone.utc) + timedelta(seconds=seconds)


def event(day: str, impression_id: str, **values: object) -> dict[str, object]:
    """One ad_events row of ``day`` with plausible defaults for every column."""
    row: dict[str, object] = {
        "impression_id": impression_id,
        "ts": at(day, 3600),
        "request_id": f"r-{impression_id}",
        "user_id": "u0",
        "user_segment": "casual",
        "ad_id": "a0",
        "campaign_id": "c0",
        "advertiser_id": "adv0",
        "ad_category": "games",
        "site_id": "s0",
        "site_category": "news",
        "device_type": "mobile",
        "os": "ios",
        "country": "US",
        "position": 1,
        "bid_cpc": 0.5,
        "model_version": "random-v0",
        "predicted_ctr": 0.03,
        "clicked": 0,
    }
    row.update(values)
    clicked = bool(row["clicked"])
    row.setdefault("click_id", f"c-{impression_id}" if clicked else None)
    row.setdefault("click_ts", row["ts"] + timedelta(seconds=30) if clicked else None)
    row.setdefault("click_delay_s", 30.0 if clicked else None)
    return row


def flipped(row: dict[str, object]) -> dict[str, object]:
    """The same event with the opposite label (and click columns to match)."""
    kept = {
        k: v
        for k, v in row.items()
        if k not in ("impression_id", "click_id", "click_ts", "click_delay_s", "clicked")
    }
    return event(
        str(row["ts"].date()), str(row["impression_id"]), clicked=1 - int(row["clicked"]), **kept
    )


def events_table(rows: list[dict[str, object]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA)


def synthetic_day(day: str, n: int = 40, seed: int = 0) -> list[dict[str, object]]:
    """``n`` events of ``day``: 6 ads of 3 advertisers, 4 sites (one without category), 10 users."""
    rng = np.random.default_rng([seed, int(day.replace("-", ""))])
    rows = []
    for i in range(n):
        ad = int(rng.integers(6))
        site = f"s{rng.integers(4)}"
        rows.append(
            event(
                day,
                f"{day}-{i}",
                ts=at(day, float(rng.uniform(0, 86_399))),
                user_id=f"u{rng.integers(10)}",
                user_segment=str(rng.choice(["casual", "gamer", "shopper"])),
                ad_id=f"a{ad}",
                campaign_id=f"c{ad // 2}",
                advertiser_id=f"adv{ad % 3}",
                ad_category=str(rng.choice(["games", "travel"])),
                site_id=site,
                site_category=SITE_CATEGORY[site],
                device_type=str(rng.choice(["mobile", "desktop"])),
                os=str(rng.choice(["ios", "android", "windows"])),
                country=["US", "DE", None][int(rng.integers(3))],
                position=int(1 + i % 2),
                clicked=int(rng.random() < 0.1 + 0.05 * ad),
            )
        )
    return rows


@pytest.fixture()
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(data_dir=str(tmp_path / "data"))


@pytest.fixture()
def ten_days(warehouse: Warehouse) -> Warehouse:
    """ad_events of the first 10 days, 40 synthetic events each."""
    for key in KEYS:
        warehouse.write_partition("ad_events", key, events_table(synthetic_day(key)))
    return warehouse


def history_of(day: str) -> list[str]:
    """The window's days before ``day`` among KEYS (what the asset's partition mapping gives)."""
    i = KEYS.index(day)
    return KEYS[max(0, i - FEATURE_WINDOW_DAYS - 1) : max(0, i - 1)]


def compute(wh: Warehouse, day: str, history: list[str] | None = None) -> pa.Table:
    """feature_stats and features of ``day`` by the module's functions; the features table."""
    keys = history_of(day) if history is None else history
    stats = wh.partition_path("feature_stats", day)
    target = wh.partition_path("features", day)
    with wh.duckdb() as con:
        build_feature_stats(con, day, [(k, wh.partition_path("ad_events", k)) for k in keys], stats)
        build_features(con, wh.partition_path("ad_events", day), stats, target)
    return pq.read_table(target)


def by_id(table: pa.Table) -> dict[str, dict[str, object]]:
    return {r["impression_id"]: r for r in table.to_pylist()}


# --- Point in time -----------------------------------------------------------------------------


def test_features_of_a_day_ignore_its_own_and_later_events(ten_days: Warehouse) -> None:
    wh = ten_days
    first = compute(wh, D)
    first_stats = wh.partition_path("feature_stats", D).read_bytes()
    assert first.column_names == list(FEATURES_TABLE_COLUMNS)
    assert first.num_rows == 40

    # Rewrite day D (every label flipped, new rows for existing ads) and the days after it.
    for key in (D, KEYS[9]):
        rows = [flipped(r) for r in synthetic_day(key)]
        rows += [event(key, f"{key}-extra-{i}", ad_id=f"a{i % 6}", clicked=1) for i in range(30)]
        wh.write_partition("ad_events", key, events_table(rows))
    second = compute(wh, D)

    assert wh.partition_path("feature_stats", D).read_bytes() == first_stats
    assert second.num_rows == 70
    again = by_id(second)
    for impression_id, row in by_id(first).items():
        assert {c: again[impression_id][c] for c in FEATURE_COLUMNS} == {
            c: row[c] for c in FEATURE_COLUMNS
        }
        assert again[impression_id][LABEL] == 1 - row[LABEL]  # the label did change


def test_own_day_clicks_never_enter_own_features(warehouse: Warehouse) -> None:
    wh = warehouse
    prev, day = KEYS[0], KEYS[1]
    wh.write_partition(
        "ad_events",
        prev,
        events_table([event(prev, f"p{i}", ad_id="old", user_id="u1") for i in range(10)]),
    )
    today = [event(day, f"o{i}", ad_id="old", user_id="u1", clicked=1) for i in range(5)]
    today += [event(day, f"f{i}", ad_id="fresh", user_id="u2", clicked=1) for i in range(5)]
    wh.write_partition("ad_events", day, events_table(today))

    rows = by_id(compute(wh, day, [prev]))
    # history: 10 impressions of "old", no click: the prior is 0, all 10 clicks of today are unseen
    assert all(
        r["hist_ad_impressions"] == 10 and r["hist_ad_ctr"] == 0.0
        for r in rows.values()
        if r["ad_id"] == "old"
    )
    assert all(
        r["hist_ad_impressions"] == 0 and r["hist_ad_ctr"] == 0.0
        for r in rows.values()
        if r["ad_id"] == "fresh"
    )
    assert rows["o0"]["user_impressions_24h"] == 10
    assert rows["f0"]["user_impressions_24h"] == 0  # today's 5 impressions of u2 do not count


def test_history_in_or_after_the_day_is_refused(ten_days: Warehouse) -> None:
    wh = ten_days
    with wh.duckdb() as con, pytest.raises(ValueError, match="strictly before"):
        build_feature_stats(
            con,
            D,
            [(k, wh.partition_path("ad_events", k)) for k in (KEYS[7], D)],
            wh.partition_path("feature_stats", D),
        )


# --- Smoothing, unseen keys, first day ---------------------------------------------------------


def test_smoothing_unseen_keys_and_previous_day_users(warehouse: Warehouse) -> None:
    wh = warehouse
    d0, d1, d2 = KEYS[:3]
    # d0: ad a1 10 impressions / 5 clicks on s3 (no site category); users u1 x5, u2 x5
    wh.write_partition(
        "ad_events",
        d0,
        events_table(
            [
                event(
                    d0,
                    f"a{i}",
                    ad_id="a1",
                    site_id="s3",
                    site_category=None,
                    user_id=f"u{1 + i // 5}",
                    clicked=int(i < 5),
                )
                for i in range(10)
            ]
        ),
    )
    # d1 (the previous day of d2): ad a2, 190 impressions, 5 clicks; u1 seen 3 times
    wh.write_partition(
        "ad_events",
        d1,
        events_table(
            [
                event(
                    d1,
                    f"b{i}",
                    ad_id="a2",
                    advertiser_id="adv2",
                    user_id="u1" if i < 3 else "u9",
                    clicked=int(i < 5),
                )
                for i in range(190)
            ]
        ),
    )
    wh.write_partition(
        "ad_events",
        d2,
        events_table(
            [
                event(
                    d2,
                    "seen",
                    ad_id="a1",
                    site_id="s3",
                    site_category=None,
                    user_id="u1",
                    ts=at(d2, 23 * 3600 + 59 * 60),
                    position=2,
                ),
                event(d2, "seen_other_category", ad_id="a1", site_category="news", user_id="u2"),
                event(
                    d2,
                    "new",
                    ad_id="zz",
                    advertiser_id="new-adv",
                    site_id="new-site",
                    user_id="new-user",
                ),
            ]
        ),
    )
    rows = by_id(compute(wh, d2, [d0, d1]))
    prior = 10 / 200
    m = PRIOR_STRENGTH

    seen = rows["seen"]
    assert (seen["hour"], seen["weekday"], seen["position"]) == (
        23,
        5,
        2,
    )  # 2026-10-03 is a Saturday
    assert seen["hist_ad_impressions"] == 10
    assert seen["hist_ad_ctr"] == pytest.approx((5 + m * prior) / (10 + m))
    assert seen["hist_ad_site_category_impressions"] == 10  # NULL category is a category of its own
    assert seen["hist_ad_site_category_ctr"] == pytest.approx((5 + m * prior) / (10 + m))
    assert seen["hist_advertiser_impressions"] == 10  # adv0 had only a1's rows
    assert seen["hist_site_impressions"] == 10
    assert seen["user_impressions_24h"] == 3  # u1 on d1 only; its 5 of d0 are not "24 h"

    other = rows["seen_other_category"]
    assert other["hist_ad_impressions"] == 10
    assert other["hist_ad_site_category_impressions"] == 0
    assert other["hist_ad_site_category_ctr"] == pytest.approx(prior)
    assert other["hist_site_impressions"] == 190  # s0 is d1's site
    assert other["hist_site_ctr"] == pytest.approx((5 + m * prior) / (190 + m))
    assert other["user_impressions_24h"] == 0  # u2 was seen on d0 only

    new = rows["new"]
    assert all(new[f] == 0 for f in HISTORICAL_FEATURES if not f.endswith("_ctr"))
    assert all(new[f] == pytest.approx(prior) for f in HISTORICAL_FEATURES if f.endswith("_ctr"))


def test_first_day_has_the_default_prior(ten_days: Warehouse) -> None:
    table = compute(ten_days, KEYS[0], [])
    stats = pq.read_table(ten_days.partition_path("feature_stats", KEYS[0])).to_pylist()
    assert stats == [
        {
            "key_type": GLOBAL_KEY_TYPE,
            "key1": None,
            "key2": None,
            "impressions": 0,
            "clicks": 0,
            "ctr": DEFAULT_CTR,
        }
    ]
    for name in HISTORICAL_FEATURES:
        expected = DEFAULT_CTR if name.endswith("_ctr") else 0
        assert pc.all(pc.equal(table.column(name), expected)).as_py(), name


# --- One definition for training and serving ---------------------------------------------------


def test_serving_candidates_get_the_training_features(ten_days: Warehouse) -> None:
    wh = ten_days
    training = compute(wh, D)
    events = pq.read_table(wh.partition_path("ad_events", D))
    stats = wh.partition_path("feature_stats", D)
    candidates = events.drop_columns(["position", "clicked", "click_id", "click_ts"]).take(
        np.arange(events.num_rows)[::-1]  # any order: the result follows its input
    )
    with wh.duckdb() as con:
        served = candidate_features(con, candidates, stats)
        relogged = add_features(
            con, f"SELECT * FROM read_parquet('{wh.partition_path('ad_events', D)}')", stats
        )

    assert served.column("impression_id").equals(candidates.column("impression_id"))
    assert pc.all(pc.equal(served.column("position"), REFERENCE_POSITION)).as_py()
    assert served.column_names[-len(FEATURE_COLUMNS) :] == list(FEATURE_COLUMNS)
    train_rows, served_rows = by_id(training), by_id(served)
    same = [c for c in FEATURE_COLUMNS if c != "position"]
    for impression_id, row in train_rows.items():
        assert {c: served_rows[impression_id][c] for c in same} == {c: row[c] for c in same}
    relogged_rows = by_id(relogged)
    assert all(
        {c: relogged_rows[i][c] for c in FEATURE_COLUMNS} == {c: r[c] for c in FEATURE_COLUMNS}
        for i, r in train_rows.items()
    )


def test_missing_input_columns_are_named(ten_days: Warehouse) -> None:
    wh = ten_days
    compute(wh, D)
    events = pq.read_table(wh.partition_path("ad_events", D)).drop_columns(["site_category"])
    with wh.duckdb() as con, pytest.raises(ValueError, match="site_category"):
        candidate_features(con, events, wh.partition_path("feature_stats", D))


# --- The model frame and categories XGBoost has not seen ---------------------------------------


def test_model_frame_and_unseen_categories(ten_days: Warehouse) -> None:
    wh = ten_days
    train = pa.concat_tables([compute(wh, k) for k in KEYS[6:9]])
    frame = to_model_frame(train)
    assert list(frame.columns) == list(FEATURE_COLUMNS)
    assert all(str(frame[c].dtype) == "category" for c in CATEGORICAL_FEATURES)
    assert all(str(frame[c].dtype) == "float32" for c in NUMERIC_FEATURES)
    assert frame["country"].isna().any()  # null context stays missing
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "max_cat_to_onehot": 1},
        xgb.DMatrix(frame, label=train.column(LABEL).to_numpy(), enable_categorical=True),
        num_boost_round=8,
    )
    categories = model_categories(booster)
    assert categories["device_type"] == ["desktop", "mobile"]

    rows = compute(wh, KEYS[9]).slice(0, 6)
    novel = rows.set_column(
        rows.column_names.index("device_type"), "device_type", pa.array(["smartwatch"] * 6)
    ).set_column(rows.column_names.index("advertiser_id"), "advertiser_id", pa.array(["new"] * 6))
    with pytest.raises(xgb.core.XGBoostError, match="not in the training set"):
        booster.inplace_predict(to_model_frame(novel))  # the hazard the categories argument avoids
    missing = novel.set_column(
        novel.column_names.index("device_type"), "device_type", pa.nulls(6, pa.string())
    ).set_column(
        novel.column_names.index("advertiser_id"), "advertiser_id", pa.nulls(6, pa.string())
    )
    np.testing.assert_array_equal(
        booster.inplace_predict(to_model_frame(novel, categories)),
        booster.inplace_predict(to_model_frame(missing, categories)),
    )
    # Known categories are re-coded by name: alone, "mobile" and "US" get code 0 (training: 1), yet
    # the frame scores exactly like the one pinned to the training categories.
    known = rows.set_column(
        rows.column_names.index("device_type"), "device_type", pa.array(["mobile"] * 6)
    ).set_column(rows.column_names.index("country"), "country", pa.array(["US"] * 6))
    alone, pinned = to_model_frame(known), to_model_frame(known, categories)
    assert (alone["device_type"].cat.codes == 0).all() and (
        pinned["device_type"].cat.codes == 1
    ).all()
    np.testing.assert_array_equal(booster.inplace_predict(alone), booster.inplace_predict(pinned))
    with pytest.raises(ValueError, match="no value"):
        to_model_frame(missing)  # XGBoost cannot take a categorical column without categories
    with pytest.raises(ValueError, match="model's categories"):
        to_model_frame(rows, {})


# --- Great Expectations ------------------------------------------------------------------------


def test_suite_passes_good_features_and_fails_bad_ones(ten_days: Warehouse) -> None:
    good = compute(ten_days, D).to_pandas()
    outcome = check_features(good)
    assert outcome.success, outcome_markdown(outcome)

    bad = good.copy()
    bad.loc[[0, 5], "hist_ad_ctr"] = 1.5
    bad.loc[3, "hour"] = 24
    bad.loc[4, "hist_site_impressions"] = -1
    outcome = check_features(bad)
    assert outcome.failed_names == (
        "hour_range",
        "hist_ad_ctr_range",
        "hist_site_impressions_range",
    )
    assert outcome["hist_ad_ctr_range"].unexpected_count == 2

    nulls = good.copy()
    nulls.loc[1, "hist_advertiser_ctr"] = None
    assert check_features(nulls).failed_names == ("hist_advertiser_ctr_not_null",)


# --- Dagster -----------------------------------------------------------------------------------


def test_assets_and_blocking_check_in_dagster(ten_days: Warehouse) -> None:
    (spec,) = features_expectations.check_specs
    assert spec.blocking and spec.asset_key == AssetKey("features")
    assert feature_checks == [features_expectations]
    graph = [
        AssetSpec("ad_events", partitions_def=daily_partitions),
        feature_stats,
        features,
        *feature_checks,
    ]

    result = materialize(graph, partition_key=D, resources={"warehouse": ten_days})
    assert result.success
    (stats_mat,) = result.asset_materializations_for_node("feature_stats")
    assert stats_mat.metadata["history_window"].value == ", ".join(history_of(D))
    (features_mat,) = result.asset_materializations_for_node("features")
    assert features_mat.metadata["dagster/row_count"].value == 40
    assert 0 <= features_mat.metadata["unseen_ads_share"].value <= 1
    assert "hist_ad_ctr" in features_mat.metadata["numeric_features"].value
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.partition == D
    assert pq.read_table(ten_days.partition_path("features", D)).equals(compute(ten_days, D))

    first = materialize(
        graph, partition_key=KEYS[0], resources={"warehouse": ten_days}, selection=[feature_stats]
    )
    (first_mat,) = first.asset_materializations_for_node("feature_stats")
    assert first_mat.metadata["history_days"].value == 0
    assert first_mat.metadata["prior_ctr"].value == DEFAULT_CTR


def test_failed_check_blocks_training(ten_days: Warehouse) -> None:
    """A features partition with a CTR above 1 fails the blocking check; downstream never runs."""
    good = compute(ten_days, D)

    @asset(name="features", partitions_def=daily_partitions)
    def broken_features(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
        ctr = pc.if_else(
            pc.equal(good.column("impression_id"), good["impression_id"][0]),
            1.5,
            good.column("hist_ad_ctr"),
        )
        table = good.set_column(good.column_names.index("hist_ad_ctr"), "hist_ad_ctr", ctr)
        warehouse.write_partition("features", context.partition_key, table)
        return MaterializeResult()

    @asset(partitions_def=daily_partitions, deps=[broken_features])
    def training_set() -> MaterializeResult:
        return MaterializeResult()

    result = materialize(
        [broken_features, training_set, features_expectations],
        partition_key=D,
        resources={"warehouse": ten_days},
        raise_on_error=False,
    )
    assert not result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["failed"].value == ["hist_ad_ctr_range"]
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert materialized == {AssetKey("features")}
