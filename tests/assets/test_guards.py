"""Blocking checks across runs (``assets/guards.py``): the partitions an asset was built from follow
the partition mappings, a day that failed its check stops everything built on it in later runs,
and only the latest completed evaluation on the latest materialization vouches for a partition."""

from pathlib import Path

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetKey,
    Config,
    DagsterInstance,
    MaterializeResult,
    asset,
    asset_check,
    materialize,
)

from assets.guards import check_problem, upstream_partitions
from pipelines.definitions import build_defs
from pipelines.settings import Settings
from tests.assets.history import PriceBugLoop
from tests.assets.support import CALENDAR, KEYS


def test_upstream_partitions_follow_the_partition_mappings(tmp_path: Path) -> None:
    defs = build_defs(Settings(data_dir=tmp_path))
    graph = defs.get_repository_def().asset_graph
    d = KEYS[10]
    found = upstream_partitions(graph, AssetKey("features"), [d])
    assert found[AssetKey("features")] == {d}
    assert found[AssetKey("feature_stats")] == {d}
    events = sorted(found[AssetKey("ad_events")])
    assert d in events and max(events) == d  # the day itself and its history before it
    assert len(events) == CALENDAR.feature_window_days + 1
    assert KEYS[9] not in events  # D-1: its labels were not final when D began
    around = [KEYS.index(k) for k in events]
    # ad_events of day k reads the impressions of k-1..k and the clicks of k-1..k+1 (late clicks)
    assert found[AssetKey("raw_impressions")] == {KEYS[i + o] for i in around for o in (-1, 0)}
    assert found[AssetKey("raw_clicks")] == {KEYS[i + o] for i in around for o in (-1, 0, 1)}


def test_failed_blocking_check_stops_downstream_across_runs(price_bug: PriceBugLoop) -> None:
    """Prices logged in cents from the second day on: raw_impressions fails its blocking check, and
    ad_events refuses that day even in a later run, while the day before still builds."""
    first, second, third = price_bug.keys
    runs = price_bug.runs
    assert all(runs[("feature_stats_job", k)].success for k in (first, second))
    assert runs[("ingest_job", first)].checks["raw_impressions_expectations"] is True
    assert runs[("ingest_job", second)].checks["raw_impressions_expectations"] is False
    assert runs[("ingest_job", third)].checks["raw_impressions_expectations"] is False

    assert runs[("events_job", first)].success
    blocked = runs[("events_job", second)]
    assert not blocked.success
    assert any(f"raw_impressions_expectations on {second} failed" in f for f in blocked.failures), (
        blocked.failures
    )
    warehouse = price_bug.warehouse
    assert warehouse.has_partition("ad_events", first)
    assert not warehouse.has_partition("ad_events", second)
    assert not warehouse.has_partition("features", second)
    # the bad day's typed rows and quarantine are kept, for the fix and the re-run
    assert warehouse.has_partition("raw_impressions", second)


# --- What vouches for a partition ------------------------------------------------------------------


class DayConfig(Config):
    good: bool = True
    fail_asset: bool = False


@asset(partitions_def=CALENDAR.partitions)
def day_table(config: DayConfig) -> MaterializeResult:
    if config.fail_asset:
        raise RuntimeError("the day could not be built")
    return MaterializeResult(metadata={"good": config.good})


@asset_check(asset=day_table, blocking=True, partitions_def=CALENDAR.partitions)
def day_table_ok(context) -> AssetCheckResult:
    records = context.instance.fetch_materializations(AssetKey("day_table"), limit=1).records
    return AssetCheckResult(passed=bool(records[0].asset_materialization.metadata["good"].value))


CHECK = AssetCheckKey(AssetKey("day_table"), "day_table_ok")


def build_day(instance: DagsterInstance, *, good: bool = True, fail_asset: bool = False, check: bool = True):
    return materialize(
        [day_table, day_table_ok] if check else [day_table],
        partition_key=KEYS[0],
        instance=instance,
        run_config={"ops": {"day_table": {"config": {"good": good, "fail_asset": fail_asset}}}},
        raise_on_error=False,
    )


@pytest.fixture()
def instance() -> DagsterInstance:
    with DagsterInstance.ephemeral() as instance:
        yield instance


def test_only_the_latest_completed_evaluation_of_the_latest_data_vouches(instance: DagsterInstance) -> None:
    assert check_problem(instance, CHECK, KEYS[0]) == "never evaluated"
    assert build_day(instance, good=False).get_asset_check_evaluations()[0].passed is False
    assert check_problem(instance, CHECK, KEYS[0]) == "failed"
    assert build_day(instance).success
    assert check_problem(instance, CHECK, KEYS[0]) is None
    assert check_problem(instance, CHECK, KEYS[1]) == "never evaluated"  # another partition

    # rebuilt without its check: the passed evaluation is about older data
    assert build_day(instance, check=False).success
    assert check_problem(instance, CHECK, KEYS[0]) == "older than the latest materialization"
    assert build_day(instance).success
    assert check_problem(instance, CHECK, KEYS[0]) is None

    # a run that failed before its check ran plans an evaluation that never completes: the last
    # completed one (on the data that is still the latest) stays in force
    failed = build_day(instance, fail_asset=True)
    assert not failed.success and failed.get_asset_check_evaluations() == []
    assert check_problem(instance, CHECK, KEYS[0]) is None
