"""The retraining rules on plain values: drift of the request context, the champion's online quality
against its first served day, and its age (the sensors turn a trigger into one run request)."""

from clickloop.calibration import CALIBRATION_LAG_DAYS
from clickloop.metrics import calibration_interval
from clickloop.retraining import (
    CONTEXT_NUMERIC,
    RetrainThresholds,
    Trigger,
    beyond_chance,
    context_drift_share,
    cooldown_reason,
    drift_trigger,
    novelty_trigger,
    quality_trigger,
    request_context_columns,
    staleness_trigger,
)
from tests.core.synthetic import CONTRACT, KEYS

CONTEXT = request_context_columns(CONTRACT)
THRESHOLDS = RetrainThresholds()


def online(
    day: str, version: str = "ctr_model-v1", calibration: float | None = 1.0, ne: float | None = 0.9
) -> dict:
    return {"day": day, "model_version": version, "calibration": calibration, "normalized_entropy": ne}


def test_request_context_is_the_contracts_request_side_and_the_hour() -> None:
    assert CONTEXT == (*CONTRACT.request_context, *CONTEXT_NUMERIC)
    assert CONTEXT == ("user_segment", "site_category", "device_type", "os", "country", "hour")


def test_only_request_context_columns_count_as_drift() -> None:
    ad_side = {"hist_ad_ctr": {}, "bid_cpc": {}, "predicted_ctr": {}, "advertiser_id": {}}
    assert context_drift_share({"drifted_columns": ad_side}, CONTEXT) == 0
    assert drift_trigger({"day": KEYS[5], "drifted_columns": ad_side}, CONTEXT, THRESHOLDS) is None

    two = {c: {} for c in CONTEXT[:2]}
    share = 2 / len(CONTEXT)
    trigger = drift_trigger({"day": KEYS[5], "drifted_columns": {**two, **ad_side}}, CONTEXT, THRESHOLDS)
    assert share > THRESHOLDS.drift_share_threshold
    assert trigger is not None and trigger.value == share and trigger.day == KEYS[5]
    assert trigger.sensor == "drift_sensor" and trigger.metric == "context_drift_share"
    # exactly at the threshold does not fire; just above does
    at = RetrainThresholds(drift_share_threshold=share)
    assert drift_trigger({"day": KEYS[5], "drifted_columns": two}, CONTEXT, at) is None
    assert drift_trigger(None, CONTEXT, THRESHOLDS) is None
    assert context_drift_share({"drifted_columns": None}, CONTEXT) == 0.0
    assert context_drift_share({"drifted_columns": two}, ()) == 0.0


def test_trigger_names_metric_value_threshold_and_day() -> None:
    trigger = drift_trigger(
        {"day": KEYS[7], "drifted_columns": {c: {} for c in CONTEXT}}, CONTEXT, THRESHOLDS
    )
    assert trigger is not None
    assert trigger.run_key == f"drift_sensor:{KEYS[7]}"  # the same day never triggers twice
    tags = trigger.tags()
    assert tags["clickloop/trigger"] == "drift_sensor" and tags["clickloop/day"] == KEYS[7]
    assert tags["clickloop/metric"] == "context_drift_share"
    assert float(tags["clickloop/value"]) == 1.0
    assert float(tags["clickloop/threshold"]) == THRESHOLDS.drift_share_threshold
    assert "crossed" in trigger.reason and KEYS[7] in trigger.reason
    assert Trigger("quality_sensor", KEYS[1], "m", 0.123456789, 0.1).tags()["clickloop/value"] == "0.123457"


def test_quality_compares_the_champion_with_its_first_served_day() -> None:
    base = [online(KEYS[10], calibration=1.2, ne=0.90)]
    # the winner's-curse offset at promotion is the baseline, not 1.0
    assert (
        quality_trigger([online(KEYS[12], calibration=1.3, ne=0.91)], base, "ctr_model-v1", THRESHOLDS)
        is None
    )
    worse = quality_trigger([online(KEYS[12], calibration=1.6, ne=0.91)], base, "ctr_model-v1", THRESHOLDS)
    assert worse is not None and worse.metric == "calibration_change" and worse.sensor == "quality_sensor"
    assert abs(worse.value - 0.4) < 1e-9 and worse.day == KEYS[12]
    lower = quality_trigger([online(KEYS[12], calibration=0.9, ne=0.91)], base, "ctr_model-v1", THRESHOLDS)
    assert lower is not None and abs(lower.value - 0.3) < 1e-9  # a change either way
    entropy = quality_trigger([online(KEYS[12], calibration=1.2, ne=0.96)], base, "ctr_model-v1", THRESHOLDS)
    assert entropy is not None and entropy.metric == "normalized_entropy_increase"
    # a better NE is no reason; another version's rows and the baseline day itself are ignored
    assert (
        quality_trigger([online(KEYS[12], ne=0.80, calibration=1.2)], base, "ctr_model-v1", THRESHOLDS)
        is None
    )
    assert quality_trigger([online(KEYS[12], "ctr_model-v2", 3.0)], base, "ctr_model-v1", THRESHOLDS) is None
    assert quality_trigger(base, base, "ctr_model-v1", THRESHOLDS) is None
    assert (
        quality_trigger([online(KEYS[12], calibration=None, ne=None)], base, "ctr_model-v1", THRESHOLDS)
        is None
    )


def test_a_champion_calibrated_on_its_own_traffic_is_held_to_one() -> None:
    base = [online(KEYS[10], calibration=1.45)]  # its first served day: fitted on another policy's traffic
    settled = CALIBRATION_LAG_DAYS + 1  # from then on the daily calibration is fitted on its own traffic
    today = [online(KEYS[13], calibration=1.1)]
    assert quality_trigger(today, base, "ctr_model-v1", THRESHOLDS, served_days=settled) is None
    # the same day before it settled: 0.35 from its first served day
    early = quality_trigger(today, base, "ctr_model-v1", THRESHOLDS, served_days=CALIBRATION_LAG_DAYS)
    assert early is not None and abs(early.value - 0.35) < 1e-9
    drop = quality_trigger([online(KEYS[13], calibration=1.3)], base, "ctr_model-v1", THRESHOLDS, settled)
    assert drop is not None and drop.metric == "calibration_change" and abs(drop.value - 0.3) < 1e-9


def test_staleness_counts_partitions_since_the_first_served_day() -> None:
    thresholds = RetrainThresholds(max_champion_age_days=14)
    assert staleness_trigger(KEYS[24], KEYS[10], KEYS, thresholds) is None  # 14 days: still fresh
    stale = staleness_trigger(KEYS[25], KEYS[10], KEYS, thresholds)
    assert stale is not None and stale.value == 15 and stale.threshold == 14
    assert stale.run_key == f"staleness_sensor:{KEYS[25]}"
    assert staleness_trigger(KEYS[25], None, KEYS, thresholds) is None
    assert staleness_trigger(KEYS[25], "1999-01-01", KEYS, thresholds) is None
    assert staleness_trigger("2099-01-01", KEYS[10], KEYS, thresholds) is None


def test_a_wave_of_ads_without_history_asks_for_a_retraining() -> None:
    """The share of the champion's impressions on ads its statistics never saw, against its first
    served day: a wave of new campaigns fires, a stable stream's small changes do not."""

    def served(day: str, cold: float | None, version: str = "ctr_model-v1") -> dict:
        return {**online(day, version), "cold_start_share": cold}

    first = [served(KEYS[11], 0.002)]
    wave = novelty_trigger([served(KEYS[13], 0.666)], first, "ctr_model-v1", THRESHOLDS)
    assert wave is not None and wave.sensor == "novelty_sensor" and wave.day == KEYS[13]
    assert wave.metric == "cold_start_share_increase" and abs(wave.value - 0.664) < 1e-9
    assert wave.threshold == THRESHOLDS.cold_start_tolerance
    # within the tolerance, on the first served day itself, for another version or without the
    # measure: nothing
    calm = served(KEYS[13], 0.002 + THRESHOLDS.cold_start_tolerance)
    assert novelty_trigger([calm], first, "ctr_model-v1", THRESHOLDS) is None
    assert novelty_trigger([served(KEYS[11], 0.9)], first, "ctr_model-v1", THRESHOLDS) is None
    assert novelty_trigger([served(KEYS[13], 0.9, "ctr_model-v2")], first, "ctr_model-v1", THRESHOLDS) is None
    assert novelty_trigger([served(KEYS[13], None)], first, "ctr_model-v1", THRESHOLDS) is None


def test_one_episode_asks_for_one_retraining() -> None:
    thresholds = RetrainThresholds(cooldown_days=3)
    # a request for KEYS[5] silences every sensor on that day and the three after it
    for day in KEYS[5:9]:
        reason = cooldown_reason(day, KEYS[5], KEYS, thresholds)
        assert reason is not None and KEYS[5] in reason and "cool-down 3 days" in reason
    assert cooldown_reason(KEYS[9], KEYS[5], KEYS, thresholds) is None
    # no request yet, or one for a later day (a backfill), never blocks
    assert cooldown_reason(KEYS[6], None, KEYS, thresholds) is None
    assert cooldown_reason(KEYS[4], KEYS[5], KEYS, thresholds) is None
    assert cooldown_reason(KEYS[6], KEYS[5], KEYS, RetrainThresholds(cooldown_days=0)) is None


def test_a_calibration_change_its_clicks_can_explain_is_no_reason() -> None:
    """The day's calibration beyond the tolerance, but its interval (the day's clicks) holds the
    reference: chance, no retraining; the same figure on a day of many clicks is a retraining."""
    base = [online(KEYS[10], calibration=1.0)]
    settled = CALIBRATION_LAG_DAYS + 1
    for clicks, fires in ((40, False), (300, True)):
        low, high = calibration_interval(1.3 * clicks, clicks)
        assert (low <= 1.0 <= high) is not fires
        today = [{**online(KEYS[13], calibration=1.3), "calibration_low": low, "calibration_high": high}]
        trigger = quality_trigger(today, base, "ctr_model-v1", THRESHOLDS, served_days=settled)
        assert (trigger is not None) is fires, (clicks, low, high)
        if fires:
            assert trigger.metric == "calibration_change" and abs(trigger.value - 0.3) < 1e-9
        # before it settled the reference is its first served day's calibration, held the same way
        early = quality_trigger(today, [online(KEYS[10], calibration=0.95)], "ctr_model-v1", THRESHOLDS, 1)
        assert (early is not None) is (low > 0.95)
    # a low calibration the same way; a day without clicks (no upper bound) can't hold a higher one
    low, high = calibration_interval(0.7 * 300, 300)
    below = [{**online(KEYS[13], calibration=0.7), "calibration_low": low, "calibration_high": high}]
    assert quality_trigger(below, base, "ctr_model-v1", THRESHOLDS, settled) is not None
    assert beyond_chance({"calibration_low": 0.5, "calibration_high": None}, 0.4)
    assert not beyond_chance({"calibration_low": 0.5, "calibration_high": None}, 1.0)
    # rows stored without an interval: the tolerance alone, as before
    assert beyond_chance({"calibration": 1.3}, 1.0)
