"""The retraining rules and the refresh chain's links, on plain values (the scenario tests run them
end to end; ``tests/test_daemon.py`` in a real daemon)."""

from __future__ import annotations

from dagster import DagsterRunStatus, RunRequest, SkipReason

from assets.partitions import daily_partitions
from pipelines.automation import (
    CHAIN,
    REQUEST_CONTEXT_COLUMNS,
    RetrainPolicy,
    chain_request,
    context_drift_share,
    drift_trigger,
    neighbour_partition,
    quality_trigger,
    staleness_trigger,
)

KEYS = daily_partitions.get_partition_keys()
POLICY = RetrainPolicy()


def online(day: str, version: str = "ctr_model-v1", calibration: float = 1.0, ne: float = 0.9) -> dict:
    return {"day": day, "model_version": version, "calibration": calibration, "normalized_entropy": ne}


def test_only_request_context_columns_count_as_drift() -> None:
    ad_side = {"hist_ad_ctr": {}, "bid_cpc": {}, "predicted_ctr": {}}
    assert context_drift_share({"drifted_columns": ad_side}) == 0
    assert drift_trigger({"day": KEYS[5], "drifted_columns": ad_side}, POLICY) is None

    two = {c: {} for c in REQUEST_CONTEXT_COLUMNS[:2]}
    share = 2 / len(REQUEST_CONTEXT_COLUMNS)
    trigger = drift_trigger({"day": KEYS[5], "drifted_columns": {**two, **ad_side}}, POLICY)
    assert share > POLICY.drift_share_threshold
    assert trigger is not None and trigger.value == share and trigger.day == KEYS[5]
    # exactly at the threshold does not fire; just above does
    at = RetrainPolicy(drift_share_threshold=share)
    assert drift_trigger({"day": KEYS[5], "drifted_columns": two}, at) is None
    assert drift_trigger(None, POLICY) is None


def test_trigger_request_names_metric_value_threshold_and_day() -> None:
    trigger = drift_trigger(
        {"day": KEYS[7], "drifted_columns": {c: {} for c in REQUEST_CONTEXT_COLUMNS}}, POLICY
    )
    assert trigger is not None
    request = trigger.run_request()
    assert isinstance(request, RunRequest)
    assert request.run_key == f"drift_sensor:{KEYS[7]}"  # the same day never triggers twice
    assert request.tags["clickloop/metric"] == "context_drift_share"
    assert float(request.tags["clickloop/value"]) == 1.0
    assert float(request.tags["clickloop/threshold"]) == POLICY.drift_share_threshold
    assert request.tags["clickloop/kind"] == "training"
    assert "crossed" in trigger.reason and KEYS[7] in trigger.reason


def test_quality_compares_the_champion_with_its_first_served_day() -> None:
    base = [online(KEYS[10], calibration=1.2, ne=0.90)]
    # the winner's-curse offset at promotion is the baseline, not 1.0
    assert quality_trigger([online(KEYS[12], calibration=1.3, ne=0.91)], base, "ctr_model-v1", POLICY) is None
    worse = quality_trigger([online(KEYS[12], calibration=1.6, ne=0.91)], base, "ctr_model-v1", POLICY)
    assert worse is not None and worse.metric == "calibration_change"
    assert abs(worse.value - 0.4) < 1e-9
    entropy = quality_trigger([online(KEYS[12], calibration=1.2, ne=0.96)], base, "ctr_model-v1", POLICY)
    assert entropy is not None and entropy.metric == "normalized_entropy_increase"
    # a better NE is no reason; another version's rows and the baseline day itself are ignored
    assert quality_trigger([online(KEYS[12], ne=0.80, calibration=1.2)], base, "ctr_model-v1", POLICY) is None
    assert quality_trigger([online(KEYS[12], "ctr_model-v2", 3.0)], base, "ctr_model-v1", POLICY) is None
    assert quality_trigger(base, base, "ctr_model-v1", POLICY) is None


def test_staleness_counts_partitions_since_the_first_served_day() -> None:
    policy = RetrainPolicy(max_champion_age_days=14)
    assert staleness_trigger(KEYS[24], KEYS[10], policy) is None  # 14 days: still fresh
    stale = staleness_trigger(KEYS[25], KEYS[10], policy)
    assert stale is not None and stale.value == 15 and stale.threshold == 14
    assert staleness_trigger(KEYS[25], None, policy) is None
    assert staleness_trigger(KEYS[25], "1999-01-01", policy) is None


def test_chain_links_request_neighbouring_partitions() -> None:
    by_name = {link.sensor: link for link in CHAIN}
    after_ingest = chain_request(by_name["events_after_ingest"], KEYS[10])
    assert isinstance(after_ingest, RunRequest)
    assert after_ingest.partition_key == KEYS[9] and after_ingest.run_key == f"events_job:{KEYS[9]}"
    stats = chain_request(by_name["serving_stats_after_events"], KEYS[10])
    assert isinstance(stats, RunRequest) and stats.partition_key == KEYS[12]
    # a failed ingest still requests the day before (its guards decide what can be built)
    failed = by_name["events_after_failed_ingest"]
    assert failed.status == DagsterRunStatus.FAILURE and failed.then == "events_job"
    assert isinstance(chain_request(failed, KEYS[10]), RunRequest)
    # off the ends of the partitions: skipped, saying why
    assert isinstance(chain_request(by_name["events_after_ingest"], KEYS[0]), SkipReason)
    assert isinstance(chain_request(by_name["serving_stats_after_events"], KEYS[-1]), SkipReason)
    assert neighbour_partition("not-a-day", 1) is None
