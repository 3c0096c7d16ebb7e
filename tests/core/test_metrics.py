"""The one definition of every metric: by hand, and offline (numpy) = online (DuckDB with
``log_loss_sql``) on the same rows."""

import math
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clickloop.metrics import (
    PROBABILITY_EPS,
    auc,
    binary_entropy,
    calibration,
    calibration_from_totals,
    calibration_interval,
    clicks_per_1000_requests,
    ctr,
    is_defined,
    log_loss,
    log_loss_sql,
    log_loss_sum,
    normalized_entropy,
    normalized_entropy_from_totals,
    or_none,
    oracle_capture,
    precision_recall_at_top,
    reliability_curve,
    revenue_per_1000_requests,
)
from clickloop.online import OnlineColumns, aggregate_versions, metrics_row
from clickloop.storage import one_row


def test_auc_by_hand() -> None:
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered right
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert auc([0, 0, 1], [0.1, 0.2, 0.9]) == pytest.approx(1.0)
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.9, 0.9]) == pytest.approx(0.0)
    assert math.isnan(auc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError, match="1-d of one length"):
        auc([0, 1], [0.5])


def test_log_loss_entropy_and_normalized_entropy_by_hand() -> None:
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert binary_entropy(0.5) == pytest.approx(math.log(2))
    assert binary_entropy(0.0) == 0.0 and binary_entropy(1.0) == 0.0
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    assert normalized_entropy(labels, np.full(10, 0.2)) == pytest.approx(1.0)  # the base rate
    assert normalized_entropy(labels, np.full(10, 0.4)) > 1.0
    assert normalized_entropy(labels, labels * 0.999 + 0.0005) < 0.01
    assert math.isnan(normalized_entropy([0, 0], [0.1, 0.1]))
    # a certain and wrong prediction is clipped, not infinite
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(PROBABILITY_EPS))
    assert math.isnan(log_loss([], []))


def test_calibration_and_operating_point_by_hand() -> None:
    assert calibration([0, 1, 0, 0], [0.5] * 4) == pytest.approx(2.0)
    assert calibration([0, 1, 0, 0], [0.1, 0.6, 0.2, 0.1]) == pytest.approx(1.0)
    assert math.isnan(calibration([0, 0], [0.1, 0.1]))
    labels = [1, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    precision, recall, threshold = precision_recall_at_top(labels, scores, 0.2)  # 2 rows flagged
    assert (precision, recall, threshold) == (pytest.approx(0.5), pytest.approx(1 / 3), 0.8)
    assert precision_recall_at_top(labels, scores, 0.3)[:2] == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert precision_recall_at_top(labels, scores, 0.01)[0] == 1.0  # at least one row is flagged
    with pytest.raises(ValueError):
        precision_recall_at_top(labels, scores, 0.0)


def test_reliability_curve_bins() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.3, 100_000)
    y = (rng.random(p.size) < p).astype(float)
    curve = reliability_curve(y, p, bins=10)
    assert len(curve) == 10 and curve["rows"].sum() == p.size
    assert curve["rows"].min() > 9_000  # quantile bins: about equal counts
    np.testing.assert_allclose(curve["observed_ctr"], curve["mean_predicted"], atol=0.01)
    assert (np.diff(curve["mean_predicted"]) > 0).all()
    constant = reliability_curve([0, 1, 0, 0], [0.25] * 4, bins=5)
    assert len(constant) == 1 and constant["observed_ctr"][0] == 0.25
    assert reliability_curve([], [], bins=3).empty
    with pytest.raises(ValueError, match="bins"):
        reliability_curve([0, 1], [0.1, 0.2], bins=0)


def test_metric_functions_from_totals_match_hand_computed_values() -> None:
    assert ctr(3, 10) == 0.3 and math.isnan(ctr(0, 0))
    assert calibration_from_totals(3.0, 2.0) == pytest.approx(1.5)
    assert math.isnan(calibration_from_totals(0.03, 0.0))
    # two rows, both predicted 0.5: log loss ln 2 each; the base rate 1/2 has entropy ln 2
    assert log_loss_sum([1, 0], [0.5, 0.5]) == pytest.approx(2 * math.log(2))
    assert normalized_entropy_from_totals(2 * math.log(2), 2, 1) == pytest.approx(1.0)
    # a constant prior equal to the observed CTR (the random policy, calibrated): NE = 1 exactly
    labels, prior = [1, 0, 0, 0], [0.25] * 4
    assert normalized_entropy_from_totals(log_loss_sum(labels, prior), 4, 1) == pytest.approx(1.0)
    # a constant prior of 0.5 on a 25 % CTR: ln 2 / H(0.25) = 0.693147 / 0.562335
    half = log_loss_sum(labels, [0.5] * 4)
    assert normalized_entropy_from_totals(half, 4, 1) == pytest.approx(1.232623, abs=1e-6)
    assert math.isnan(normalized_entropy_from_totals(0.0, 0, 0))
    assert math.isnan(normalized_entropy_from_totals(1.0, 4, 0))
    assert math.isnan(normalized_entropy_from_totals(1.0, 4, 4))
    assert revenue_per_1000_requests(2.5, 500) == pytest.approx(5.0)
    assert math.isnan(revenue_per_1000_requests(1.0, 0))
    assert clicks_per_1000_requests(3, 600) == pytest.approx(5.0)
    assert oracle_capture(25.0, 100.0) == 0.25
    assert math.isnan(oracle_capture(25.0, None)) and math.isnan(oracle_capture(25.0, 0.0))
    assert math.isnan(oracle_capture(None, 100.0))
    assert or_none(float("nan")) is None and or_none(0.5) == 0.5 and or_none(None) is None
    assert is_defined(0.0) and not is_defined(float("nan")) and not is_defined(None)


# --- Offline = online ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """5,000 served impressions in a Parquet file: predictions (0 and 1 among them, to be clipped),
    a few without a prediction, labels drawn from the predictions."""
    rng = np.random.default_rng(11)
    n = 5_000
    p = rng.beta(2, 40, n)
    p[:3] = [0.0, 1.0, 1.0]
    y = (rng.random(n) < p).astype(np.int8)
    y[:3] = [1, 0, 1]  # a certain miss (clipped), a certain miss (clipped), a certain hit
    prediction = pa.array(p, pa.float64(), mask=np.arange(n) >= n - 7)  # the last 7: no prediction
    path = tmp_path_factory.mktemp("served") / "features.parquet"
    table = pa.table(
        {
            "impression_id": [f"i{i}" for i in range(n)],
            "request_id": [f"r{i // 2}" for i in range(n)],
            "clicked": y,
            "predicted_ctr": prediction,
            "model_version": ["ctr_model-v1"] * n,
            "bid_cpc": rng.uniform(0.1, 2.0, n),
        }
    )
    pq.write_table(table, path)
    return path, y[: n - 7], p[: n - 7]


def test_offline_and_online_metrics_agree_on_the_same_rows(
    served: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    path, y, p = served
    with duckdb.connect() as con:
        rows, clicks, predicted, loss = one_row(
            con,
            f"""
            SELECT count(predicted_ctr), sum(clicked) FILTER (predicted_ctr IS NOT NULL),
                   sum(predicted_ctr), sum({log_loss_sql("clicked", "predicted_ctr")})
            FROM read_parquet('{path}')
            """,
        )
        (totals,) = aggregate_versions(con, [path], OnlineColumns())
    assert (rows, clicks) == (len(y), y.sum())
    # the same sums: the SQL twin clips exactly as numpy does (0 and 1 are finite)
    assert loss == pytest.approx(log_loss_sum(y, p), rel=1e-12)
    assert math.isfinite(loss)
    assert loss / rows == pytest.approx(log_loss(y, p), rel=1e-12)
    assert normalized_entropy_from_totals(loss, rows, clicks) == pytest.approx(
        normalized_entropy(y, p), rel=1e-12
    )
    assert calibration_from_totals(predicted, clicks) == pytest.approx(calibration(y, p), rel=1e-12)
    # and through the online metrics of the served version: the evaluation's definitions
    online = metrics_row(totals)
    assert (totals.scored_impressions, totals.impressions) == (len(y), len(y) + 7)
    assert online.normalized_entropy == pytest.approx(normalized_entropy(y, p), rel=1e-12)
    assert online.calibration == pytest.approx(calibration(y, p), rel=1e-12)
    assert online.mean_predicted_ctr == pytest.approx(p.mean(), rel=1e-12)


def test_log_loss_sql_of_one_row_and_of_a_missing_prediction() -> None:
    with duckdb.connect() as con:
        values = con.sql(
            f"""
            SELECT {log_loss_sql("y", "p")} FROM (VALUES (1, 0.8), (0, 0.4), (1, 0.0), (0, NULL::DOUBLE)) t(y, p)
            """
        ).fetchall()
    assert [v for (v,) in values[:3]] == [
        pytest.approx(-math.log(0.8)),
        pytest.approx(-math.log(0.6)),
        pytest.approx(-math.log(PROBABILITY_EPS)),
    ]
    assert values[3] == (None,)  # NULL, so sum() skips it


@pytest.mark.parametrize("expected_clicks", [30, 400, 2_000])
def test_the_calibration_interval_holds_a_calibrated_model_at_its_confidence(expected_clicks: int) -> None:
    """Days of Bernoulli clicks from a model whose predictions are the truth: the 95 % interval
    holds 1 on at least 94 % of 4,000 days (a little more: the Poisson interval is conservative),
    and a model predicting 20 % too low is told apart on nearly every day of 400 clicks, on few of 30."""
    rng = np.random.default_rng(7)
    ctrs = np.array([0.01, 0.02, 0.04, 0.07])  # impressions of four CTRs, an equal share of clicks
    impressions = np.round(expected_clicks / len(ctrs) / ctrs).astype(int)
    predicted = float((impressions * ctrs).sum())
    clicks = sum(rng.binomial(n, p, size=4_000) for n, p in zip(impressions, ctrs, strict=True))
    counts, day_of = np.unique(clicks, return_inverse=True)  # (a day's interval depends on its count)
    intervals = np.array([calibration_interval(predicted, c) for c in counts])[day_of]
    covered = np.mean((intervals[:, 0] <= 1.0) & (1.0 <= intervals[:, 1]))
    assert 0.94 <= covered <= 0.99, covered
    # the interval is about ±1.96/sqrt(clicks) wide: ±10 % around 1 at 400 clicks
    low, high = calibration_interval(400.0, 400)
    assert (low, high) == (pytest.approx(0.907, abs=1e-3), pytest.approx(1.106, abs=1e-3))
    too_low = np.array([calibration_interval(0.8 * predicted, c) for c in counts])[day_of]
    caught = np.mean(too_low[:, 1] < 1.0)
    if expected_clicks >= 400:
        assert caught > 0.95, caught
    else:  # 30 clicks cannot tell a 20 % error from chance on most days
        assert 0.05 < caught < 0.35, caught


def test_the_calibration_interval_of_degenerate_days() -> None:
    low, high = calibration_interval(3.0, 0)  # no click: only a lower bound
    assert low == pytest.approx(3.0 / 3.689, abs=1e-3) and math.isnan(high)
    assert all(math.isnan(v) for v in calibration_interval(0.0, 5))  # no prediction
    with pytest.raises(ValueError, match="confidence=1.5"):
        calibration_interval(1.0, 1, confidence=1.5)
