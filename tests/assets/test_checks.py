"""The blocking asset checks in Dagster: every check is blocking and daily, a failed check stops what is
built on the day in the same run, a missing partition fails clearly, and the metadata names what
failed (the rules themselves are tested in tests/core)."""

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import AssetExecutionContext, AssetKey, MaterializeResult, asset, materialize

from assets import loop_assets
from assets.checks import outcome_metadata, table_columns
from assets.raw_logs import raw_log_assets
from clickloop.checks import events_rules
from clickloop.expectations import run_rules
from clickloop.quarantine import day_window
from clickloop.storage import Warehouse, atomic_write_parquet
from resources.warehouse import WarehouseResource
from tests.assets.support import CALENDAR, CONTRACT, DAY, impression_records, typed_impressions

RAW_CHECKS = dict(zip(("impressions", "clicks"), raw_log_assets(CALENDAR, CONTRACT)[1], strict=True))


def test_checks_are_blocking_and_partitioned() -> None:
    _, checks = loop_assets(CALENDAR, CONTRACT)
    specs = [spec for check in checks for spec in check.check_specs]
    assert len(specs) == 7
    for spec in specs:
        assert spec.blocking, spec.name
        assert spec.partitions_def == CALENDAR.partitions, spec.name
    # the serving checks (tests/assets/test_online_serving.py) and the learned suite's
    # (tests/assets/test_validation.py); the rest are the expectations
    serving = {(s.asset_key.to_user_string(), s.name) for s in specs if not s.name.endswith("_expectations")}
    assert serving == {
        ("features", "served_scores_match_model"),
        ("online_features", "online_matches_offline"),
        ("features", "features_learned_suite"),
    }
    specs = [s for s in specs if s.name.endswith("_expectations")]
    for spec in specs:
        assert spec.name == f"{spec.asset_key.to_user_string()}_expectations"
    assert {spec.asset_key for spec in specs} == {
        AssetKey("raw_impressions"),
        AssetKey("raw_clicks"),
        AssetKey("ad_events"),
        AssetKey("features"),
    }


@pytest.mark.parametrize("price_scale", [1.0, 100.0], ids=["good", "cents"])
def test_blocking_check_stops_downstream(tmp_path: Path, price_scale: float) -> None:
    """A typed day whose prices are in cents breaks the contract's price range and median: the
    check fails and nothing downstream of the day is built in the run."""

    @asset(name="raw_impressions", partitions_def=CALENDAR.partitions)
    def raw_impressions(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        records = impression_records(context.partition_key, 50, price_scale=price_scale)
        warehouse.get().write_partition(
            "raw_impressions", context.partition_key, typed_impressions(records, CONTRACT.impressions)
        )
        return MaterializeResult()

    @asset(name="training_input", partitions_def=CALENDAR.partitions, deps=[raw_impressions])
    def training_input(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
        rows = warehouse.get().read_partition("raw_impressions", context.partition_key).num_rows
        return MaterializeResult(metadata={"rows": rows})

    result = materialize(
        [raw_impressions, training_input, RAW_CHECKS["impressions"]],
        partition_key=DAY,
        resources={"warehouse": WarehouseResource(data_dir=str(tmp_path))},
        raise_on_error=False,
    )

    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.asset_key == AssetKey("raw_impressions")
    assert evaluation.check_name == "raw_impressions_expectations"
    assert evaluation.partition == DAY
    assert evaluation.metadata["rows_checked"].value == 50
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    if price_scale == 1.0:
        assert result.success
        assert evaluation.passed
        assert evaluation.metadata["failed_expectations"].value == 0
        assert materialized == {AssetKey("raw_impressions"), AssetKey("training_input")}
    else:
        assert not result.success
        assert not evaluation.passed
        # the price rules, and only they: every price is above the range, the median implausible
        assert evaluation.metadata["failed"].value == ["out_of_range:bid_cpc", "median_bid"]
        assert evaluation.metadata["failed_expectations"].value == 2
        assert "❌" in evaluation.metadata["expectations"].value
        assert materialized == {AssetKey("raw_impressions")}


def test_check_fails_clearly_when_the_partition_is_missing(tmp_path: Path) -> None:
    @asset(name="raw_clicks", partitions_def=CALENDAR.partitions)
    def raw_clicks() -> MaterializeResult:
        return MaterializeResult()  # writes nothing: the check must not pass on a missing file

    result = materialize(
        [raw_clicks, RAW_CHECKS["clicks"]],
        partition_key=DAY,
        resources={"warehouse": WarehouseResource(data_dir=str(tmp_path))},
        raise_on_error=False,
    )
    assert not result.success
    assert not any(e.passed for e in result.get_asset_check_evaluations())
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures and "partition file(s) missing" in str(failures[0].step_failure_data.error)


def events_table(n: int = 200, every: int = 20) -> pa.Table:
    """A day of joined events with a CTR of 1/``every`` (one row per impression)."""
    impressions = typed_impressions(impression_records(DAY, n), CONTRACT.impressions)
    events = impressions.drop_columns(["source_file", "line_number"])
    clicked = [int(i % every == 0) for i in range(n)]
    delays = [30.0 + i if c else None for i, c in enumerate(clicked)]
    click_ts = [
        t + timedelta(seconds=d) if d is not None else None
        for t, d in zip(events["ts"].to_pylist(), delays, strict=True)
    ]
    return (
        events.append_column("clicked", pa.array(clicked, pa.int8()))
        .append_column("click_id", pa.array([f"clk-{i}" if c else None for i, c in enumerate(clicked)]))
        .append_column("click_ts", pa.array(click_ts, pa.timestamp("us", tz="UTC")))
        .append_column("click_delay_s", pa.array(delays, pa.float64()))
    )


def test_metadata_shows_failures_and_counts(tmp_path: Path) -> None:
    table = events_table()
    delays = table["click_delay_s"].to_pylist()
    delays[0] = delays[20] = -5.0
    table = table.set_column(table.schema.get_field_index("click_delay_s"), "click_delay_s", pa.array(delays))
    path = atomic_write_parquet(tmp_path / "events.parquet", table)
    relation = f"read_parquet('{path}')"
    warehouse = Warehouse(tmp_path)
    with warehouse.duckdb() as con:
        rules = events_rules(
            CONTRACT,
            day_window(CALENDAR.partitions.time_window_for_partition_key(DAY).start.date()),
            table_columns(con, relation),
        )
        metadata = outcome_metadata(*run_rules(con, relation, "ad_events", rules))
    assert metadata["failed_expectations"] == 1
    assert metadata["failed"].value == ["negative_click_delay"]
    assert metadata["rows_checked"] == 200
    markdown = metadata["expectations"].value
    failed_rows = [line for line in markdown.splitlines() if line.startswith("| ❌")]
    assert len(failed_rows) == 1
    assert "clicks before their impression" in failed_rows[0] and failed_rows[0].endswith("| 2 |")
    assert markdown.count("| ✅") == metadata["evaluated_expectations"] - 1
