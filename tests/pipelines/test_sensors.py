"""The sensors, evaluated in-process as the daemon would: the refresh chain's links request the
neighbouring partitions, and the retraining sensors read the monitoring store and the instance of a
real history, stay quiet on a stable stream, fire when a threshold is crossed, and never retrain
on a day that failed its blocking data checks (the rules themselves are tested in tests/core)."""

from dataclasses import fields, replace
from pathlib import Path

import pytest
from dagster import (
    DagsterRunStatus,
    MaterializeResult,
    RunRequest,
    SkipReason,
    asset,
    build_run_status_sensor_context,
    build_sensor_context,
    materialize,
)

from assets.partitions import Calendar, days_around
from assets.raw_logs import raw_log_assets
from clickloop.contract_file import load_contract
from clickloop.drift import DriftRow
from clickloop.online import OnlineMetricsRow
from clickloop.retraining import RetrainThresholds, drift_trigger, request_context_columns
from pipelines.cli.runner import RunReport
from pipelines.sensors import (
    CHAIN,
    RETRAINING_SENSORS,
    chain_request,
    data_tables,
    failed_data_checks,
    run_request,
)
from pipelines.settings import DEFAULT_START_DATE
from tests.assets.history import History, PriceBugLoop
from tests.assets.support import CONTRACT, impression_records, typed_impressions

CALENDAR = Calendar(DEFAULT_START_DATE, 7)
KEYS = CALENDAR.keys()
CONTEXT = request_context_columns(load_contract())


# --- The refresh chain ------------------------------------------------------------------------------


def test_chain_links_request_neighbouring_partitions() -> None:
    by_name = {link.sensor: link for link in CHAIN}
    after_ingest = chain_request(CALENDAR, by_name["events_after_ingest"], KEYS[10])
    assert isinstance(after_ingest, RunRequest)
    assert after_ingest.partition_key == KEYS[9] and after_ingest.run_key == f"events_job:{KEYS[9]}"
    stats = chain_request(CALENDAR, by_name["serving_stats_after_events"], KEYS[10])
    assert isinstance(stats, RunRequest) and stats.partition_key == KEYS[12]
    # a failed ingest still requests the day before (its guards decide what can be built)
    failed = by_name["events_after_failed_ingest"]
    assert failed.status == DagsterRunStatus.FAILURE and failed.then == "events_job"
    assert isinstance(chain_request(CALENDAR, failed, KEYS[10]), RunRequest)
    # off the ends of the partitions: skipped, saying why
    assert isinstance(chain_request(CALENDAR, by_name["events_after_ingest"], KEYS[0]), SkipReason)
    assert isinstance(chain_request(CALENDAR, by_name["serving_stats_after_events"], KEYS[-1]), SkipReason)
    assert isinstance(chain_request(CALENDAR, by_name["events_after_ingest"], "not-a-day"), SkipReason)
    assert CALENDAR.neighbour("not-a-day", 1) is None
    # the targets come from the windows through which the requested job reads the finished one:
    # a window that ends later moves the chain with it
    assert CALENDAR.completed_by([days_around(-5, -3)], KEYS[10]) == KEYS[13]
    assert CALENDAR.completed_by([days_around(-1, 0), days_around(-1, 2)], KEYS[10]) == KEYS[8]


def chain_sensor_after(loop: PriceBugLoop, report: RunReport, sensor: str) -> RunRequest | SkipReason:
    """Evaluate one run-status sensor of the chain on a finished run, as the daemon would."""
    result = report.result
    event = result.get_run_success_event() if report.success else result.get_run_failure_event()
    context = build_run_status_sensor_context(
        sensor_name=sensor,
        dagster_event=event,
        dagster_instance=loop.instance,
        dagster_run=result.dagster_run,
    )
    return loop.defs.get_repository_def().get_sensor_def(sensor)(context)


def test_run_status_sensors_follow_the_runs(price_bug: PriceBugLoop) -> None:
    """On the real runs of the price-bug loop: a failed ingest of day D still asks for the events of
    D-1 (whose own inputs passed), and the first day has no day before it."""
    first, second, third = price_bug.keys
    failed_ingest = price_bug.runs[("ingest_job", third)]
    assert not failed_ingest.success
    request = chain_sensor_after(price_bug, failed_ingest, "events_after_failed_ingest")
    assert isinstance(request, RunRequest)
    assert (request.partition_key, request.run_key) == (second, f"events_job:{second}")
    skipped = chain_sensor_after(price_bug, price_bug.runs[("ingest_job", first)], "events_after_ingest")
    assert isinstance(skipped, SkipReason)
    stats = chain_sensor_after(price_bug, price_bug.runs[("events_job", first)], "serving_stats_after_events")
    assert isinstance(stats, RunRequest) and stats.partition_key == third


# --- Retraining requests ----------------------------------------------------------------------------


def test_a_trigger_requests_one_training_naming_metric_value_threshold_and_day() -> None:
    thresholds = RetrainThresholds()
    trigger = drift_trigger(
        {"day": KEYS[7], "drifted_columns": {c: {} for c in CONTEXT}}, CONTEXT, thresholds
    )
    assert trigger is not None
    request = run_request(trigger)
    assert isinstance(request, RunRequest)
    assert request.run_key == f"drift_sensor:{KEYS[7]}"  # the same day never triggers twice
    assert request.tags["clickloop/metric"] == "context_drift_share"
    assert float(request.tags["clickloop/value"]) == 1.0
    assert float(request.tags["clickloop/threshold"]) == thresholds.drift_share_threshold
    assert request.tags["clickloop/kind"] == "training"
    assert request.tags["clickloop/day"] == KEYS[7]
    assert "crossed" in trigger.reason and KEYS[7] in trigger.reason


def evaluate(loop: History | PriceBugLoop, name: str) -> RunRequest | SkipReason:
    """One tick of a retraining sensor on the loop's instance and resources."""
    repo = loop.defs.get_repository_def()
    resources = repo.get_top_level_resources()
    with build_sensor_context(
        instance=loop.instance, repository_def=repo, resources=resources, sensor_name=name
    ) as context:
        evaluation = repo.get_sensor_def(name).evaluate_tick(context)
    if evaluation.run_requests:
        (request,) = evaluation.run_requests
        return request
    return SkipReason(evaluation.skip_message)


def test_a_stable_history_triggers_no_retraining(history: History) -> None:
    latest = history.keys[-2]  # the newest day with monitoring, served by the champion
    for name in RETRAINING_SENSORS:
        outcome = evaluate(history, name)
        assert isinstance(outcome, SkipReason), (name, outcome)
        assert outcome.skip_message == f"{latest}: no threshold crossed ({name}, champion ctr_model-v1)"


def online_row(stored: dict, **changes) -> OnlineMetricsRow:
    """A monitoring store row as an :class:`OnlineMetricsRow`, with ``changes``."""
    return replace(OnlineMetricsRow(**{f.name: stored[f.name] for f in fields(OnlineMetricsRow)}), **changes)


def test_retraining_sensors_fire_when_a_threshold_is_crossed(history: History, tmp_path: Path) -> None:
    loop = history.copy(tmp_path / "copy")
    store, keys = loop.monitoring_store, loop.keys
    first_served, day = keys[11], keys[12]
    (baseline,) = store.online_metrics_for(first_served)

    # quality: the champion's calibration moved 0.4 from its first served day, its interval with it
    # (the same clicks: the interval scales with the predictions)
    moved = baseline["calibration"] + 0.4
    scale = moved / baseline["calibration"]
    low, high = baseline["calibration_low"] * scale, baseline["calibration_high"] * scale
    assert low > baseline["calibration"]  # the day's clicks rule chance out
    store.write_online_metrics(
        day, [online_row(baseline, calibration=moved, calibration_low=low, calibration_high=high)]
    )
    quality = evaluate(loop, "quality_sensor")
    assert isinstance(quality, RunRequest), quality
    assert quality.run_key == f"quality_sensor:{day}"
    assert quality.tags["clickloop/metric"] == "calibration_change"
    assert float(quality.tags["clickloop/value"]) == pytest.approx(0.4, abs=1e-5)
    assert float(quality.tags["clickloop/threshold"]) == RetrainThresholds().calibration_tolerance
    for quiet in ("drift_sensor", "staleness_sensor"):
        assert isinstance(evaluate(loop, quiet), SkipReason)

    # drift: two of the six request-context columns drifted
    drifted = {
        c: {"score": 0.4, "method": "Jensen-Shannon distance", "threshold": 0.1}
        for c in ("device_type", "os")
    }
    store.write_drift(day, DriftRow(0.2, 0.0, 0.5, False, False, drifted_columns=drifted))
    drift = evaluate(loop, "drift_sensor")
    assert isinstance(drift, RunRequest), drift
    assert drift.run_key == f"drift_sensor:{day}"
    assert float(drift.tags["clickloop/value"]) == pytest.approx(2 / len(CONTEXT), abs=1e-5)
    assert drift.tags["clickloop/kind"] == "training" and drift.tags["clickloop/day"] == day

    # the day's raw impressions fail their blocking check: the thresholds still cross, no request
    assert not fail_raw_impressions(loop, day)
    for name in ("quality_sensor", "drift_sensor"):
        refused = evaluate(loop, name)
        assert isinstance(refused, SkipReason), refused
        assert "crossed" in refused.skip_message and "not retraining on bad data" in refused.skip_message
        assert f"raw_impressions:raw_impressions_expectations on {day}: failed" in refused.skip_message

    # staleness: the champion has served 15 days since its first (14 allowed)
    stale_day = KEYS[KEYS.index(first_served) + 15]
    store.write_online_metrics(stale_day, [online_row(baseline)])
    stale = evaluate(loop, "staleness_sensor")
    assert isinstance(stale, RunRequest), stale
    assert stale.run_key == f"staleness_sensor:{stale_day}"
    assert stale.tags["clickloop/metric"] == "champion_age_days"
    assert float(stale.tags["clickloop/value"]) == 15


def fail_raw_impressions(loop: History, day: str) -> bool:
    """Ingest ``day`` again as typed rows whose prices are in cents, with the real blocking check."""
    calendar = Calendar(loop.settings.start_date, loop.settings.feature_window_days)
    check = raw_log_assets(calendar, CONTRACT)[1][0]

    @asset(name="raw_impressions", partitions_def=calendar.partitions)
    def raw_impressions(context) -> MaterializeResult:
        table = typed_impressions(
            impression_records(context.partition_key, 50, price_scale=100.0), CONTRACT.impressions
        )
        loop.warehouse.write_partition("raw_impressions", context.partition_key, table)
        return MaterializeResult()

    result = materialize(
        [raw_impressions, check],
        partition_key=day,
        instance=loop.instance,
        resources={"warehouse": loop.warehouse_resource},
        raise_on_error=False,
    )
    return all(e.passed for e in result.get_asset_check_evaluations())


def test_no_retraining_on_bad_data(price_bug: PriceBugLoop) -> None:
    """Prices in cents from the second day on: the refresh stopped there, and every retraining
    sensor says why instead of requesting a run."""
    first, second, third = price_bug.keys
    tables = data_tables(load_contract())
    assert tables == ("raw_impressions", "raw_clicks", "ad_events")
    assert failed_data_checks(price_bug.instance, tables, [first]) == []
    assert failed_data_checks(price_bug.instance, tables, [second]) == [
        f"raw_impressions:raw_impressions_expectations on {second}: failed"
    ]
    for name in RETRAINING_SENSORS:
        outcome = evaluate(price_bug, name)
        assert isinstance(outcome, SkipReason), (name, outcome)
        message = outcome.skip_message
        assert message.startswith("not retraining on bad data: "), message
        assert f"raw_impressions:raw_impressions_expectations on {second}: failed" in message
        assert f"raw_impressions:raw_impressions_expectations on {third}: failed" in message
