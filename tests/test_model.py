"""The time split, negative downsampling, training with early stopping and the saved model.

Features partitions are synthetic days with the real schema of ``features`` and a known click
probability (:func:`true_ctr`), so a trained model has a signal to find and a truth to match.
"""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import xgboost as xgb
from dagster import AssetKey, AssetSpec, materialize

from assets.features import FEATURE_COLUMNS, FEATURES_TABLE_COLUMNS, LABEL
from assets.model import (
    DOWNSAMPLING_ATTR,
    SPLIT_COLUMN,
    TEST_SET,
    TRAIN,
    TRAINING_SET,
    VALIDATION,
    CtrModelConfig,
    base_params,
    TimeSplit,
    build_matrices,
    build_test_set,
    build_training_set,
    choose_split,
    correct_downsampled,
    ctr_model,
    feature_importance,
    fit_ctr_model,
    keep_row_sql,
    load_booster,
    predict_ctr,
    read_model_manifest,
    read_split_manifest,
    save_booster,
    set_path,
    train_booster,
    training_and_test_sets,
    training_frames,
)
from assets.partitions import daily_partitions
from resources.tracking import ModelRegistry
from resources.warehouse import Warehouse

KEYS = daily_partitions.get_partition_keys()[:8]
SEGMENTS = ("casual", "gamer", "shopper", "traveler")
AD_CATEGORIES = ("casual_games", "games", "shopping", "travel")
DEVICES = ("mobile", "desktop", "tablet")
COUNTRIES = ("US", "DE", "FR", "BR")
SITES = tuple(f"s{i}" for i in range(8))
SITE_CATEGORIES = ("news", "sports", "games", "news", "travel", "sports", "games", "news")
STRING_COLUMNS = {
    "impression_id", "request_id", "ad_id", "campaign_id", "model_version", "user_segment",
    "ad_category", "site_id", "site_category", "device_type", "os", "country", "advertiser_id",
}
INT_COLUMNS = {"hour", "weekday", "position"}
#: The columns the synthetic world's click probability depends on.
TRUTH_COLUMNS = ("user_segment", "ad_category", "device_type", "ad_id", "position")


def column_type(name: str) -> pa.DataType:
    """The Arrow type ``features`` writes for a column (as DuckDB types it)."""
    if name == "ts":
        return pa.timestamp("us", tz="UTC")
    if name == LABEL:
        return pa.int8()
    if name in STRING_COLUMNS:
        return pa.string()
    if name in INT_COLUMNS:
        return pa.int32()
    if name.endswith("_impressions") or name == "user_impressions_24h":
        return pa.int64()
    return pa.float64()


SCHEMA = pa.schema([(c, column_type(c)) for c in FEATURES_TABLE_COLUMNS])


def ad_quality(ad_ids: np.ndarray) -> np.ndarray:
    """A fixed quality in [-1, 1] per ad id (``a<k>``)."""
    k = np.array([int(a[1:]) for a in ad_ids])
    return ((k * 37) % 17) / 8.0 - 1.0


def true_ctr(rows: dict[str, np.ndarray]) -> np.ndarray:
    """The click probability of the synthetic world: segment-category affinity, device, ad
    quality and an examination factor for the second slot."""
    segment = np.searchsorted(SEGMENTS, rows["user_segment"])
    category = np.searchsorted(AD_CATEGORIES, rows["ad_category"])
    logit = (
        -3.4
        + 2.0 * (segment == category)
        + 0.7 * (rows["device_type"] == "mobile")
        - 0.9 * (rows["device_type"] == "tablet")
        + 1.2 * ad_quality(rows["ad_id"])
    )
    examination = np.where(np.asarray(rows["position"]) == 1, 1.0, 0.6)
    return examination / (1.0 + np.exp(-logit))


def synthetic_day(day: str, n: int = 3000, seed: int = 0) -> pa.Table:
    """``n`` features rows of ``day``; ads a0..a<199 + 30 per day> (later days bring new ads)."""
    index = list(daily_partitions.get_partition_keys()).index(day)
    rng = np.random.default_rng([seed, index])
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    ads = np.array([f"a{k}" for k in rng.integers(0, 200 + 30 * index, n)])
    sites = rng.integers(0, len(SITES), n)
    rows: dict[str, np.ndarray] = {
        "user_segment": rng.choice(SEGMENTS, n),
        "ad_category": rng.choice(AD_CATEGORIES, n),
        "device_type": rng.choice(DEVICES, n, p=[0.6, 0.3, 0.1]),
        "ad_id": ads,
        "position": np.tile([1, 2], n // 2 + 1)[:n],
    }
    p = true_ctr(rows)
    quality = ad_quality(ads)
    seconds = np.sort(rng.uniform(0, 86_399, n))
    data = {
        **rows,
        "impression_id": np.array([f"{day}-{i}" for i in range(n)]),
        "request_id": np.array([f"{day}-r{i // 2}" for i in range(n)]),
        "ts": [start + timedelta(seconds=float(s)) for s in seconds],
        LABEL: (rng.random(n) < p).astype(np.int8),
        "campaign_id": np.array([f"c{int(a[1:]) // 4}" for a in ads]),
        "bid_cpc": rng.uniform(0.1, 2.0, n),
        "model_version": np.full(n, "random-v0"),
        "predicted_ctr": np.full(n, 0.03),
        "site_id": np.array(SITES)[sites],
        "site_category": np.array(SITE_CATEGORIES)[sites],
        "os": rng.choice(("ios", "android", "windows"), n),
        "country": rng.choice(COUNTRIES, n),
        "advertiser_id": np.array([f"adv{int(a[1:]) % 6}" for a in ads]),
        "hour": (seconds // 3600).astype(np.int32),
        "weekday": np.full(n, datetime.fromisoformat(day).weekday(), dtype=np.int32),
        "hist_ad_ctr": 1.0 / (1.0 + np.exp(-(-3.0 + 1.2 * quality + rng.normal(0, 0.3, n)))),
        "user_impressions_24h": rng.integers(0, 20, n),
    }
    for name in FEATURE_COLUMNS:
        if name not in data:  # the other history features: constant (no signal)
            data[name] = np.zeros(n)
    return pa.table({c: pa.array(data[c], SCHEMA.field(c).type) for c in SCHEMA.names})


def write_days(warehouse: Warehouse, keys: list[str], n: int = 3000) -> None:
    for key in keys:
        warehouse.write_partition("features", key, synthetic_day(key, n))


@pytest.fixture()
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(data_dir=str(tmp_path / "data"))


# --- The split ------------------------------------------------------------------------------------


def test_split_takes_the_latest_day_as_test_and_the_window_before_it() -> None:
    split = choose_split(KEYS, KEYS[:6], train_days=3)
    assert split == TimeSplit(train=tuple(KEYS[1:4]), validation=KEYS[4], test=KEYS[5])
    assert max(split.train) < split.validation < split.test
    assert len(set(split.keys)) == 5


def test_split_respects_the_configured_test_day_and_window() -> None:
    split = choose_split(KEYS, KEYS, train_days=2, test_day=KEYS[4])
    assert split == TimeSplit(train=(KEYS[1], KEYS[2]), validation=KEYS[3], test=KEYS[4])
    one = choose_split(KEYS, KEYS, train_days=1, test_day=KEYS[2])
    assert one.train == (KEYS[0],)


def test_split_refuses_gaps_short_histories_and_unknown_days() -> None:
    with pytest.raises(ValueError, match="missing"):
        choose_split(KEYS, [k for k in KEYS[:6] if k != KEYS[2]], train_days=3)
    with pytest.raises(ValueError, match="training day"):
        choose_split(KEYS, KEYS, train_days=3, test_day=KEYS[3])
    with pytest.raises(ValueError, match="not a partition key"):
        choose_split(KEYS, KEYS, train_days=1, test_day="1999-01-01")
    with pytest.raises(ValueError, match="no features partition"):
        choose_split(KEYS, [], train_days=1)
    with pytest.raises(ValueError, match="increasing"):
        TimeSplit(train=(KEYS[2],), validation=KEYS[1], test=KEYS[3])


# --- Downsampling ---------------------------------------------------------------------------------


def test_correction_inverts_downsampling_exactly() -> None:
    p = np.array([0.001, 0.01, 0.05, 0.3, 0.9])
    w = 0.1
    q = p / (p + (1 - p) * w)  # the click probability among the kept rows
    np.testing.assert_allclose(correct_downsampled(q, w), p, rtol=1e-12)
    np.testing.assert_allclose(correct_downsampled(q, 1.0), q)
    with pytest.raises(ValueError):
        correct_downsampled(q, 0.0)


def test_downsampled_sets_keep_clicks_and_a_share_of_negatives(warehouse: Warehouse) -> None:
    write_days(warehouse, KEYS[:5])
    split = TimeSplit(train=tuple(KEYS[:3]), validation=KEYS[3], test=KEYS[4])
    paths = {k: warehouse.partition_path("features", k) for k in split.keys}
    target = set_path(warehouse, TRAINING_SET)
    with warehouse.duckdb() as con:
        summary = build_training_set(con, split, paths, 0.25, 7, target)
        test_summary = build_test_set(con, split, paths, set_path(warehouse, TEST_SET))
        again = build_training_set(con, split, paths, 0.25, 7, target.with_name("again.parquet"))
    train, valid = summary[TRAIN], summary[VALIDATION]
    assert train.clicks == train.clicks_before_sampling
    negatives_kept = (train.rows - train.clicks) / (train.rows_before_sampling - train.clicks_before_sampling)
    assert 0.22 < negatives_kept < 0.28
    assert valid.rows == valid.rows_before_sampling == 3000  # validation is never downsampled
    assert test_summary.rows == 3000
    assert again == summary  # the hash makes the sample deterministic
    table = pq.read_table(target)
    days = {
        s: {t.date().isoformat() for t in table.filter(pc.equal(table[SPLIT_COLUMN], s))["ts"].to_pylist()}
        for s in (TRAIN, VALIDATION)
    }
    assert days == {TRAIN: set(split.train), VALIDATION: {split.validation}}
    test_ids = set(pq.read_table(set_path(warehouse, TEST_SET))["impression_id"].to_pylist())
    assert not test_ids & set(table["impression_id"].to_pylist())
    assert keep_row_sql(1.0, 7) == "TRUE"


def test_downsampled_model_is_recalibrated(warehouse: Warehouse) -> None:
    """Trained on 20 % of the negatives, the raw prediction is far too high; corrected, the mean
    prediction on real traffic matches the true click rate."""
    write_days(warehouse, KEYS[:3], n=6000)
    split = TimeSplit(train=(KEYS[0],), validation=KEYS[1], test=KEYS[2])
    paths = {k: warehouse.partition_path("features", k) for k in split.keys}
    with warehouse.duckdb() as con:
        build_training_set(con, split, paths, 0.2, 3, set_path(warehouse, TRAINING_SET))
    table = pq.read_table(set_path(warehouse, TRAINING_SET))
    train = table.filter(pc.equal(table[SPLIT_COLUMN], TRAIN))
    valid = table.filter(pc.equal(table[SPLIT_COLUMN], VALIDATION))
    config = CtrModelConfig(n_trials=0, num_boost_round=60, learning_rate=0.2, nthread=1)
    fit = fit_ctr_model(train, valid, config, rate=0.2)
    test = pq.read_table(paths[split.test])
    corrected = predict_ctr(fit.final.booster, test)
    raw = fit.final.booster.inplace_predict(
        training_frames(train, test)[1].features
    )
    truth = true_ctr({c: test[c].to_numpy(zero_copy_only=False) for c in TRUTH_COLUMNS})
    assert raw.mean() > 2.5 * truth.mean()
    assert abs(corrected.mean() / truth.mean() - 1.0) < 0.1
    assert fit.final.booster.attr(DOWNSAMPLING_ATTR) == "0.2"


# --- Training -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames() -> tuple[pa.Table, pa.Table, pa.Table]:
    return synthetic_day(KEYS[0], 6000), synthetic_day(KEYS[1], 3000), synthetic_day(KEYS[2], 3000)


def test_early_stopping_keeps_the_best_iteration(frames: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    train, valid, _ = frames
    train_data, valid_data = training_frames(train, valid)
    config = CtrModelConfig(learning_rate=0.8, max_depth=8, min_child_weight=0.1, max_bin=64, nthread=1)
    matrices = build_matrices(train_data, valid_data, max_bin=config.max_bin, rate=1.0)
    fitted = train_booster(matrices, base_params(config), num_boost_round=300, early_stopping_rounds=5)
    curve = fitted.curves["validation_logloss"]
    assert fitted.best_iteration < len(curve) - 1 < 299  # stopped early, well before 300 rounds
    assert fitted.booster.num_boosted_rounds() == fitted.best_iteration + 1
    assert fitted.valid_logloss == pytest.approx(min(curve))


def test_search_then_final_model_finds_the_signal(frames: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    train, valid, test = frames
    config = CtrModelConfig(
        n_trials=2, search_num_boost_round=40, num_boost_round=80, search_max_rows=4000, nthread=1
    )
    fit = fit_ctr_model(train, valid, config, rate=1.0)
    assert len(fit.trials) == 2 and fit.train_rows == 6000  # searched on 4000, final on all
    assert fit.trials[0].params["max_depth"] == config.max_depth  # the configured point is tried
    assert fit.final.valid_logloss <= min(t.valid_logloss for t in fit.trials) + 5e-3
    importance = feature_importance(fit.final.booster)
    assert set(importance["feature"]) == set(FEATURE_COLUMNS)
    assert importance["gain_share"].sum() == pytest.approx(1.0)
    assert importance["feature"][0] == "hist_ad_ctr"  # the strongest single signal
    p = predict_ctr(fit.final.booster, test)
    y = test[LABEL].to_numpy().astype(float)
    base = y.mean()
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    base_loss = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert loss < 0.95 * base_loss  # the model found the signal


def test_model_saved_in_xgboost_format_reloads_identically(
    frames: tuple[pa.Table, pa.Table, pa.Table], tmp_path: Path
) -> None:
    train, valid, test = frames
    fit = fit_ctr_model(train, valid, CtrModelConfig(n_trials=0, num_boost_round=20, nthread=1), rate=0.5)
    expected = predict_ctr(fit.final.booster, test)
    for name in ("model.ubj", "model.json"):
        path = save_booster(fit.final.booster, tmp_path / name)
        reloaded = load_booster(path)
        np.testing.assert_array_equal(predict_ctr(reloaded, test), expected)
        assert reloaded.attr(DOWNSAMPLING_ATTR) == "0.5"
    assert (tmp_path / "model.json").read_text().startswith("{")
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError):
        save_booster(fit.final.booster, tmp_path / "model.pkl")


# --- In Dagster -----------------------------------------------------------------------------------


def test_sets_and_model_materialize_in_dagster(warehouse: Warehouse, tmp_path: Path) -> None:
    write_days(warehouse, KEYS[:5], n=2000)
    registry = ModelRegistry(data_dir=str(tmp_path / "data"))
    features_spec = AssetSpec("features", partitions_def=daily_partitions)
    run_config = {
        "ops": {
            "training_and_test_sets": {"config": {"train_days": 2, "negative_downsampling_rate": 0.5}},
            "ctr_model": {
                "config": {"n_trials": 2, "search_num_boost_round": 20, "num_boost_round": 30, "nthread": 1}
            },
        }
    }
    result = materialize(
        [features_spec, training_and_test_sets, ctr_model],
        resources={"warehouse": warehouse, "model_registry": registry},
        run_config=run_config,
    )
    assert result.success
    manifest = read_split_manifest(warehouse)
    assert manifest.split == TimeSplit(train=(KEYS[1], KEYS[2]), validation=KEYS[3], test=KEYS[4])
    assert manifest.negative_downsampling_rate == 0.5
    assert 0.01 < manifest.train_base_rate < 0.2

    model = read_model_manifest(warehouse)
    assert model.version == "1" and Path(model.model_path).name == "model.ubj"
    assert xgb.Booster(model_file=model.model_path).attr(DOWNSAMPLING_ATTR) == "0.5"
    metadata = result.asset_materializations_for_node("ctr_model")[0].metadata
    assert metadata["mlflow_run"].value.endswith(model.run_id)
    assert metadata["model_version"].value == "1"
    assert metadata["best_iteration"].value == model.best_iteration
    assert "| feature |" in metadata["feature_importance"].value
    assert registry.versions() == ["1"]
    split_meta = result.asset_materializations_for_node("training_and_test_sets")
    assert {m.asset_key for m in split_meta} == {AssetKey(TRAINING_SET), AssetKey(TEST_SET)}
