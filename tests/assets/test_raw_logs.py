"""The raw assets in Dagster: every simulated line is typed or quarantined for the reason it was made,
row rules quarantine lines while a bad day fails its blocking check, re-ingesting gives identical
output, and a day missing from the landing folder is a clear error."""

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, MaterializeResult, asset, materialize

from assets.raw_logs import raw_log_assets
from clickloop.storage import Warehouse
from pipelines.cli.runner import LoopRunner
from pipelines.definitions import build_defs
from pipelines.settings import Settings
from resources.contract import LogContractResource
from resources.landing import LandingFolder
from resources.warehouse import WarehouseResource
from tests.assets.history import History, open_test_instance
from tests.assets.support import (
    CALENDAR,
    CONTRACT,
    DAY,
    day_start,
    impression_records,
    json_line,
    write_landing,
)

(RAW_IMPRESSIONS, _), (RAW_IMPRESSIONS_CHECK, _) = raw_log_assets(CALENDAR, CONTRACT)


def quarantine_reasons(warehouse: Warehouse, table: str, day: str) -> Counter[str]:
    quarantine = pq.read_table(warehouse.quarantine_path(table, day), columns=["reason"])
    return Counter(quarantine["reason"].to_pylist())


def click_files_landing_on(history: History, day: str) -> list[dict]:
    """The manifest entries of every click file that landed on ``day`` (from ``day`` - 1 and ``day``)."""
    files = []
    for key in history.keys:
        files += [
            entry
            for entry in history.simulator.manifest(key)["files"].values()
            if entry["kind"] == "clicks" and entry["landing_date"] == day
        ]
    return files


# --- The simulated history: nothing is lost ----------------------------------------------------------


def test_row_accounting_matches_what_the_simulator_injected(history: History) -> None:
    """Every line the simulator wrote is either typed or quarantined for the reason it was made, and
    every valid row reaches ad_events or is quarantined there as what the simulator made it."""
    for day in history.event_days:
        manifest = history.simulator.manifest(day)
        imp_faults = manifest["faults"]["impressions"]
        raw = history.metadata("raw_impressions", day)
        assert raw["lines_read"] == raw["valid_rows"] + raw["quarantined_rows"]
        assert (
            raw["lines_read"]
            == manifest["files"][f"impressions/date={day}/impressions-{day}.jsonl.gz"]["lines"]
        )
        assert raw["quarantined_rows"] == (
            imp_faults["malformed_line"] + imp_faults["wrong_type"] + imp_faults["null_field"]
        )
        # each line for the reason it was broken (a stable day breaks no row rule: no range, set
        # or timestamp outside the day)
        reasons = quarantine_reasons(history.warehouse, "raw_impressions", day)
        by_kind = Counter(r.split(":")[0] for r in reasons.elements())
        assert by_kind == Counter(
            {
                k: v
                for k, v in {
                    "invalid_json": imp_faults["malformed_line"],
                    "bad_type": imp_faults["wrong_type"],
                    "null": imp_faults["null_field"],
                }.items()
                if v
            }
        ), (day, reasons)

        events = history.metadata("ad_events", day)
        assert events["duplicate_impressions"] == imp_faults["duplicate_impression"]
        assert events["dagster/row_count"] + events["duplicate_impressions"] == raw["valid_rows"]

        click_files = click_files_landing_on(history, day)
        raw_clicks = history.metadata("raw_clicks", day)
        assert raw_clicks["lines_read"] == sum(f["lines"] for f in click_files)
        assert raw_clicks["lines_read"] == raw_clicks["valid_rows"] + raw_clicks["quarantined_rows"]
        assert raw_clicks["quarantined_rows"] == sum(
            f["faults"]["malformed_line"] + f["faults"]["wrong_type"] + f["faults"]["null_field"]
            for f in click_files
        )
        injected_rejects = sum(
            f["faults"]["orphan_click"]
            + f["faults"]["click_before_impression"]
            + f["faults"]["duplicate_click"]
            + f["clicks_on_faulty_impressions"]
            for f in click_files
        )
        rejected = events["orphan_clicks"] + events["clicks_before_impression"] + events["duplicate_clicks"]
        assert rejected == injected_rejects, day
        assert events["clicks_in"] == raw_clicks["valid_rows"]


def test_every_day_passed_its_raw_checks(history: History) -> None:
    for report in history.days:
        assert report.checks["raw_impressions_expectations"] is True, report.day
        assert report.checks["raw_clicks_expectations"] is True, report.day
    metadata = history.metadata("raw_impressions", history.event_days[3])
    assert metadata["log_contract"] == "simulator"
    assert metadata["log_source"].startswith("AdServerSimulator(")
    assert "| reason | lines |" in metadata["quarantined_by_reason"]


def relocated(table: pa.Table, old: Path, new: Path) -> pa.Table:
    """``table`` with every path under ``old`` in its text columns moved under ``new``."""
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type):
            column = pc.replace_substring(table.column(i), str(old), str(new))
            table = table.set_column(i, field, column)
    return table


def test_rematerializing_a_partition_gives_identical_output(history: History, tmp_path: Path) -> None:
    """Ingesting and joining a day again (on a copy of the history) writes the same rows and the same
    quarantine; only the folder the copy's landing files are in has changed."""
    original = history.warehouse
    loop = history.copy(tmp_path / "copy")
    warehouse = loop.warehouse
    day = loop.keys[1]
    tables = ("raw_impressions", "raw_clicks", "ad_events")
    runner = loop.runner()
    assert runner.run("ingest_job", day).success
    assert runner.run("events_job", day).success
    for table in tables:
        for path in (original.partition_path(table, day), original.quarantine_path(table, day)):
            before = relocated(pq.read_table(path), history.root, loop.root)
            after = pq.read_table(loop.root / path.relative_to(history.root))
            assert after.equals(before), path
    assert [p for p in warehouse.root.rglob("*") if p.name.endswith(".tmp")] == []


# --- Row rules quarantine lines; a bad day fails its blocking check ---------------------------------


@asset(partitions_def=CALENDAR.partitions, deps=["raw_impressions"])
def next_step() -> MaterializeResult:
    """What is built on the raw impressions (never on a day that failed its check)."""
    return MaterializeResult()


def ingest(tmp_path: Path, lines: list[str]):
    """One day of hand-written impression logs through the real raw asset and its check."""
    write_landing(tmp_path / "landing", "impressions", DAY, lines)
    return materialize(
        [RAW_IMPRESSIONS, RAW_IMPRESSIONS_CHECK, next_step],
        partition_key=DAY,
        resources={
            "log_source": LandingFolder(landing_dir=str(tmp_path / "landing")),
            "warehouse": WarehouseResource(data_dir=str(tmp_path / "data")),
            "log_contract": LogContractResource(),
        },
        raise_on_error=False,
    )


def outcome(result) -> tuple[dict, object, set[AssetKey]]:
    (mat,) = result.asset_materializations_for_node("raw_impressions")
    (evaluation,) = result.get_asset_check_evaluations()
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}, evaluation, materialized


def test_a_handful_of_stray_rows_is_quarantined_and_the_day_passes(tmp_path: Path) -> None:
    records = impression_records(DAY, 2_000)
    records[0]["ts"] = day_start(DAY) - timedelta(milliseconds=300)
    records[1]["bid_cpc"] = 45.0
    records[2]["position"] = 3
    records[3]["predicted_ctr"] = 1.5
    result = ingest(tmp_path, [json_line(r) for r in records])
    metadata, evaluation, materialized = outcome(result)

    assert result.success
    assert metadata["lines_read"] == 2_000
    assert (metadata["valid_rows"], metadata["quarantined_rows"]) == (1_996, 4)
    reasons = quarantine_reasons(Warehouse(tmp_path / "data"), "raw_impressions", DAY)
    assert reasons == Counter(
        {
            "outside_partition:ts": 1,
            "out_of_range:bid_cpc": 1,
            "not_allowed:position": 1,
            "out_of_range:predicted_ctr": 1,
        }
    )
    assert evaluation.passed and evaluation.partition == DAY
    assert evaluation.metadata["failed_expectations"].value == 0
    assert evaluation.metadata["rows_checked"].value == 1_996
    assert materialized == {AssetKey("raw_impressions"), AssetKey("next_step")}
    # the users are pseudonyms in the partition, and redacted from the quarantined lines
    assert metadata["pseudonymised"] == "user_id"
    warehouse = Warehouse(tmp_path / "data")
    stored = set(pq.read_table(warehouse.partition_path("raw_impressions", DAY))["user_id"].to_pylist())
    raw_users = {r["user_id"] for r in records}
    assert stored.isdisjoint(raw_users) and all(len(u) == 64 for u in stored)
    quarantined = pq.read_table(warehouse.quarantine_path("raw_impressions", DAY))["raw_line"].to_pylist()
    assert not any(f'"{u}"' in line for line in quarantined for u in raw_users)
    assert all('"user_id": "<redacted>"' in line for line in quarantined)


def test_prices_logged_in_cents_fail_the_day(tmp_path: Path) -> None:
    result = ingest(tmp_path, [json_line(r) for r in impression_records(DAY, 2_000, price_scale=100.0)])
    metadata, evaluation, materialized = outcome(result)

    assert not result.success
    assert not evaluation.passed
    assert metadata["lines_read"] == metadata["valid_rows"] + metadata["quarantined_rows"]
    # prices above the contract's range are quarantined; the day's share of them, and the median
    # of the prices that stayed in range, fail the day
    assert set(evaluation.metadata["failed"].value) == {"quarantine_share:out_of_range:bid_cpc", "median_bid"}
    assert "❌" in evaluation.metadata["expectations"].value
    assert materialized == {AssetKey("raw_impressions")}


def lines_with_null_users(n: int, nulls: int) -> list[str]:
    """``n`` impression lines of which the first ``nulls`` lack their user."""
    records = impression_records(DAY, n)
    for record in records[:nulls]:
        record["user_id"] = None
    return [json_line(r) for r in records]


def test_a_share_of_bad_lines_above_the_contracts_limit_fails_the_day(tmp_path: Path) -> None:
    limit = int(1_000 * CONTRACT.quality.max_quarantine_share)
    result = ingest(tmp_path / "above", lines_with_null_users(1_000, limit + 5))
    metadata, evaluation, materialized = outcome(result)
    assert metadata["quarantined_rows"] == limit + 5
    assert not evaluation.passed
    assert evaluation.metadata["failed"].value == ["quarantine_share:null:user_id"]
    assert materialized == {AssetKey("raw_impressions")}

    # at the limit the same dirt is tolerated: the lines are quarantined, the day goes on
    at_limit = ingest(tmp_path / "at", lines_with_null_users(1_000, limit))
    metadata, evaluation, materialized = outcome(at_limit)
    assert at_limit.success and evaluation.passed
    assert metadata["quarantined_rows"] == limit
    assert materialized == {AssetKey("raw_impressions"), AssetKey("next_step")}


# --- A missing landing partition -------------------------------------------------------------------


def test_missing_landing_partition_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        log_source="landing",
        resources={"log_source": {"landing_dir": str(tmp_path / "landing")}},
    )
    runner = LoopRunner(build_defs(settings), open_test_instance(tmp_path / "dagster_home"))
    report = runner.run("ingest_job", DAY, echo=False)
    assert not report.success
    assert any("date=2026-10-01" in f and "does not exist" in f for f in report.failures), report.failures

    with pytest.raises(ValueError, match="landing folder"):
        build_defs(Settings(data_dir=tmp_path / "data", log_source="landing"))
