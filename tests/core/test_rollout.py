"""The rollout's online comparison and decisions (clickloop.rollout)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clickloop.rollout import (
    RequestStats,
    RolloutPolicy,
    compare_versions,
    decide,
    read_request_stats,
    shadow_metrics,
    stage_days,
)

POLICY = RolloutPolicy(canary_share=0.5, shadow_days=1, min_canary_days=1, max_canary_days=3)


def simulated(version: str, n: int, ctr: float, predicted: float, seed: int) -> RequestStats:
    """n requests of 2 impressions, clicks at ``ctr`` each, price 1, prediction ``predicted``."""
    rng = np.random.default_rng(seed)
    clicks = (rng.random((n, 2)) < ctr).astype(np.float64)
    log_loss = -(clicks * np.log(predicted) + (1 - clicks) * np.log(1 - predicted))
    return RequestStats(
        version,
        np.full(n, 2.0),
        clicks.sum(axis=1),
        clicks.sum(axis=1),
        np.full(n, 2 * predicted),
        log_loss.sum(axis=1),
    )


def test_a_better_challenger_is_seen_better_beyond_the_interval_and_promoted() -> None:
    champion = simulated("ctr_model-v1", 4_000, 0.05, 0.05, 1)
    challenger = simulated("ctr_model-v2", 4_000, 0.08, 0.08, 2)
    report = compare_versions(champion, challenger, POLICY)
    diff = report.difference["revenue_per_1000_requests"]
    assert diff.low > 0 and diff.contains(60.0)
    assert report.difference["ctr"].contains(0.03)
    assert report.challenger.metrics["calibration"] == pytest.approx(0.08 / report.challenger.metrics["ctr"])
    for name in ("normalized_entropy", "calibration"):
        interval = report.difference[name]
        assert interval.low <= interval.value <= interval.high
    decision = decide("canary", 1, 1, report, POLICY)
    assert decision.action == "promote" and "better beyond the interval on revenue" in decision.reason
    assert report.metadata()["diff_revenue_per_1000_requests_low"] > 0


def test_a_worse_challenger_is_rolled_back_and_an_even_one_waits_then_goes() -> None:
    champion = simulated("v1", 4_000, 0.06, 0.06, 1)
    worse = compare_versions(champion, simulated("v2", 4_000, 0.03, 0.06, 2), POLICY)
    assert worse.difference["revenue_per_1000_requests"].high < 0
    assert worse.difference["calibration"].low > 0  # it over-predicts
    assert decide("canary", 1, 1, worse, POLICY).action == "rollback"
    even = compare_versions(champion, simulated("v3", 4_000, 0.06, 0.06, 11), POLICY)
    assert even.difference["revenue_per_1000_requests"].contains(0.0) and even.difference["ctr"].contains(0.0)
    assert decide("canary", 1, 2, even, POLICY).action == "wait"
    assert decide("canary", 1, 3, even, POLICY).action == "rollback"


def test_stages_shadow_then_canary_then_evidence() -> None:
    empty = compare_versions(None, None, POLICY)
    assert not empty.complete
    assert decide("shadow", 0, 0, empty, POLICY).action == "wait"
    assert decide("shadow", 1, 0, empty, POLICY).action == "to_canary"
    assert decide("canary", 1, 0, empty, POLICY).action == "wait"
    with pytest.raises(ValueError, match="stage"):
        decide("live", 1, 0, empty, POLICY)
    with pytest.raises(ValueError, match="canary_share"):
        RolloutPolicy(canary_share=1.0)


def test_request_stats_from_served_impressions(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "request_id": ["a", "a", "b", "b", "c", "c"],
            "model_version": ["v1", "v1", "v2", "v2", "explore-uniform", "explore-uniform"],
            "clicked": [1, 0, 0, 0, 1, 1],
            "bid_cpc": [2.0, 1.0, 1.0, 3.0, 1.0, 1.0],
            "predicted_ctr": [0.5, 0.1, 0.2, 0.2, 0.1, 0.1],
        }
    )
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.Table.from_pandas(frame), path)
    stats = read_request_stats([path], ["v1", "v2", "v3"])
    assert set(stats) == {"v1", "v2"}
    assert stats["v1"].revenue.tolist() == [2.0] and stats["v1"].predicted.tolist() == pytest.approx([0.6])
    assert stats["v2"].clicks.tolist() == [0.0]
    assert stats["v1"].log_loss[0] == pytest.approx(-np.log(0.5) - np.log(0.9))


def test_worse_on_one_decision_metric_rolls_back_even_when_better_on_the_other() -> None:
    champion = simulated("v1", 4_000, 0.06, 0.06, 1)
    clicks_more_earns_less = simulated("v2", 4_000, 0.09, 0.09, 2)
    cheap = RequestStats(
        "v2",
        clicks_more_earns_less.impressions,
        clicks_more_earns_less.clicks,
        clicks_more_earns_less.revenue * 0.3,  # its ads pay a third
        clicks_more_earns_less.predicted,
        clicks_more_earns_less.log_loss,
    )
    report = compare_versions(champion, cheap, POLICY)
    assert report.difference["ctr"].low > 0 and report.difference["revenue_per_1000_requests"].high < 0
    decision = decide("canary", 1, 1, report, POLICY)
    assert (
        decision.action == "rollback"
        and "worse beyond the interval on revenue_per_1000_requests" in decision.reason
    )


def test_stage_days_and_shadow_metrics_from_the_logged_columns(tmp_path: Path) -> None:
    def day(name: str, version: str, shadow: str | None) -> Path:
        frame = pd.DataFrame(
            {
                "request_id": ["a", "a", "b", "b"],
                "model_version": [version] * 4,
                "shadow_version": [shadow] * 4,
                "clicked": [1, 0, 0, 0],
                "predicted_ctr": [0.5, 0.5, 0.5, 0.5],
                "shadow_ctr": [0.9, 0.1, 0.1, 0.1] if shadow else [None] * 4,
                "bid_cpc": [1.0] * 4,
            }
        )
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pandas(frame), path)
        return path

    paths = {"d1": day("d1", "v1", "v2"), "d2": day("d2", "v2", None), "d3": day("d3", "v1", None)}
    assert stage_days(paths, "v2") == (["d1"], ["d2"])
    shadow = shadow_metrics([paths["d1"]], "v2")
    assert shadow["shadow_impressions"] == 4
    # the shadow scores fit the clicks better than the flat 0.5 the serving model gave
    assert shadow["shadow_challenger_normalized_entropy"] < shadow["shadow_champion_normalized_entropy"]
    assert shadow["shadow_challenger_calibration"] == pytest.approx(1.2)
    assert shadow["shadow_champion_calibration"] == pytest.approx(2.0)
    assert shadow_metrics([paths["d3"]], "v2") == {}
