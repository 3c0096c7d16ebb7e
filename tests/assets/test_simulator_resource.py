"""Tests of the ad-server simulator as a Dagster resource: configuration, delegation to
:class:`clickloop.simulator.AdServer` and use inside an asset. The core is tested in
tests/core/test_simulator.py."""

import gzip
import json
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from clickloop.simulator import (
    AdServer,
    FaultRates,
    RandomPolicy,
    SimulatorConfig,
    impressions_path,
    manifest_path,
)
from resources.simulator import AdServerSimulator


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


def small_simulator(tmp_path: Path, **overrides: object) -> AdServerSimulator:
    config = {
        "landing_dir": str(tmp_path),
        "requests_per_day": 1_000,
        "start_date": "2026-10-01",
        **overrides,
    }
    return AdServerSimulator(**config)


def test_unknown_scenario_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown scenario 'surge'"):
        AdServerSimulator(landing_dir=str(tmp_path), scenario="surge")


def test_defaults_and_settings_are_the_cores(tmp_path: Path) -> None:
    sim = AdServerSimulator(landing_dir=str(tmp_path))
    assert sim.settings() == AdServer(tmp_path, SimulatorConfig()).settings()
    assert sim.fault_rates() == FaultRates()
    shifted = small_simulator(tmp_path, scenario="ctr_drop", scenario_start="2026-10-05", null_field_rate=0.0)
    core = AdServer(
        tmp_path,
        SimulatorConfig(
            requests_per_day=1_000,
            scenario="ctr_drop",
            scenario_start="2026-10-05",
            faults=FaultRates(null_field=0.0),
        ),
    )
    for day in ("2026-10-04", "2026-10-05"):
        assert shifted.settings(day) == core.settings_for(day)
    assert shifted.settings("2026-10-04")["scenario"] == "stable"
    assert shifted.settings() == core.settings()
    with pytest.raises(ValueError, match="wrong_type_rate"):
        small_simulator(tmp_path, wrong_type_rate=1.5)
    with pytest.raises(ValueError, match="scenario_start"):
        small_simulator(tmp_path, scenario="ctr_drop", scenario_start="soon")


def test_partition_files_simulate_what_the_partition_needs(tmp_path: Path) -> None:
    sim = small_simulator(tmp_path)
    first = sim.partition_files("clicks", "2026-10-01")
    assert [p.name for p in first] == ["clicks-from-2026-10-01.jsonl.gz"]
    assert not manifest_path(tmp_path, date(2026, 9, 30)).exists()

    files = sim.partition_files("clicks", date(2026, 10, 3))
    assert [p.name for p in files] == ["clicks-from-2026-10-02.jsonl.gz", "clicks-from-2026-10-03.jsonl.gz"]
    assert all(p.parent.name == "date=2026-10-03" for p in files)
    assert manifest_path(tmp_path, date(2026, 10, 2)).exists()
    assert sim.partition_files("impressions", "2026-10-02") == [impressions_path(tmp_path, date(2026, 10, 2))]
    assert sim.ensure_day(date(2026, 10, 2)) is False
    manifest = sim.manifest("2026-10-02")
    assert manifest["requests"] == 1_000 and manifest["policy_version"] == "random-v0"


def test_days_before_start_and_changed_settings_are_refused(tmp_path: Path) -> None:
    sim = small_simulator(tmp_path)
    with pytest.raises(ValueError, match="2026-09-30"):
        sim.partition_files("impressions", "2026-09-30")
    with pytest.raises(ValueError, match="kind"):
        sim.partition_files("views", "2026-10-01")  # type: ignore[arg-type]
    assert sim.ensure_day("2026-10-01") is True
    with pytest.raises(ValueError, match="different settings"):
        small_simulator(tmp_path, seed=8).ensure_day("2026-10-01")


def test_resource_in_a_dagster_asset(tmp_path: Path) -> None:
    @dg.asset
    def landed(simulator: AdServerSimulator) -> int:
        files = simulator.partition_files("impressions", "2026-10-01")
        rows = pd.DataFrame([json.loads(line) for line in read_lines(files[0])])
        truth = simulator.ground_truth_ctr(rows)
        assert 0.01 < truth.mean() < 0.06
        return len(rows)

    sim = small_simulator(tmp_path, **{f"{name}_rate": 0.0 for name in FaultRates().__dataclass_fields__})
    result = dg.materialize([landed], resources={"simulator": sim})
    assert result.success and result.output_for_node("landed") == 2_000
    assert isinstance(sim.policy_for(date(2026, 10, 1)), RandomPolicy)
