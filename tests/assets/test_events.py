"""``ad_events`` in the simulated history: every day joined, labelled and checked (the join's edge
cases are tested in tests/core)."""

import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import DagsterRunStatus

from tests.assets.history import SIMULATOR, History

CHECKS = (
    "raw_impressions_expectations",
    "raw_clicks_expectations",
    "ad_events_expectations",
    "features_expectations",
)


def test_simulated_days_run_end_to_end(history: History) -> None:
    # every run of make run's order succeeded: statistics, ingest and (from the second day) the
    # events of the day before, for each of the 13 days, and one training
    runs = history.instance.get_runs()
    assert len(runs) == 3 * len(history.keys) - 1 + 1
    assert {r.status for r in runs} == {DagsterRunStatus.SUCCESS}
    assert [d.day for d in history.days] == history.keys[:-1]
    for report in history.days:
        assert report.failures == [], report.day
        assert {name: report.checks.get(name) for name in CHECKS} == dict.fromkeys(CHECKS, True), report.day
    assert history.training.failures == []
    for day in history.event_days:
        events = history.metadata("ad_events", day)
        # two impressions a request; all but the faulty lines and the duplicates are events
        assert events["dagster/row_count"] > 0.95 * 2 * SIMULATOR["requests_per_day"]
        assert 0.01 < events["ctr"] < 0.08
        assert events["late_clicks_after_midnight"] >= 0
        assert events["attribution_window_hours"] == 24.0


def test_late_clicks_are_the_days_label(history: History) -> None:
    """Clicks that land after midnight label the impression's own day: each day's events count
    them, at most as many as the simulator made land on the next day."""
    total = 0
    for day in history.event_days:
        late = history.metadata("ad_events", day)["late_clicks_after_midnight"]
        landed_next_day = sum(
            n
            for landed, n in history.simulator.manifest(day)["clicks_by_landing_date"].items()
            if landed > day
        )
        assert late <= landed_next_day, day
        events = pq.read_table(history.warehouse.partition_path("ad_events", day))
        crossed = pc.sum(
            pc.greater(pc.strftime(events["click_ts"], "%Y-%m-%d"), pc.strftime(events["ts"], "%Y-%m-%d"))
        )
        assert (crossed.as_py() or 0) == late
        total += late
    assert total > 0


def test_events_are_one_row_per_impression(history: History) -> None:
    for day in history.event_days[:3]:
        events = pq.read_table(history.warehouse.partition_path("ad_events", day))
        assert pc.count_distinct(events["impression_id"]).as_py() == events.num_rows
        assert events.num_rows == history.metadata("ad_events", day)["dagster/row_count"]
        assert pc.sum(events["clicked"]).as_py() == history.metadata("ad_events", day)["clicked"]
