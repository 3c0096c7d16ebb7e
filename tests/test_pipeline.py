"""End to end through Dagster: the real jobs, checks and resources on simulated days."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, Definitions

from pipelines.automation import RetrainPolicy
from pipelines.definitions import build_defs
from resources.monitoring_store import MonitoringStore
from resources.serving import ChampionServing
from resources.simulator import AdServerSimulator
from resources.tracking import ModelRegistry
from resources.warehouse import Warehouse

DAYS = ["2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04"]


def small_resources(tmp: Path, **simulator: object) -> dict[str, object]:
    """The repository's resources at a small scale, everything under ``tmp``."""
    warehouse = Warehouse(data_dir=str(tmp / "data"))
    registry = ModelRegistry(data_dir=str(tmp / "data"))
    return {
        "warehouse": warehouse,
        "model_registry": registry,
        "monitoring_store": MonitoringStore(data_dir=str(tmp / "data")),
        "retrain_policy": RetrainPolicy(),
        "log_source": AdServerSimulator(
            landing_dir=str(tmp / "landing"),
            requests_per_day=4_000,
            n_users=5_000,
            start_date=DAYS[0],
            serving=ChampionServing(registry=registry, warehouse=warehouse),
            **simulator,
        ),
    }


def run_job(defs: Definitions, job: str, day: str, instance: DagsterInstance):
    return defs.get_job_def(job).execute_in_process(
        instance=instance, partition_key=day, raise_on_error=False
    )


def materialize_days(defs: Definitions, instance: DagsterInstance, days: list[str]) -> list:
    """Ingest every day, and join every day whose next day has been ingested."""
    results = []
    for i, day in enumerate(days):
        results.append(run_job(defs, "feature_stats_job", day, instance))
        results.append(run_job(defs, "ingest_job", day, instance))
        if i > 0:
            results.append(run_job(defs, "events_job", days[i - 1], instance))
    return results


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("loop")
    resources = small_resources(tmp)
    defs = build_defs(resources)
    instance = DagsterInstance.ephemeral()
    results = materialize_days(defs, instance, DAYS)
    return defs, instance, resources, results


def mat_metadata(instance: DagsterInstance, asset: str, day: str) -> dict[str, object]:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[day]), limit=1
    ).records
    assert records, f"{asset} {day} was not materialized"
    return {k: getattr(v, "value", v) for k, v in records[0].asset_materialization.metadata.items()}


def test_simulated_days_run_end_to_end(loop) -> None:
    _, instance, _, results = loop
    assert all(r.success for r in results)
    for day in DAYS[:-1]:
        events = mat_metadata(instance, "ad_events", day)
        assert events["dagster/row_count"] > 7_000
        assert 0.01 < events["ctr"] < 0.08
        assert events["late_clicks_after_midnight"] >= 0


def test_row_accounting_matches_what_the_simulator_injected(loop) -> None:
    """Every line the simulator wrote is either typed or quarantined for the reason it was made."""
    _, instance, resources, _ = loop
    sim: AdServerSimulator = resources["log_source"]
    for day in DAYS[:-1]:
        manifest = sim.manifest(day)
        imp_faults = manifest["faults"]["impressions"]
        raw = mat_metadata(instance, "raw_impressions", day)
        assert raw["lines_read"] == raw["valid_rows"] + raw["quarantined_rows"]
        assert raw["quarantined_rows"] == (
            imp_faults["malformed_line"] + imp_faults["wrong_type"] + imp_faults["null_field"]
        )
        events = mat_metadata(instance, "ad_events", day)
        assert events["duplicate_impressions"] == imp_faults["duplicate_impression"]
        assert events["dagster/row_count"] + events["duplicate_impressions"] == raw["valid_rows"]

        click_files = {
            name: f for name, f in _all_click_files(sim, DAYS).items() if f"date={day}" in name
        }
        raw_clicks = mat_metadata(instance, "raw_clicks", day)
        assert raw_clicks["lines_read"] == sum(f["lines"] for f in click_files.values())
        assert raw_clicks["quarantined_rows"] == sum(
            f["faults"]["malformed_line"] + f["faults"]["wrong_type"] + f["faults"]["null_field"]
            for f in click_files.values()
        )
        injected_rejects = sum(
            f["faults"]["orphan_click"]
            + f["faults"]["click_before_impression"]
            + f["faults"]["duplicate_click"]
            + f["clicks_on_faulty_impressions"]
            for f in click_files.values()
        )
        rejected = (
            events["orphan_clicks"] + events["clicks_before_impression"] + events["duplicate_clicks"]
        )
        assert rejected == injected_rejects
        assert events["clicks_in"] == raw_clicks["valid_rows"]


def _all_click_files(sim: AdServerSimulator, days: list[str]) -> dict[str, dict]:
    files: dict[str, dict] = {}
    for day in days:
        files.update(
            {k: v for k, v in sim.manifest(day)["files"].items() if v["kind"] == "clicks"}
        )
    return files


def test_rematerializing_a_partition_gives_identical_output(loop) -> None:
    defs, instance, resources, _ = loop
    wh: Warehouse = resources["warehouse"]
    day = DAYS[1]
    before = {a: pq.read_table(wh.partition_path(a, day)) for a in ("raw_impressions", "ad_events")}
    quarantine = pq.read_table(wh.quarantine_path("raw_impressions", day))
    assert run_job(defs, "ingest_job", day, instance).success
    assert run_job(defs, "events_job", day, instance).success
    for asset, table in before.items():
        assert pq.read_table(wh.partition_path(asset, day)).equals(table), asset
    assert pq.read_table(wh.quarantine_path("raw_impressions", day)).equals(quarantine)
    leftovers = [p for p in wh.root.rglob("*.tmp")]
    assert leftovers == []


def test_failed_blocking_check_stops_downstream_across_runs(tmp_path: Path) -> None:
    """Prices logged in cents from day 2 on: raw_impressions fails its blocking check, and
    ad_events refuses that day even in a later run, while the day before still builds."""
    resources = small_resources(tmp_path, scenario="price_unit_bug", scenario_start=DAYS[1])
    defs = build_defs(resources)
    instance = DagsterInstance.ephemeral()
    for day in DAYS[:2]:
        assert run_job(defs, "feature_stats_job", day, instance).success
    ingest = [run_job(defs, "ingest_job", d, instance) for d in DAYS[:3]]
    checks = {
        (e.asset_key.to_user_string(), e.partition): e.passed
        for r in ingest
        for e in r.get_asset_check_evaluations()
    }
    assert checks[("raw_impressions", DAYS[0])] is True
    assert checks[("raw_impressions", DAYS[1])] is False

    assert run_job(defs, "events_job", DAYS[0], instance).success
    blocked = run_job(defs, "events_job", DAYS[1], instance)
    assert not blocked.success
    failure = next(e for e in blocked.all_events if e.is_step_failure)
    assert "raw_impressions_expectations on 2026-10-02 failed" in str(
        failure.event_specific_data.error.message
    ) or "raw_impressions_expectations on 2026-10-02 failed" in str(
        failure.event_specific_data.error.cause
    )
    wh: Warehouse = resources["warehouse"]
    assert wh.has_partition("ad_events", DAYS[0])
    assert not wh.has_partition("ad_events", DAYS[1])


def test_missing_landing_partition_is_a_clear_error(tmp_path: Path) -> None:
    from resources.landing import LandingFolder

    resources = {
        **small_resources(tmp_path),
        "log_source": LandingFolder(landing_dir=str(tmp_path / "landing")),
    }
    result = run_job(build_defs(resources), "ingest_job", DAYS[0], DagsterInstance.ephemeral())
    assert not result.success
    messages = [
        str(e.event_specific_data.error.cause or e.event_specific_data.error.message)
        for e in result.all_events
        if e.is_step_failure
    ]
    assert any("date=2026-10-01" in m and "does not exist" in m for m in messages)


def test_simulator_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The documented environment variables reach the simulator through EnvVar, validated when
    Dagster resolves them."""
    from pipelines.definitions import build_resources

    monkeypatch.setenv("CLICKLOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CLICKLOOP_SCENARIO", "ctr_drop")
    monkeypatch.setenv("CLICKLOOP_SCENARIO_START", "2026-10-03")
    with build_resources()["log_source"].process_config_and_initialize_cm() as sim:
        assert (sim.scenario, sim.scenario_start) == ("ctr_drop", "2026-10-03")
    monkeypatch.setenv("CLICKLOOP_SCENARIO", "no_such_scenario")
    with pytest.raises(Exception, match="unknown scenario 'no_such_scenario'"):
        with build_resources()["log_source"].process_config_and_initialize_cm():
            pass
