"""Monitoring: drift (real Evidently on small samples), online metrics against hand-computed values,
the monitoring store on real SQLite and PostgreSQL, the simulator's oracle, and both assets in
Dagster on small hand-made ``features`` partitions.

PostgreSQL: 127.0.0.1:5432, user postgres, trust auth, database ``test`` (as on the project's
machines and CI; set CLICKLOOP_TEST_PG_URL for another server). Each test gets a fresh database.
"""

import math
import os
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pyarrow as pa
import pytest
from dagster import AssetSpec, materialize

from assets.features import CATEGORICAL_FEATURES, FEATURE_COLUMNS
from assets.model import ModelManifest, SplitManifest, TimeSplit, split_manifest_path
from assets.model import manifest_path as model_manifest_path
from assets.monitoring import (
    DRIFT_FEATURES,
    OracleTruth,
    ReferenceChoice,
    VersionTotals,
    aggregate_versions,
    binary_entropy,
    calibration,
    choose_reference,
    compute_drift,
    ctr,
    day_row,
    drift_report,
    known_training_window,
    log_loss_sum,
    metrics_row,
    monitoring_assets,
    normalized_entropy,
    online_metrics,
    online_metrics_rows,
    oracle_capture,
    oracle_captures,
    oracle_truth,
    read_sample,
    report_path,
    revenue_per_1000_requests,
)
from assets.partitions import daily_partitions
from resources.landing import LandingFolder
from resources.monitoring_store import (
    DriftRow,
    MonitoringStore,
    OnlineMetricsRow,
    engine_for,
)
from resources.simulator import AdServerSimulator
from resources.warehouse import Warehouse, atomic_write_bytes

KEYS = daily_partitions.get_partition_keys()[:5]
ADMIN_URL = os.getenv("CLICKLOOP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
DEVICES = ["mobile", "desktop", "tablet"]


# --- Hand-made data --------------------------------------------------------------------------


def features_frame(day: str, n: int, seed: int, smart_tv: float = 0.0, version: str = "random-v0"):
    """``n`` impressions (n/2 requests) with the ``features`` columns; a share ``smart_tv`` of the
    rows gets a device type never seen before (the device-shift scenario)."""
    rng = np.random.default_rng(seed)
    device = rng.choice(DEVICES, n, p=[0.6, 0.3, 0.1]).astype(object)
    device[rng.random(n) < smart_tv] = "smart_tv"
    frame = pd.DataFrame(
        {
            "impression_id": [f"i-{day}-{i:06d}" for i in range(n)],
            "request_id": [f"r-{day}-{i // 2:06d}" for i in range(n)],
            "ts": pd.Timestamp(day, tz="UTC") + pd.to_timedelta(rng.integers(0, 86_400, n), "s"),
            "clicked": (rng.random(n) < 0.03).astype(np.int8),
            "ad_id": [f"a{i:04d}" for i in rng.integers(0, 500, n)],
            "campaign_id": [f"c{i:03d}" for i in rng.integers(0, 100, n)],
            "bid_cpc": rng.choice([0.25, 0.5, 1.0], n),
            "model_version": version,
            "predicted_ctr": 0.03,
            "user_segment": rng.choice(["gamers", "parents", "foodies"], n),
            "ad_category": rng.choice(["sports", "travel", "tech", "food"], n),
            "site_id": rng.choice([f"s{i:03d}" for i in range(20)], n),
            "site_category": rng.choice(["news", "sports", "family"], n),
            "device_type": device,
            "os": rng.choice(["ios", "android", "windows"], n),
            "country": rng.choice(["US", "IN", "DE"], n, p=[0.5, 0.3, 0.2]),
            "advertiser_id": rng.choice([f"adv{i:02d}" for i in range(10)], n),
            "hour": rng.integers(0, 24, n).astype(np.int32),
            "weekday": np.int32(date.fromisoformat(day).weekday()),
            "position": np.tile(np.array([1, 2], dtype=np.int32), n // 2),
            "hist_ad_impressions": rng.poisson(100, n),
            "hist_ad_ctr": rng.beta(3, 97, n),
            "hist_advertiser_impressions": rng.poisson(3000, n),
            "hist_advertiser_ctr": rng.beta(30, 970, n),
            "hist_site_impressions": rng.poisson(5000, n),
            "hist_site_ctr": rng.beta(30, 970, n),
            "hist_ad_site_category_impressions": rng.poisson(20, n),
            "hist_ad_site_category_ctr": rng.beta(3, 97, n),
            "user_impressions_24h": rng.poisson(5, n),
        }
    )
    assert set(FEATURE_COLUMNS) <= set(frame.columns)
    return frame


def write_features(warehouse: Warehouse, day: str, frame: pd.DataFrame) -> Path:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return warehouse.write_partition("features", day, table)


def drift_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame as :func:`read_sample` returns it: categoricals and the label as strings."""
    out = frame.copy()
    for c in [*CATEGORICAL_FEATURES, "clicked"]:
        out[c] = out[c].astype(str)
    return out


# --- Metrics, by hand ------------------------------------------------------------------------


def test_metric_functions_match_hand_computed_values() -> None:
    assert ctr(3, 10) == 0.3 and ctr(0, 0) is None
    assert calibration(0.03, 0.02) == pytest.approx(1.5)
    assert calibration(0.03, 0.0) is None and calibration(None, 0.02) is None
    assert binary_entropy(0.5) == pytest.approx(math.log(2))
    assert binary_entropy(0.0) == 0.0
    # two rows, both predicted 0.5: log loss ln 2 each; the base rate 1/2 has entropy ln 2
    assert log_loss_sum([1, 0], [0.5, 0.5]) == pytest.approx(2 * math.log(2))
    assert normalized_entropy(2 * math.log(2), 2, 1) == pytest.approx(1.0)
    # a constant prior equal to the observed CTR (the random policy, calibrated): NE = 1 exactly
    labels, prior = [1, 0, 0, 0], [0.25] * 4
    assert normalized_entropy(log_loss_sum(labels, prior), 4, 1) == pytest.approx(1.0)
    # a constant prior of 0.5 on a 25 % CTR: ln 2 / H(0.25) = 0.693147 / 0.562335
    half = log_loss_sum(labels, [0.5] * 4)
    assert normalized_entropy(half, 4, 1) == pytest.approx(1.232623, abs=1e-6)
    assert normalized_entropy(0.0, 0, 0) is None and normalized_entropy(1.0, 4, 0) is None
    assert revenue_per_1000_requests(2.5, 500) == pytest.approx(5.0)
    assert revenue_per_1000_requests(1.0, 0) is None
    assert oracle_capture(25.0, 100.0) == 0.25
    assert oracle_capture(25.0, None) is None and oracle_capture(25.0, 0.0) is None


def test_metrics_row_and_oracle_capture_from_totals() -> None:
    random_v0 = VersionTotals("random-v0", 50, 100, 4, 100, 4, 3.0, 16.0, 2.0)
    row = metrics_row(random_v0, 0.2, "expected")
    assert row.ctr == pytest.approx(0.04)
    assert row.mean_predicted_ctr == pytest.approx(0.03)
    assert row.calibration == pytest.approx(0.75)
    assert row.normalized_entropy == pytest.approx(0.16 / binary_entropy(0.04))
    assert row.revenue_per_1000_requests == pytest.approx(40.0)

    served = OracleTruth(
        oracle_expected_revenue=10.0, served_expected_revenue=2.5, served_version="random-v0"
    )
    assert oracle_captures([random_v0], served) == [(0.25, "expected")]
    assert oracle_captures([random_v0], None) == [(None, None)]
    # two versions on one day: each version's logged revenue over the oracle's on its requests
    model = VersionTotals("ctr_model-v2", 150, 300, 15, 300, 15, 12.0, 50.0, 6.0)
    assert oracle_captures([model, random_v0], served) == [
        (pytest.approx(6.0 / 7.5), "realized"),
        (pytest.approx(2.0 / 2.5), "realized"),
    ]
    whole = day_row([model, random_v0], served)
    assert (whole.requests, whole.impressions, whole.clicks) == (200, 400, 19)
    assert whole.oracle_capture == pytest.approx(0.8) and whole.oracle_basis == "realized"
    assert whole.calibration == pytest.approx((15.0 / 400) / (19 / 400))
    assert day_row([random_v0], served).oracle_capture == pytest.approx(0.25)
    assert day_row([random_v0], None).oracle_capture is None


def test_duckdb_aggregation_matches_pandas(tmp_path: Path) -> None:
    warehouse = Warehouse(data_dir=str(tmp_path))
    a = features_frame(KEYS[0], 400, seed=1)
    b = features_frame(KEYS[0], 200, seed=2, version="ctr_model-v1")
    b["impression_id"] += "-b"
    b["request_id"] += "-b"
    b["predicted_ctr"] = np.linspace(0.0, 0.2, len(b))  # includes 0: clipped in the log loss
    b.loc[b.index[:3], "predicted_ctr"] = np.nan  # unscored rows count in CTR, not in NE
    path = write_features(warehouse, KEYS[0], pd.concat([a, b], ignore_index=True))
    with warehouse.duckdb() as con:
        totals = {t.model_version: t for t in aggregate_versions(con, [path])}
    assert list(totals) == ["ctr_model-v1", "random-v0"]
    for frame, version in ((a, "random-v0"), (b, "ctr_model-v1")):
        t = totals[version]
        scored = frame[frame["predicted_ctr"].notna()]
        assert (t.requests, t.impressions) == (frame["request_id"].nunique(), len(frame))
        assert t.clicks == frame["clicked"].sum()
        assert (t.scored_impressions, t.scored_clicks) == (len(scored), scored["clicked"].sum())
        assert t.predicted_sum == pytest.approx(scored["predicted_ctr"].sum())
        expected_loss = log_loss_sum(scored["clicked"], scored["predicted_ctr"])
        assert t.log_loss_sum == pytest.approx(expected_loss)
        assert t.revenue == pytest.approx((frame["bid_cpc"] * frame["clicked"]).sum())
    rows = online_metrics_rows(list(totals.values()), None)
    assert [r.oracle_capture for r in rows] == [None, None]
    assert rows[1].calibration == pytest.approx(0.03 / (a["clicked"].mean()))


# --- Reference window and samples -----------------------------------------------------------


def test_reference_is_the_training_window_else_the_days_before() -> None:
    keys = daily_partitions.get_partition_keys()[:12]
    day = keys[10]
    training = keys[2:7]
    choice = choose_reference(day, keys, keys, training_keys=training, fallback_days=3)
    assert choice == ReferenceChoice(tuple(training), "training window")
    # missing days of the window are skipped, never replaced
    gone = choose_reference(day, keys, [k for k in keys if k != keys[3]], training_keys=training)
    assert gone.keys == tuple(k for k in training if k != keys[3])
    # a window reaching day D (or after it) is not a reference for D: the days before D are
    fallback = choose_reference(keys[5], keys, keys, training_keys=training, fallback_days=3)
    assert fallback == ReferenceChoice(tuple(keys[2:5]), "3 days before")
    assert choose_reference(day, keys, keys[:9], fallback_days=3).keys == (keys[7], keys[8])
    assert choose_reference(keys[0], keys, keys) == ReferenceChoice((), "none")


def test_training_window_from_the_model_and_split_manifests(tmp_path: Path) -> None:
    warehouse = Warehouse(data_dir=str(tmp_path))
    assert known_training_window(warehouse, ["random-v0"]) is None
    latest = TimeSplit(train=tuple(KEYS[1:3]), validation=KEYS[3], test=KEYS[4])
    split = SplitManifest(latest, negative_downsampling_rate=1.0, seed=7, train_base_rate=0.03)
    atomic_write_bytes(split_manifest_path(warehouse), split.to_json().encode())
    assert known_training_window(warehouse, ["random-v0"]) == (
        tuple(KEYS[1:3]),
        "training window of the latest training set",
    )
    served = TimeSplit(train=(KEYS[0],), validation=KEYS[1], test=KEYS[2])
    model = ModelManifest("3", "run", "model.ubj", served, 1.0, 10, 0.1, {})
    atomic_write_bytes(model_manifest_path(warehouse), model.to_json().encode())
    assert known_training_window(warehouse, ["ctr_model-v3"]) == (
        (KEYS[0],),
        "training window of ctr_model-v3",
    )
    assert known_training_window(warehouse, ["ctr_model-v2"])[0] == tuple(KEYS[1:3])


def test_sample_is_bounded_deterministic_and_typed(tmp_path: Path) -> None:
    warehouse = Warehouse(data_dir=str(tmp_path))
    path = write_features(warehouse, KEYS[0], features_frame(KEYS[0], 3_000, seed=3))
    with warehouse.duckdb() as con:
        first = read_sample(con, [path], 500, seed=7)
        again = read_sample(con, [path], 500, seed=7)
        other = read_sample(con, [path], 500, seed=8)
        everything = read_sample(con, [path], 10_000, seed=7)
    assert len(first) == 500 and len(everything) == 3_000
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)
    assert list(first.columns) == [*DRIFT_FEATURES, "predicted_ctr", "clicked"]
    assert first["device_type"].dtype == object and set(first["clicked"]) <= {"0", "1"}
    assert first["hour"].dtype == np.float64


# --- Drift (real Evidently) --------------------------------------------------------------------


def test_device_shift_drifts_and_the_same_distribution_does_not() -> None:
    reference = drift_columns(features_frame(KEYS[0], 3_000, seed=10))
    same = drift_columns(features_frame(KEYS[1], 3_000, seed=11))
    shifted = drift_columns(features_frame(KEYS[1], 3_000, seed=11, smart_tv=0.4))

    calm = compute_drift(reference, same)
    assert calm.share_drifted_columns == 0.0 and calm.drifted == ()
    assert not calm.prediction.drifted and calm.prediction.score == 0.0
    assert {c.column for c in calm.features} == set(DRIFT_FEATURES)

    identical = compute_drift(reference, reference.copy())
    assert identical.drifted == () and not identical.target.drifted
    assert identical.target.method == "z" and identical.target.score == pytest.approx(1.0)

    drift = compute_drift(reference, shifted)
    assert [c.column for c in drift.drifted] == ["device_type"]
    (device,) = drift.drifted
    assert device.score > device.threshold and device.method == "Jensen-Shannon distance"
    assert drift.share_drifted_columns == pytest.approx(1 / len(DRIFT_FEATURES))
    assert "<html" in drift.html()[:1000].lower()


def test_prediction_and_click_rate_shifts_drift() -> None:
    reference = drift_columns(features_frame(KEYS[0], 3_000, seed=12))
    current = reference.copy()
    rng = np.random.default_rng(0)
    current["predicted_ctr"] = rng.beta(2, 60, len(current))  # a model replaces the constant prior
    current["clicked"] = np.where(rng.random(len(current)) < 0.01, "1", "0")  # CTR 3 % -> 1 %
    summary = compute_drift(
        reference, current, categorical=["device_type"], numeric=["hour"]
    )
    assert summary.prediction.drifted and summary.target.drifted
    assert summary.target.score < 0.05  # the z-test's p-value
    assert summary.drifted == ()
    current["predicted_ctr"] = np.nan  # logs without predictions: no prediction drift
    unscored = compute_drift(reference, current, categorical=["device_type"], numeric=["hour"])
    assert unscored.prediction is None and unscored.target.drifted


def test_compute_drift_samples_large_frames() -> None:
    reference = drift_columns(features_frame(KEYS[0], 6_000, seed=13))
    current = drift_columns(features_frame(KEYS[1], 9_000, seed=14))
    summary = compute_drift(
        reference, current, categorical=["device_type"], numeric=["hour"], max_rows=2_000
    )
    assert (summary.current_rows, summary.reference_rows) == (2_000, 2_000)
    with pytest.raises(ValueError, match="lacks columns"):
        compute_drift(reference.drop(columns=["hour"]), current)


# --- The monitoring store on SQLite and PostgreSQL ---------------------------------------------


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A fresh database on the local server; dropped afterwards."""
    name = f"clickloop_mon_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        engine_for(url).dispose()
        engine_for.cache_clear()
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MonitoringStore:
    if request.param == "sqlite":
        return MonitoringStore(data_dir=str(tmp_path))
    return MonitoringStore(url=request.getfixturevalue("postgres_url"))


def online_row(version: str, clicks: int, capture: float | None = None) -> OnlineMetricsRow:
    totals = VersionTotals(version, 500, 1_000, clicks, 1_000, clicks, 30.0, 130.0, clicks * 0.5)
    return metrics_row(totals, capture, "expected" if capture is not None else None)


def test_store_upserts_and_reads_back(store: MonitoringStore) -> None:
    d1, d2 = "2026-10-01", "2026-10-02"
    store.write_online_metrics(
        d1, [online_row("random-v0", 30, 0.2), online_row("ctr_model-v1", 40)]
    )
    store.write_online_metrics(d2, [online_row("ctr_model-v1", 45)])
    # re-materializing day 1: the row of the version that no longer served it is gone
    store.write_online_metrics(d1, [online_row("ctr_model-v1", 41, 0.5)])

    (day1,) = store.online_metrics_for(d1)
    assert day1["model_version"] == "ctr_model-v1" and day1["day"] == d1
    assert day1["clicks"] == 41 and day1["oracle_capture"] == 0.5
    assert day1["oracle_basis"] == "expected"
    assert day1["ctr"] == pytest.approx(0.041) and day1["revenue"] == pytest.approx(20.5)
    assert day1["computed_at"].tzinfo is not None
    assert abs((datetime.now(timezone.utc) - day1["computed_at"]).total_seconds()) < 600
    assert [r["day"] for r in store.latest_online_metrics()] == [d2, d1]
    assert [r["clicks"] for r in store.latest_online_metrics(since=date(2026, 10, 2))] == [45]
    assert store.latest_online_metrics(model_version="random-v0") == []
    assert len(store.latest_online_metrics(model_version="ctr_model-v1", limit=1)) == 1
    assert store.online_metrics_for("2026-10-09") == []
    with pytest.raises(ValueError, match="one row per model version"):
        store.write_online_metrics(d1, [online_row("a", 1), online_row("a", 2)])

    assert store.drift_for(d1) is None
    row = DriftRow(
        share_drifted_columns=0.25,
        prediction_drift_score=0.01,
        target_drift_score=0.4,
        prediction_drifted=False,
        target_drifted=False,
        drifted_columns={
            "device_type": {"score": 0.41, "method": "Jensen-Shannon distance", "threshold": 0.1}
        },
        reference_days=("2026-09-29", "2026-09-30"),
        current_rows=20_000,
        reference_rows=20_000,
        report_path="/tmp/report.html",
    )
    store.write_drift(d1, row)
    store.write_drift(d1, DriftRow(0.0, 0.0, 0.9, False, False))
    store.write_drift(d2, row)
    again = store.drift_for(d1)
    assert again["share_drifted_columns"] == 0.0 and again["drifted_columns"] == {}
    assert again["reference_days"] == [] and again["target_drifted"] is False
    latest = store.drift_for(d2)
    assert latest["drifted_columns"]["device_type"]["score"] == 0.41
    assert latest["reference_days"] == ["2026-09-29", "2026-09-30"]
    assert [r["day"] for r in store.latest_drift(since=d1)] == [d2, d1]


# --- The oracle -------------------------------------------------------------------------------


def test_oracle_earns_at_least_what_the_random_policy_earns(tmp_path: Path) -> None:
    simulator = AdServerSimulator(
        landing_dir=str(tmp_path), requests_per_day=2_000, n_users=5_000, start_date=KEYS[0]
    )
    assert simulator.oracle_revenue(KEYS[1]) is None  # not simulated yet
    simulator.ensure_day(KEYS[1])
    manifest = simulator.manifest(KEYS[1])
    oracle = simulator.oracle_revenue(KEYS[1])
    assert manifest["policy_version"] == "random-v0"
    assert oracle == manifest["oracle_expected_revenue"]
    assert oracle >= manifest["expected_revenue"] > 0
    truth = oracle_truth(simulator, KEYS[1])
    assert truth == OracleTruth(oracle, manifest["expected_revenue"], "random-v0")
    assert oracle_truth(LandingFolder(landing_dir=str(tmp_path)), KEYS[1]) is None


# --- Dagster ----------------------------------------------------------------------------------


def test_assets_in_dagster(tmp_path: Path) -> None:
    """Days 0-2 are alike; day 3 has a new device in 40 % of its traffic."""
    warehouse = Warehouse(data_dir=str(tmp_path / "data"))
    for i, day in enumerate(KEYS[:4]):
        frame = features_frame(day, 2_000, seed=20 + i, smart_tv=0.4 if i == 3 else 0.0)
        write_features(warehouse, day, frame)
    simulator = AdServerSimulator(
        landing_dir=str(tmp_path / "landing"),
        requests_per_day=1_000,
        n_users=5_000,
        start_date=KEYS[0],
    )
    simulator.ensure_day(KEYS[3])
    store = MonitoringStore(data_dir=str(tmp_path / "data"))
    resources = {"warehouse": warehouse, "monitoring_store": store, "log_source": simulator}
    graph = [AssetSpec("features", partitions_def=daily_partitions), *monitoring_assets]
    config = {"ops": {"drift_report": {"config": {"sample_rows": 1_500}}}}
    assert monitoring_assets == [drift_report, online_metrics]

    def run(day: str) -> dict[str, dict[str, object]]:
        result = materialize(graph, partition_key=day, resources=resources, run_config=config)
        assert result.success
        return {
            name: {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
            for name in ("drift_report", "online_metrics")
            for mat in result.asset_materializations_for_node(name)
        }

    calm, shifted = run(KEYS[2]), run(KEYS[3])
    assert calm["drift_report"]["reference_days"] == ", ".join(KEYS[:2])
    assert shifted["drift_report"]["reference_days"] == ", ".join(KEYS[:3])
    assert shifted["drift_report"]["reference"] == "7 days before"
    assert shifted["drift_report"]["current_rows"] == 1_500  # sampled, not all 2,000
    assert shifted["drift_report"]["reference_rows"] == 1_500
    assert calm["drift_report"]["share_drifted_columns"] == 0.0
    share = shifted["drift_report"]["share_drifted_columns"]
    assert share == pytest.approx(1 / len(DRIFT_FEATURES))
    assert "device_type" in shifted["drift_report"]["drifted_columns"]
    assert shifted["drift_report"]["prediction_drift_score"] == 0.0
    assert Path(shifted["drift_report"]["report"]) == report_path(warehouse, KEYS[3])
    assert report_path(warehouse, KEYS[3]).read_text().lstrip().lower().startswith("<!doctype html")
    assert list(store.drift_for(KEYS[3])["drifted_columns"]) == ["device_type"]
    assert store.drift_for(KEYS[2])["drifted_columns"] == {}

    frame = features_frame(KEYS[3], 2_000, seed=23, smart_tv=0.4)
    online = shifted["online_metrics"]
    assert online["requests"] == 1_000 and online["impressions"] == 2_000
    assert online["clicks"] == frame["clicked"].sum()
    assert online["revenue"] == pytest.approx((frame["bid_cpc"] * frame["clicked"]).sum())
    assert online["calibration"] == pytest.approx(0.03 / frame["clicked"].mean())
    manifest = simulator.manifest(KEYS[3])
    assert online["oracle_capture"] == pytest.approx(
        manifest["expected_revenue"] / manifest["oracle_expected_revenue"]
    )
    assert "expected revenue" in online["oracle_basis"]
    (stored,) = store.online_metrics_for(KEYS[3])
    assert stored["model_version"] == "random-v0" and stored["oracle_basis"] == "expected"
    assert stored["revenue_per_1000_requests"] == pytest.approx(online["revenue_per_1000_requests"])
    # a day the simulator never served (real logs alike): no oracle, the metrics still exist
    assert calm["online_metrics"]["oracle_capture"] is None
    assert store.online_metrics_for(KEYS[2])[0]["oracle_capture"] is None

    first = materialize(graph, partition_key=KEYS[0], resources=resources, run_config=config)
    (mat,) = first.asset_materializations_for_node("drift_report")
    assert mat.metadata["reference"].value.startswith("none")
    assert store.drift_for(KEYS[0]) is None
