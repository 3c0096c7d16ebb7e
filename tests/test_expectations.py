"""The Great Expectations suites on real frames, and the blocking asset check in a real Dagster run.

Frames are built as typed Arrow tables with the contract schemas, then converted the way the asset
checks convert a Parquet partition, so dtypes (tz-aware timestamps, int8, int32) are the real ones.
"""

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from dagster import AssetExecutionContext, AssetKey, MaterializeResult, asset, materialize

from assets.expectations import (
    AD_EVENT_COLUMNS,
    RAW_CLICK_COLUMNS,
    RAW_IMPRESSION_COLUMNS,
    SuiteOutcome,
    ad_events_suite,
    expectation_checks,
    outcome_markdown,
    outcome_metadata,
    raw_clicks_expectations,
    raw_clicks_suite,
    raw_impressions_expectations,
    raw_impressions_suite,
    validate,
)
from assets.partitions import daily_partitions
from resources.warehouse import Warehouse

DAY = daily_partitions.get_first_partition_key()
START = dt.datetime.fromisoformat(DAY).replace(tzinfo=dt.timezone.utc)
END = START + dt.timedelta(days=1)

TS = pa.timestamp("us", tz="UTC")
_TYPED_IMPRESSION_COLUMNS: dict[str, pa.DataType] = {
    "ts": TS,
    "position": pa.int32(),
    "bid_cpc": pa.float64(),
    "predicted_ctr": pa.float64(),
    "line_number": pa.int64(),
}
#: The typed schema of raw_impressions, in contract order; every other column is a string.
RAW_IMPRESSIONS_SCHEMA = pa.schema(
    [(c, _TYPED_IMPRESSION_COLUMNS.get(c, pa.string())) for c in RAW_IMPRESSION_COLUMNS]
)
_STRING_IMPRESSION_COLUMNS = [
    c
    for c in RAW_IMPRESSION_COLUMNS
    if c not in _TYPED_IMPRESSION_COLUMNS and c not in ("impression_id", "source_file")
]


def _timestamps(n: int) -> list[dt.datetime]:
    """``n`` timestamps spread over the day, all inside [START, END)."""
    step = (END - START) / n
    return [START + i * step for i in range(n)]


def impressions_frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """A clean day of raw impressions (pages of two ads, prices in currency units)."""
    rng = np.random.default_rng(seed)
    columns = {
        "impression_id": [f"imp-{i}" for i in range(n)],
        "ts": _timestamps(n),
        **{c: [f"{c}-{i % 7}" for i in range(n)] for c in _STRING_IMPRESSION_COLUMNS},
        "position": [1 + i % 2 for i in range(n)],
        "bid_cpc": rng.uniform(0.3, 3.0, n),
        "predicted_ctr": rng.uniform(0.005, 0.1, n),
        "source_file": ["impressions-0.jsonl"] * n,
        "line_number": list(range(1, n + 1)),
    }
    columns["request_id"] = [f"req-{i // 2}" for i in range(n)]
    columns["user_id"] = [f"user-{i // 2 % 50}" for i in range(n)]
    return pa.table(columns, schema=RAW_IMPRESSIONS_SCHEMA).to_pandas()


def clicks_frame(n: int = 40) -> pd.DataFrame:
    """A clean day of raw clicks."""
    table = pa.table(
        {
            "click_id": [f"clk-{i}" for i in range(n)],
            "impression_id": [f"imp-{i * 5}" for i in range(n)],
            "ts": _timestamps(n),
            "source_file": ["clicks-0.jsonl"] * n,
            "line_number": list(range(1, n + 1)),
        },
        schema=pa.schema(
            [
                ("click_id", pa.string()),
                ("impression_id", pa.string()),
                ("ts", TS),
                ("source_file", pa.string()),
                ("line_number", pa.int64()),
            ]
        ),
    )
    return table.to_pandas()


def events_table(clicked: list[int]) -> pa.Table:
    """A day of joined events with the given click flags (one row per impression)."""
    n = len(clicked)
    imps = pa.Table.from_pandas(impressions_frame(n), preserve_index=False)
    imps = imps.drop_columns(["source_file", "line_number"])
    delays = [30.0 + i if c else None for i, c in enumerate(clicked)]
    click_ts = [
        t + dt.timedelta(seconds=d) if d is not None else None
        for t, d in zip(imps.column("ts").to_pylist(), delays)
    ]
    return (
        imps.append_column("clicked", pa.array(clicked, pa.int8()))
        .append_column(
            "click_id", pa.array([f"clk-{i}" if c else None for i, c in enumerate(clicked)])
        )
        .append_column("click_ts", pa.array(click_ts, TS))
        .append_column("click_delay_s", pa.array(delays, pa.float64()))
    )


def events_frame(n: int = 200, every: int = 20) -> pd.DataFrame:
    """A clean day of ad events with a CTR of 1/every."""
    return events_table([int(i % every == 0) for i in range(n)]).to_pandas()


def assert_only_failure(outcome: SuiteOutcome, name: str, unexpected: int | None) -> None:
    """The suite failed on exactly one expectation, with the given unexpected row count."""
    assert not outcome.success
    assert outcome.failed_names == (name,), outcome_markdown(outcome)
    assert outcome[name].unexpected_count == unexpected


@pytest.fixture(scope="module")
def impressions_suite():
    return raw_impressions_suite(START, END)


@pytest.fixture(scope="module")
def clicks_suite():
    return raw_clicks_suite(START, END)


@pytest.fixture(scope="module")
def events_suite():
    return ad_events_suite(START, END)


# --- the fixtures themselves follow the contracts ----------------------------------------------


def test_fixture_frames_have_the_contract_columns() -> None:
    assert list(impressions_frame(4).columns) == list(RAW_IMPRESSION_COLUMNS)
    assert list(clicks_frame(4).columns) == list(RAW_CLICK_COLUMNS)
    assert list(events_frame(4).columns) == list(AD_EVENT_COLUMNS)


# --- raw_impressions ---------------------------------------------------------------------------


def test_clean_impressions_pass(impressions_suite) -> None:
    outcome = validate(impressions_frame(), impressions_suite)
    assert outcome.success, outcome_markdown(outcome)
    assert outcome.element_count == 200
    assert all(e.success and e.error is None for e in outcome.expectations)
    # The caller's suite is reusable: validate registers a copy, not the suite itself.
    assert impressions_suite.id is None
    assert validate(impressions_frame(seed=1), impressions_suite).success


@pytest.mark.parametrize("column", ["impression_id", "request_id", "user_id", "ad_id", "ts"])
def test_null_ids_fail(impressions_suite, column: str) -> None:
    df = impressions_frame()
    df.loc[[3, 50, 77], column] = None
    assert_only_failure(validate(df, impressions_suite), f"{column}_not_null", 3)


def test_position_outside_the_two_slots_fails(impressions_suite) -> None:
    df = impressions_frame()
    df.loc[[0, 9], "position"] = 3
    outcome = validate(df, impressions_suite)
    assert_only_failure(outcome, "position_in_slots", 2)
    assert outcome["position_in_slots"].unexpected_examples == (3, 3)


def test_prices_logged_in_cents_fail(impressions_suite) -> None:
    df = impressions_frame()
    df["bid_cpc"] = df["bid_cpc"] * 100
    outcome = validate(df, impressions_suite)
    assert_only_failure(outcome, "bid_cpc_plausible", 200)
    assert outcome["bid_cpc_plausible"].unexpected_percent == pytest.approx(100.0)
    assert outcome["bid_cpc_positive"].success


def test_non_positive_price_fails_even_once(impressions_suite) -> None:
    df = impressions_frame(n=2000)
    df.loc[5, "bid_cpc"] = 0.0
    outcome = validate(df, impressions_suite)
    # One row in 2000 is within the 0.1 % tolerance of the range rule, but a zero price is a bug.
    assert outcome.failed_names == ("bid_cpc_positive",)
    assert outcome["bid_cpc_positive"].unexpected_count == 1
    assert outcome["bid_cpc_plausible"].success
    assert outcome["bid_cpc_plausible"].unexpected_count == 1


def test_ts_outside_the_partition_fails(impressions_suite) -> None:
    df = impressions_frame()
    df.loc[:4, "ts"] = pd.Timestamp(END)  # the end of the window is exclusive
    df.loc[5:9, "ts"] = pd.Timestamp(START) - pd.Timedelta(seconds=1)
    outcome = validate(df, impressions_suite)
    assert_only_failure(outcome, "ts_in_partition", 10)
    assert outcome["ts_in_partition"].unexpected_percent == pytest.approx(5.0)


def test_a_handful_of_stray_rows_is_tolerated(impressions_suite) -> None:
    df = impressions_frame(n=2000)
    df.loc[0, "ts"] = pd.Timestamp(START) - pd.Timedelta(milliseconds=300)
    df.loc[1, "bid_cpc"] = 45.0
    outcome = validate(df, impressions_suite)
    assert outcome.success, outcome_markdown(outcome)
    assert outcome["ts_in_partition"].unexpected_count == 1
    assert outcome["bid_cpc_plausible"].unexpected_count == 1


def test_empty_partition_and_missing_column_fail(impressions_suite) -> None:
    empty = validate(impressions_frame().iloc[0:0], impressions_suite)
    assert empty.failed_names == ("has_rows",)
    assert empty["has_rows"].observed_value == 0

    missing = validate(impressions_frame().drop(columns=["country"]), impressions_suite)
    assert missing.failed_names == ("columns_present",)
    assert missing["columns_present"].observed_value == {"missing": ["country"]}


def test_bounds_must_be_aware_and_ordered() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        raw_impressions_suite(START.replace(tzinfo=None), END)
    with pytest.raises(ValueError, match="not before"):
        raw_clicks_suite(END, START)


# --- raw_clicks --------------------------------------------------------------------------------


def test_clicks_clean_pass_and_defects_fail(clicks_suite) -> None:
    assert validate(clicks_frame(), clicks_suite).success

    df = clicks_frame()
    df.loc[[1, 2], "impression_id"] = None
    assert_only_failure(validate(df, clicks_suite), "impression_id_not_null", 2)

    df = clicks_frame()
    df.loc[:3, "ts"] = pd.Timestamp(END) + pd.Timedelta(hours=2)
    assert_only_failure(validate(df, clicks_suite), "ts_in_partition", 4)


# --- ad_events ---------------------------------------------------------------------------------


def test_clean_events_pass(events_suite) -> None:
    outcome = validate(events_frame(), events_suite)
    assert outcome.success, outcome_markdown(outcome)
    assert outcome["daily_ctr_plausible"].observed_value == pytest.approx(0.05)


def test_duplicate_impressions_fail(events_suite) -> None:
    df = events_frame()
    df = pd.concat([df, df.iloc[[10, 11]]], ignore_index=True)
    # Every row of a duplicated id is unexpected: 2 ids x 2 rows.
    assert_only_failure(validate(df, events_suite), "impression_id_unique", 4)


def test_negative_click_delay_fails(events_suite) -> None:
    df = events_frame()
    df.loc[[0, 20], "click_delay_s"] = -5.0
    outcome = validate(df, events_suite)
    assert_only_failure(outcome, "click_delay_not_negative", 2)
    assert outcome["click_delay_not_negative"].unexpected_examples == (-5.0, -5.0)


def test_click_id_must_match_clicked(events_suite) -> None:
    df = events_frame()
    df.loc[0, "click_id"] = None  # clicked, no click id
    df.loc[[1, 2], "click_id"] = "clk-stray"  # not clicked, with a click id
    outcome = validate(df, events_suite)
    assert outcome.failed_names == ("click_id_when_clicked", "no_click_id_when_not_clicked")
    assert outcome["click_id_when_clicked"].unexpected_count == 1
    assert outcome["no_click_id_when_not_clicked"].unexpected_count == 2


@pytest.mark.parametrize("flag", [0, 1])
def test_ctr_of_a_broken_join_fails(events_suite, flag: int) -> None:
    df = events_table([flag] * 200).to_pandas()
    outcome = validate(df, events_suite)
    assert_only_failure(outcome, "daily_ctr_plausible", None)
    assert outcome["daily_ctr_plausible"].observed_value == pytest.approx(float(flag))


def test_metadata_shows_failures_and_counts(events_suite) -> None:
    df = events_frame()
    df.loc[[0, 20], "click_delay_s"] = -5.0
    metadata = outcome_metadata(validate(df, events_suite))
    assert metadata["failed_expectations"] == 1
    assert metadata["rows_checked"] == 200
    table = metadata["expectations"].value
    failed_rows = [line for line in table.splitlines() if line.startswith("| ❌")]
    assert len(failed_rows) == 1
    assert "click_delay_s" in failed_rows[0] and "| 2 |" in failed_rows[0]
    assert table.count("| ✅") == metadata["evaluated_expectations"] - 1


# --- Dagster: the blocking check stops the graph ----------------------------------------------


def test_checks_are_blocking_and_partitioned() -> None:
    assert len(expectation_checks) == 3
    for check_def in expectation_checks:
        (spec,) = check_def.check_specs
        assert spec.blocking
        assert spec.partitions_def == daily_partitions
    assert {next(iter(c.check_specs)).asset_key for c in expectation_checks} == {
        AssetKey("raw_impressions"),
        AssetKey("raw_clicks"),
        AssetKey("ad_events"),
    }


@pytest.mark.parametrize("price_scale", [1.0, 100.0], ids=["good", "cents"])
def test_blocking_check_stops_downstream(tmp_path: Path, price_scale: float) -> None:
    @asset(name="raw_impressions", partitions_def=daily_partitions)
    def raw_impressions(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
        df = impressions_frame(50)
        df["bid_cpc"] = df["bid_cpc"] * price_scale
        table = pa.Table.from_pandas(df, schema=RAW_IMPRESSIONS_SCHEMA, preserve_index=False)
        warehouse.write_partition("raw_impressions", context.partition_key, table)
        return MaterializeResult()

    @asset(name="training_input", partitions_def=daily_partitions, deps=[raw_impressions])
    def training_input(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
        rows = warehouse.read_partition("raw_impressions", context.partition_key).num_rows
        return MaterializeResult(metadata={"rows": rows})

    result = materialize(
        [raw_impressions, training_input, raw_impressions_expectations],
        partition_key=DAY,
        resources={"warehouse": Warehouse(data_dir=str(tmp_path))},
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
        assert evaluation.metadata["failed_expectations"].value == 1
        assert "❌" in evaluation.metadata["expectations"].value
        assert materialized == {AssetKey("raw_impressions")}


def test_check_fails_clearly_when_the_partition_is_missing(tmp_path: Path) -> None:
    @asset(name="raw_clicks", partitions_def=daily_partitions)
    def raw_clicks() -> MaterializeResult:
        return MaterializeResult()  # writes nothing: the check must not pass on a missing file

    result = materialize(
        [raw_clicks, raw_clicks_expectations],
        partition_key=DAY,
        resources={"warehouse": Warehouse(data_dir=str(tmp_path))},
        raise_on_error=False,
    )
    assert not result.success
    assert not any(e.passed for e in result.get_asset_check_evaluations())
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures and "partition file(s) missing" in str(failures[0].step_failure_data.error)
