"""Online metrics of served days: DuckDB totals per model version against pandas, the metrics from
totals against hand-computed values, and the oracle capture."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clickloop.contract_file import parse_contract
from clickloop.metrics import binary_entropy, calibration_interval, log_loss_sum
from clickloop.online import (
    ORACLE_BASIS_TEXT,
    UNKNOWN_VERSION,
    OnlineColumns,
    OracleTruth,
    VersionTotals,
    aggregate_versions,
    business_metric,
    calibration_text,
    day_row,
    metrics_row,
    online_history_png,
    online_markdown,
    online_metrics_rows,
    oracle_captures,
    summary_numbers,
)
from clickloop.storage import Warehouse
from tests.core.synthetic import CONTRACT, KEYS, monitoring_frame, write_monitoring_day
from tests.core.test_presentation import TAB_BLUE, TAB_ORANGE, count_color, decode_png

DAY = KEYS[0]


def test_metrics_row_and_oracle_capture_from_totals() -> None:
    random_v0 = VersionTotals("random-v0", 50, 100, 4, 100, 4, 3.0, 16.0, 2.0)
    row = metrics_row(random_v0, 0.2, "expected")
    assert row.ctr == pytest.approx(0.04)
    assert row.mean_predicted_ctr == pytest.approx(0.03)
    assert row.calibration == pytest.approx(0.75)
    assert row.normalized_entropy == pytest.approx(0.16 / binary_entropy(0.04))
    assert row.revenue_per_1000_requests == pytest.approx(40.0)
    assert row.clicks_per_1000_requests == pytest.approx(80.0)
    assert (row.oracle_capture, row.oracle_basis) == (0.2, "expected")
    # 4 clicks leave the calibration wide open: Σ predicted over the Poisson interval of 4 clicks
    assert (row.calibration_low, row.calibration_high) == calibration_interval(3.0, 4)
    assert row.calibration_low < 0.3 and row.calibration_high > 2.7
    assert f"| {row.calibration_low:.2f}–{row.calibration_high:.2f} |" in online_markdown([row], row)
    assert calibration_text(row.calibration, row.calibration_low, row.calibration_high) == (
        f"0.750 ({row.calibration_low:.2f}–{row.calibration_high:.2f})"
    )

    served = OracleTruth(
        oracle_expected_revenue=10.0, served_expected_revenue=2.5, served_version="random-v0"
    )
    assert oracle_captures([random_v0], served) == [(0.25, "expected")]
    assert oracle_captures([random_v0], None) == [(None, None)]
    assert oracle_captures([random_v0], OracleTruth(0.0)) == [(None, None)]
    # two versions on one day: each version's logged revenue over the oracle's on its requests
    model = VersionTotals("ctr_model-v2", 150, 300, 15, 300, 15, 12.0, 50.0, 6.0)
    assert oracle_captures([model, random_v0], served) == [
        (pytest.approx(6.0 / 7.5), "realized"),
        (pytest.approx(2.0 / 2.5), "realized"),
    ]
    whole = day_row([model, random_v0], served)
    assert (whole.model_version, whole.requests, whole.impressions, whole.clicks) == ("all", 200, 400, 19)
    assert whole.oracle_capture == pytest.approx(0.8) and whole.oracle_basis == "realized"
    assert whole.calibration == pytest.approx((15.0 / 400) / (19 / 400))
    assert whole.revenue == pytest.approx(8.0)
    assert day_row([random_v0], served).oracle_capture == pytest.approx(0.25)
    assert day_row([random_v0], served).oracle_basis == "expected"
    assert day_row([random_v0], None).oracle_capture is None


def test_undefined_metrics_are_none() -> None:
    unscored = metrics_row(VersionTotals("(missing)", 10, 20, 0, 0, 0, 0.0, 0.0, None))
    assert unscored.mean_predicted_ctr is None and unscored.calibration is None
    assert unscored.normalized_entropy is None and unscored.revenue is None
    assert unscored.revenue_per_1000_requests is None and unscored.ctr == 0.0
    no_clicks = metrics_row(VersionTotals("v", 10, 20, 0, 20, 0, 0.4, 0.4, 0.0))
    assert no_clicks.calibration is None and no_clicks.normalized_entropy is None
    assert no_clicks.calibration_low == pytest.approx(0.4 / 3.689, abs=1e-3)
    assert no_clicks.calibration_high is None and unscored.calibration_low is None
    assert calibration_text(None, no_clicks.calibration_low, None) == "-"
    assert calibration_text(1.5, 0.25, None) == "1.500 (≥ 0.25)"
    empty = metrics_row(VersionTotals("v", 0, 0, 0, 0, 0, 0.0, 0.0, 0.0))
    assert empty.ctr is None and empty.revenue_per_1000_requests is None


def test_duckdb_aggregation_matches_pandas(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path)
    a = monitoring_frame(DAY, 400, seed=1)
    b = monitoring_frame(DAY, 200, seed=2, version="ctr_model-v1")
    b["impression_id"] += "-b"
    b["request_id"] += "-b"
    b["predicted_ctr"] = np.linspace(0.0, 0.2, len(b))  # includes 0: clipped in the log loss
    b.loc[b.index[:3], "predicted_ctr"] = np.nan  # unscored rows count in CTR, not in NE
    path = write_monitoring_day(warehouse, DAY, pd.concat([a, b], ignore_index=True))
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
        assert t.log_loss_sum == pytest.approx(log_loss_sum(scored["clicked"], scored["predicted_ctr"]))
        assert t.revenue == pytest.approx((frame["bid_cpc"] * frame["clicked"]).sum())
    rows = online_metrics_rows(list(totals.values()), None)
    assert [r.oracle_capture for r in rows] == [None, None]
    assert rows[1].calibration == pytest.approx(0.03 / (a["clicked"].mean()))


def test_a_served_day_with_its_oracle(tmp_path: Path) -> None:
    """The whole day served by one version whose expected revenue the log source knows."""
    warehouse = Warehouse(tmp_path)
    frame = monitoring_frame(KEYS[3], 2_000, seed=23, smart_tv=0.4)
    frame.loc[frame.index[::8], "hist_ad_impressions"] = 0  # an eighth of the ads had no history
    path = write_monitoring_day(warehouse, KEYS[3], frame)
    with warehouse.duckdb() as con:
        totals = aggregate_versions(con, [path], OnlineColumns.of(CONTRACT))
    truth = OracleTruth(
        oracle_expected_revenue=120.0, served_expected_revenue=30.0, served_version="random-v0"
    )
    (row,) = online_metrics_rows(totals, truth)
    whole = day_row(totals, truth)
    assert (whole.requests, whole.impressions) == (1_000, 2_000)
    assert whole.clicks == frame["clicked"].sum()
    assert whole.revenue == pytest.approx((frame["bid_cpc"] * frame["clicked"]).sum())
    assert whole.calibration == pytest.approx(0.03 / frame["clicked"].mean())
    assert (
        whole.oracle_capture == row.oracle_capture == pytest.approx(0.25) and whole.oracle_basis == "expected"
    )
    assert "expected revenue" in ORACLE_BASIS_TEXT[whole.oracle_basis]
    # the share of impressions whose ad had no history when served (the contract's seen entity)
    cold = (frame["hist_ad_impressions"] == 0).mean()
    assert cold >= 0.125
    assert whole.cold_start_share == row.cold_start_share == pytest.approx(cold)
    numbers = summary_numbers(whole)
    assert numbers["cold_start_share"] == pytest.approx(cold)
    assert numbers["business_metric"] == "revenue_per_1000_requests"
    assert numbers["business_value"] == pytest.approx(1_000 * whole.revenue / whole.requests)
    table = online_markdown([row], whole)
    assert "| random-v0 | 1,000 | 2,000 |" in table and "| **all** |" in table and "25.0%" in table


def test_logs_without_price_request_or_version(tmp_path: Path) -> None:
    contract = parse_contract(
        {
            "impressions": {"fields": [{"source": "impression_id"}, {"source": "ts"}, {"source": "ad_id"}]},
            "label": "click",
        },
        "bare.yaml",
    )
    columns = OnlineColumns.of(contract)
    assert columns == OnlineColumns(request=None, bid=None, model_version=None, prediction=None)
    frame = monitoring_frame(DAY, 300, seed=4)[["impression_id", "ts", "ad_id", "clicked"]]
    path = write_monitoring_day(Warehouse(tmp_path), DAY, frame)
    with Warehouse(tmp_path).duckdb() as con:
        (totals,) = aggregate_versions(con, [path], columns)
    assert totals.model_version == UNKNOWN_VERSION
    assert totals.requests == totals.impressions == 300  # every impression is its own request
    assert totals.revenue is None and totals.scored_impressions == 0
    whole = day_row([totals], None)
    assert business_metric(whole) == (
        "clicks_per_1000_requests",
        pytest.approx(1000 * frame["clicked"].sum() / 300),
    )
    table = online_markdown([metrics_row(totals)], whole)
    assert "clicks / 1000 req" in table and "revenue" not in table


def test_online_history_plot_draws_a_line_per_version() -> None:
    rows = [
        {
            "day": day,
            "model_version": version,
            "calibration": cal,
            "normalized_entropy": ne,
            "oracle_capture": cap,
        }
        for day, version, cal, ne, cap in [
            (KEYS[0], "random-v0", 1.0, 1.0, 0.4),
            (KEYS[1], "random-v0", 1.02, 0.99, None),  # no oracle: a gap, not a failure
            (KEYS[1], "ctr_model-v1", 0.9, 0.93, 0.7),
            (KEYS[2], "ctr_model-v1", 0.95, 0.92, 0.72),
        ]
    ]
    png = online_history_png(rows)
    assert decode_png(png).shape[:2] == (585, 630)  # 7 x 6.5 inches at 90 dpi
    # a colour per version, in sorted order: ctr_model-v1 blue, random-v0 orange
    assert count_color(png, TAB_BLUE) > 50 and count_color(png, TAB_ORANGE) > 50
    one_version = online_history_png([r for r in rows if r["model_version"] == "random-v0"])
    assert count_color(one_version, TAB_ORANGE) == 0 and count_color(one_version, TAB_BLUE) > 50
    assert decode_png(online_history_png([])).shape[:2] == (585, 630)  # nothing yet: empty panels
    # the interval the clicks leave the calibration: a band in the version's colour, pale
    pale_blue = tuple(round(255 - 0.15 * (255 - c)) for c in TAB_BLUE)
    unbanded = count_color(png, pale_blue, tolerance=0.01)  # rows stored before the interval
    assert unbanded < 100  # (a line's anti-aliased edge)
    banded = [
        {**r, "calibration_low": r["calibration"] - 0.1, "calibration_high": r["calibration"] + 0.1}
        for r in rows
    ]
    assert count_color(online_history_png(banded), pale_blue, tolerance=0.01) > 20 * unbanded
    # logs without served predictions: no calibration line; the legend goes on the panel with lines,
    # and nothing warns (matplotlib's "No artists with labels" in the run's log)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        no_predictions = online_history_png([{**r, "calibration": None} for r in rows])
    assert count_color(no_predictions, TAB_BLUE) > 50
