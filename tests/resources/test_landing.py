"""The log sources: a landing folder of real logs (no truth), and the simulator, which knows the
oracle's revenue of the days it served."""

from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from clickloop.landing import MissingPartitionError
from clickloop.online import OracleTruth
from resources.landing import LandingFolder
from resources.simulator import AdServerSimulator

DAY = date(2026, 10, 3)


def test_the_landing_folder_lists_a_days_files_and_names_what_is_missing(tmp_path: Path) -> None:
    source = LandingFolder(landing_dir=str(tmp_path))
    with pytest.raises(MissingPartitionError, match=r"clicks.*2026-10-03.*date=2026-10-03"):
        source.partition_files("clicks", DAY)
    folder = tmp_path / "clicks" / "date=2026-10-03"
    folder.mkdir(parents=True)
    (folder / "README.txt").write_text("not a log")
    with pytest.raises(MissingPartitionError, match="holds no"):
        source.partition_files("clicks", DAY)
    (folder / "part-1.jsonl.gz").write_bytes(b"")
    assert [p.name for p in source.partition_files("clicks", DAY)] == ["part-1.jsonl.gz"]
    assert source.describe() == f"LandingFolder({tmp_path})"
    # real logs know neither the true click probability nor the best possible revenue
    assert source.ground_truth(pa.table({"x": [1]})) is None
    assert source.oracle_truth("2026-10-03") is None


def test_oracle_earns_at_least_what_the_random_policy_earns(tmp_path: Path) -> None:
    simulator = AdServerSimulator(
        landing_dir=str(tmp_path), requests_per_day=2_000, n_users=5_000, start_date="2026-10-01"
    )
    day = "2026-10-02"
    assert simulator.oracle_revenue(day) is None and simulator.oracle_truth(day) is None  # not simulated yet
    simulator.ensure_day(day)
    manifest = simulator.manifest(day)
    oracle = simulator.oracle_revenue(day)
    assert manifest["policy_version"] == "random-v0"
    assert oracle == manifest["oracle_expected_revenue"]
    assert oracle >= manifest["expected_revenue"] > 0
    assert simulator.oracle_truth(day) == OracleTruth(oracle, manifest["expected_revenue"], "random-v0")
    assert LandingFolder(landing_dir=str(tmp_path)).oracle_truth(day) is None
