"""Monitoring in Dagster: the history's drift reports and online metrics, the simulator's oracle, and a
device shift on hand-made ``features`` days caught by the drift report (drift, online metrics and
the monitoring store themselves are tested in tests/core and tests/resources)."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import AssetSpec, materialize

from assets.monitoring import HISTORY_DAYS, drift_report_asset, online_metrics_asset
from clickloop.drift import DriftColumns, report_path
from clickloop.features import FeatureSpec
from clickloop.metrics import calibration_interval
from clickloop.online import OracleTruth
from clickloop.presentation import REPORTS_FOLDER, SIGNIFICANT_DIGITS, significant
from resources.landing import LandingFolder
from resources.monitoring_store import MonitoringStore
from resources.reports import ReportsSite
from resources.simulator import AdServerSimulator
from resources.tracking import ModelRegistry
from resources.warehouse import WarehouseResource
from tests.assets.history import DRIFT_SAMPLE_ROWS, History
from tests.assets.support import CALENDAR, CONTRACT, KEYS
from tests.core.synthetic import monitoring_frame

#: how close a number of the metadata (rounded to significant digits) is to the exact one
SIG = 5 * 10.0**-SIGNIFICANT_DIGITS
DRIFT_FEATURES = DriftColumns.of(
    FeatureSpec.from_contract(CONTRACT), CONTRACT.has_served_predictions
).features


# --- The history ------------------------------------------------------------------------------------


def test_drift_report_compares_each_day_with_its_reference(history: History) -> None:
    keys, store = history.keys, history.monitoring_store
    first = history.metadata("drift_report", keys[0])
    assert first["reference"].startswith("none")
    assert store.drift_for(keys[0]) is None
    for i in range(1, 10):  # built before the first training: the days just before
        metadata = history.metadata("drift_report", keys[i])
        assert metadata["reference"] == "7 days before"
        assert metadata["reference_days"] == ", ".join(keys[max(0, i - 7) : i])
        assert metadata["current_rows"] == metadata["reference_rows"] == DRIFT_SAMPLE_ROWS  # sampled
        assert metadata["prediction_drift_score"] == 0.0  # the random policy's constant prior
        stored = store.drift_for(keys[i])
        assert stored["share_drifted_columns"] == pytest.approx(metadata["share_drifted_columns"], abs=1e-3)
        assert stored["reference_days"] == keys[max(0, i - 7) : i]
        assert Path(metadata["report"]) == report_path(history.warehouse, keys[i])
    assert (
        report_path(history.warehouse, keys[5])
        .read_text()[:1000]
        .lstrip()
        .lower()
        .startswith("<!doctype html")
    )
    # built after the training: its training window, the one of the model that served the day
    after = history.metadata("drift_report", keys[10])
    assert after["reference"] == "training window of the latest training set"
    assert after["reference_days"] == ", ".join(keys[1:8])
    served = history.metadata("drift_report", keys[11])
    assert served["reference"] == "training window of ctr_model-v1"
    assert served["prediction_drifted"] is True  # the model's predictions replaced the constant prior


def test_online_metrics_match_the_served_impressions(history: History) -> None:
    keys, store, simulator = history.keys, history.monitoring_store, history.simulator
    captures = {}
    for day, version in [(keys[1], "random-v0"), (keys[10], "random-v0"), (keys[11], "ctr_model-v1")]:
        frame = pq.read_table(history.warehouse.partition_path("features", day)).to_pandas()
        online = history.metadata("online_metrics", day)
        assert online["model_versions"] == version
        assert online["requests"] == frame["request_id"].nunique()
        assert online["impressions"] == len(frame)
        assert online["clicks"] == frame["clicked"].sum()
        assert online["revenue"] == pytest.approx((frame["bid_cpc"] * frame["clicked"]).sum(), rel=SIG)
        assert online["calibration"] == pytest.approx(
            frame["predicted_ctr"].mean() / frame["clicked"].mean(), rel=SIG
        )
        # the interval a day's few hundred clicks leave it, in the numbers and the table
        low, high = calibration_interval(frame["predicted_ctr"].sum(), frame["clicked"].sum())
        assert (online["calibration_low"], online["calibration_high"]) == (
            pytest.approx(low, rel=SIG),
            pytest.approx(high, rel=SIG),
        )
        assert online["calibration_low"] < online["calibration"] < online["calibration_high"]
        assert f"{low:.2f}–{high:.2f}" in online["online_metrics"]
        assert online["business_metric"] == "revenue_per_1000_requests"
        manifest = simulator.manifest(day)
        assert manifest["policy_version"] == version
        assert online["oracle_capture"] == pytest.approx(
            manifest["expected_revenue"] / manifest["oracle_expected_revenue"], rel=SIG
        )
        assert "expected revenue" in online["oracle_basis"]
        (stored,) = store.online_metrics_for(day)
        assert stored["model_version"] == version and stored["oracle_basis"] == "expected"
        assert stored["revenue_per_1000_requests"] == pytest.approx(
            online["revenue_per_1000_requests"], rel=SIG
        )
        captures[day] = online["oracle_capture"]
    # the champion earns far more of what the oracle would have than the random policy did
    assert captures[keys[11]] > 2 * max(captures[keys[1]], captures[keys[10]])
    assert [r["day"] for r in store.latest_online_metrics(limit=1)] == [keys[11]]


def test_oracle_earns_at_least_what_the_random_policy_earns(history: History, tmp_path: Path) -> None:
    simulator = history.simulator
    for day in history.keys:
        manifest = simulator.manifest(day)
        oracle = simulator.oracle_revenue(day)
        assert oracle == manifest["oracle_expected_revenue"]
        assert oracle >= manifest["expected_revenue"] > 0
        truth = simulator.oracle_truth(day)
        assert truth == OracleTruth(oracle, manifest["expected_revenue"], manifest["policy_version"])
    assert {simulator.manifest(d)["policy_version"] for d in history.random_days} == {"random-v0"}
    assert simulator.oracle_revenue(KEYS[40]) is None  # never simulated
    assert LandingFolder(landing_dir=str(tmp_path)).oracle_truth(history.keys[1]) is None  # real logs


# --- A device shift on hand-made days ---------------------------------------------------------------


def test_a_device_shift_is_caught_in_dagster(tmp_path: Path) -> None:
    """Days 0-2 are alike; day 3 has a new device in 40 % of its traffic."""
    warehouse = WarehouseResource(data_dir=str(tmp_path / "data"))
    for i, day in enumerate(KEYS[:4]):
        frame = monitoring_frame(day, 2_000, seed=20 + i, smart_tv=0.4 if i == 3 else 0.0, user_ids=True)
        warehouse.get().write_partition("features", day, pa.Table.from_pandas(frame, preserve_index=False))
    simulator = AdServerSimulator(
        landing_dir=str(tmp_path / "landing"), requests_per_day=1_000, n_users=5_000, start_date=KEYS[0]
    )
    simulator.ensure_day(KEYS[3])
    store = MonitoringStore(data_dir=str(tmp_path / "data"))
    reports = ReportsSite(root=str(tmp_path / "data" / REPORTS_FOLDER), base_url="http://127.0.0.1:3001")
    registry = ModelRegistry(data_dir=str(tmp_path / "data"))
    resources = {
        "warehouse": warehouse,
        "monitoring_store": store,
        "log_source": simulator,
        "reports": reports,
        "model_registry": registry,
    }
    graph = [
        AssetSpec("features", partitions_def=CALENDAR.partitions),
        drift_report_asset(CALENDAR, CONTRACT),
        online_metrics_asset(CALENDAR, CONTRACT),
    ]
    config = {"ops": {"drift_report": {"config": {"sample_rows": 1_500}}}}

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
    assert share == pytest.approx(1 / len(DRIFT_FEATURES), abs=1e-3)
    assert shifted["drift_report"]["drifted_column_count"] == 1
    assert "device_type" in shifted["drift_report"]["drifted_columns"]
    assert shifted["drift_report"]["prediction_drift_score"] == 0.0
    paths = warehouse.get()
    # the report's link: served by `make ui` at CLICKLOOP_REPORTS_URL, under the reports folder
    assert report_path(paths, KEYS[3]).is_relative_to(tmp_path / "data" / REPORTS_FOLDER)
    assert (
        shifted["drift_report"]["report"] == f"http://127.0.0.1:3001/drift/date={KEYS[3]}/drift_report.html"
    )
    assert shifted["drift_report"]["drift_per_column"].startswith(
        "![drift score per column](data:image/png;base64,"
    )
    assert report_path(paths, KEYS[3]).read_text().lstrip().lower().startswith("<!doctype html")
    assert list(store.drift_for(KEYS[3])["drifted_columns"]) == ["device_type"]
    assert store.drift_for(KEYS[2])["drifted_columns"] == {}

    frame = monitoring_frame(KEYS[3], 2_000, seed=23, smart_tv=0.4, user_ids=True)
    online = shifted["online_metrics"]
    assert online["requests"] == 1_000 and online["impressions"] == 2_000
    assert online["clicks"] == frame["clicked"].sum()
    assert online["revenue"] == pytest.approx((frame["bid_cpc"] * frame["clicked"]).sum(), rel=SIG)
    assert online["calibration"] == pytest.approx(0.03 / frame["clicked"].mean(), rel=SIG)
    manifest = simulator.manifest(KEYS[3])
    assert online["oracle_capture"] == pytest.approx(
        manifest["expected_revenue"] / manifest["oracle_expected_revenue"], rel=SIG
    )
    assert "expected revenue" in online["oracle_basis"]
    (stored,) = store.online_metrics_for(KEYS[3])
    assert stored["model_version"] == "random-v0" and stored["oracle_basis"] == "expected"
    assert stored["revenue_per_1000_requests"] == pytest.approx(online["revenue_per_1000_requests"], rel=SIG)
    assert online["revenue"] == significant(online["revenue"])  # no 0.27036999 in the UI
    # the days so far plotted inline (a data: URI, not a file the browser cannot open)
    assert online["over_days"].startswith(
        f"![online metrics of the {HISTORY_DAYS} days to {KEYS[3]}](data:image/png;base64,"
    )
    # a day the simulator never served (real logs alike): no oracle, the metrics still exist
    assert calm["online_metrics"]["oracle_capture"] is None
    assert store.online_metrics_for(KEYS[2])[0]["oracle_capture"] is None

    first = materialize(graph, partition_key=KEYS[0], resources=resources, run_config=config)
    (mat,) = first.asset_materializations_for_node("drift_report")
    assert mat.metadata["reference"].value.startswith("none")
    assert store.drift_for(KEYS[0]) is None
