"""The rules that judge a day, derived from the contract, computed exactly in DuckDB over real Parquet
files and validated by Great Expectations on the day's one-row profile.

Row rules are applied at ingest (a bad row is quarantined with its reason and the day goes on unless
one reason's share exceeds the contract's ``max_quarantine_share``); on the typed table the same
rules are hard contracts (a violation there is a bug upstream). Day rules judge the whole day: the
quarantine shares, the median price, the click-through rate, the promised columns.
"""

import json
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from clickloop.checks import events_rules, features_rules, quarantine_rules, raw_log_rules, window_rule
from clickloop.contract import LINE_NUMBER, SOURCE_FILE, LogKind
from clickloop.expectations import SuiteOutcome, outcome_markdown, run_rules
from clickloop.features import build_feature_stats, build_features
from clickloop.privacy import pseudonymiser_for
from clickloop.quarantine import day_window, ingest_day, quarantined_counts
from clickloop.storage import Warehouse, one_row
from tests.core.synthetic import (
    CONTRACT,
    SPEC,
    at,
    event_row,
    events_schema,
    events_table,
    impression_row,
    impressions_table,
    typed_schema,
)

DAY = date(2026, 10, 1)
KEY = DAY.isoformat()
WINDOW = day_window(DAY)
START, END = WINDOW.start, WINDOW.end
RAW_TABLES = {"impressions": "raw_impressions", "clicks": "raw_clicks"}


def judge(con: duckdb.DuckDBPyConnection, path: Path, rules: list) -> tuple[SuiteOutcome, dict[str, Any]]:
    return run_rules(con, f"read_parquet('{path}')", "suite", rules)


def columns_of(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    return list(con.sql(f"SELECT * FROM read_parquet('{path}') LIMIT 0").columns)


def assert_only_failure(judged: tuple[SuiteOutcome, dict[str, Any]], name: str, count: float) -> None:
    """The suite failed on exactly one rule, whose exact metric is ``count``."""
    outcome, observed = judged
    assert not outcome.success
    assert outcome.failed_names == (name,), outcome_markdown(outcome, observed)
    assert observed[name] == pytest.approx(count)


# --- Typed tables: the hard contracts ---------------------------------------------------------------


def impressions(n: int = 200, **changes_by_row: dict[str, object]) -> pa.Table:
    rows = [impression_row(KEY, i) for i in range(n)]
    for index, changes in changes_by_row.items():
        rows[int(index.removeprefix("row"))].update(changes)
    return impressions_table(rows)


def judge_typed(tmp_path: Path, table: pa.Table, kind: LogKind = "impressions"):
    """The day's rules on a typed table that ingest wrote with nothing quarantined."""
    path = Warehouse(tmp_path).write_partition(RAW_TABLES[kind], KEY, table)
    with duckdb.connect() as con:
        spec = CONTRACT.log(kind)
        rules = raw_log_rules(CONTRACT, spec, WINDOW, columns_of(con, path), {}, table.num_rows)
        return judge(con, path, rules)


def test_fixture_tables_follow_the_contract() -> None:
    assert impressions(4).column_names == list(CONTRACT.impressions.typed_columns)
    assert clicks(4).column_names == list(CONTRACT.log("clicks").typed_columns)
    assert events([0, 1]).column_names == [
        *CONTRACT.impressions.columns,
        "clicked",
        "click_id",
        "click_ts",
        "click_delay_s",
    ]


def test_clean_impressions_pass(tmp_path: Path) -> None:
    outcome, observed = judge_typed(tmp_path, impressions())
    assert outcome.success, outcome_markdown(outcome, observed)
    assert outcome.element_count == 1  # GX sees the one-row profile, never the rows
    assert observed["rows"] == 200 and observed["missing_columns"] == 0
    assert all(e.success and e.error is None for e in outcome.expectations)
    names = [e.name for e in outcome.expectations]
    assert names[:2] == ["missing_columns", "rows"]
    assert {
        "null:impression_id",
        "not_allowed:position",
        "out_of_range:bid_cpc",
        "out_of_range:predicted_ctr",
    } <= set(names)
    assert names[-3:] == ["outside_partition:ts", "median_bid", "quarantine_share"]
    assert observed["median_bid"] == pytest.approx(1.55, abs=0.05)


@pytest.mark.parametrize("column", ["impression_id", "request_id", "user_id", "ad_id", "ts"])
def test_null_ids_fail(tmp_path: Path, column: str) -> None:
    table = impressions(**{f"row{i}": {column: None} for i in (3, 50, 77)})
    assert_only_failure(judge_typed(tmp_path, table), f"null:{column}", 3)


def test_position_outside_the_two_slots_fails(tmp_path: Path) -> None:
    table = impressions(row0={"position": 3}, row9={"position": 3})
    assert_only_failure(judge_typed(tmp_path, table), "not_allowed:position", 2)


def test_non_positive_price_fails_even_once(tmp_path: Path) -> None:
    # ingest quarantines such a row: one in the typed table is a bug, however rare
    assert_only_failure(
        judge_typed(tmp_path, impressions(2000, row5={"bid_cpc": 0.0})), "out_of_range:bid_cpc", 1
    )


def test_ts_outside_the_partition_fails(tmp_path: Path) -> None:
    changes = {f"row{i}": {"ts": END} for i in range(5)}  # the end of the window is exclusive
    changes |= {f"row{i}": {"ts": START - timedelta(seconds=1)} for i in range(5, 10)}
    assert_only_failure(judge_typed(tmp_path, impressions(**changes)), "outside_partition:ts", 10)


def test_prices_in_cents_fail_the_typed_day_twice(tmp_path: Path) -> None:
    table = impressions()
    table = table.set_column(
        table.schema.get_field_index("bid_cpc"), "bid_cpc", pc.multiply(table["bid_cpc"], 100)
    )
    outcome, observed = judge_typed(tmp_path, table)
    assert outcome.failed_names == ("out_of_range:bid_cpc", "median_bid")
    assert observed["out_of_range:bid_cpc"] == 200 and observed["median_bid"] > 5.0


def test_empty_partition_and_missing_column_fail(tmp_path: Path) -> None:
    outcome, observed = judge_typed(tmp_path / "empty", impressions(0))
    assert outcome.failed_names == ("rows",) and observed["rows"] == 0

    outcome, observed = judge_typed(tmp_path / "missing", impressions().drop_columns(["country"]))
    assert outcome.failed_names == ("missing_columns",) and observed["missing_columns"] == 1
    (missing,) = outcome.failed
    assert "(country)" in missing.description
    assert [e.name for e in outcome.expectations] == ["missing_columns", "quarantine_share"]  # no row rules


def test_the_day_window_is_aware_half_open_and_one_day() -> None:
    assert START.tzinfo is not None and START.utcoffset() == timedelta(0)
    assert (START.isoformat(), END - START) == ("2026-10-01T00:00:00+00:00", timedelta(days=1))
    rule = window_rule(WINDOW)
    assert "ts >= TIMESTAMPTZ '2026-10-02T00:00:00+00:00'" in rule.sql and (rule.low, rule.high) == (0, 0)


# --- raw_clicks ------------------------------------------------------------------------------------


def clicks(n: int = 40) -> pa.Table:
    step = (END - START) / n
    rows = [
        {
            "click_id": f"clk-{i}",
            "impression_id": f"imp-{i * 5}",
            "ts": START + i * step,
            SOURCE_FILE: "clicks-0.jsonl",
            LINE_NUMBER: i + 1,
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=typed_schema(CONTRACT.log("clicks")))


def test_clicks_clean_pass_and_defects_fail(tmp_path: Path) -> None:
    outcome, observed = judge_typed(tmp_path / "clean", clicks(), "clicks")
    assert outcome.success and "rows" not in observed and "median_bid" not in observed

    rows = clicks().to_pylist()
    for i in (1, 2):
        rows[i]["impression_id"] = None
    bad = pa.Table.from_pylist(rows, schema=clicks().schema)
    assert_only_failure(judge_typed(tmp_path / "null", bad, "clicks"), "null:impression_id", 2)

    rows = clicks().to_pylist()
    for i in range(4):
        rows[i]["ts"] = END + timedelta(hours=2)
    late = pa.Table.from_pylist(rows, schema=clicks().schema)
    assert_only_failure(judge_typed(tmp_path / "late", late, "clicks"), "outside_partition:ts", 4)


# --- A day through ingest: rows quarantined, the day judged by its shares ----------------------------


def log_line(i: int, **changes: object) -> str:
    record = {k: v for k, v in impression_row(KEY, i).items() if k not in (SOURCE_FILE, LINE_NUMBER)}
    record["bid_cpc"] = round(0.05 + (i * 37 % 100) / 40.0, 3)  # 0.05 … 2.525, median about 1.3
    record.update(changes)
    record["ts"] = record["ts"].isoformat().replace("+00:00", "Z")
    return json.dumps(record)


def ingest_and_judge(tmp_path: Path, lines: list[str], kind: LogKind = "impressions"):
    """Ingest one day's file and judge it exactly as the blocking check does: from the typed
    partition and the quarantine file."""
    wh = Warehouse(tmp_path)
    landed = tmp_path / "landing" / "part-0.jsonl"
    landed.parent.mkdir(parents=True)
    landed.write_text("\n".join(lines) + "\n")
    table = RAW_TABLES[kind]
    done = ingest_day(wh, [landed], CONTRACT.log(kind), table, DAY, pseudonymiser_for(CONTRACT, None))
    with wh.duckdb() as con:
        quarantined = quarantined_counts(con, wh.quarantine_path(table, KEY))
        (valid,) = one_row(con, f"SELECT count(*) FROM read_parquet('{done.path}')")
        rules = raw_log_rules(
            CONTRACT,
            CONTRACT.log(kind),
            WINDOW,
            columns_of(con, done.path),
            quarantined,
            valid + sum(quarantined.values()),
        )
        outcome, observed = judge(con, done.path, rules)
    return done.parsed, quarantined, outcome, observed


def test_a_few_bad_rows_are_quarantined_and_the_day_passes(tmp_path: Path) -> None:
    bad = {i: {"position": 3} for i in range(0, 5)}
    bad |= {i: {"bid_cpc": 45.0} for i in range(100, 105)}
    bad |= {i: {"ts": START - timedelta(milliseconds=300)} for i in range(200, 203)}
    bad |= {i: {"ts": END} for i in range(203, 205)}
    lines = [log_line(i, **bad.get(i, {})) for i in range(5000)]
    parsed, quarantined, outcome, observed = ingest_and_judge(tmp_path, lines)

    assert quarantined == {"not_allowed:position": 5, "out_of_range:bid_cpc": 5, "outside_partition:ts": 5}
    assert quarantined == parsed.quarantined_by_reason
    assert parsed.lines_read == 5000 == parsed.valid_rows + sum(quarantined.values())
    assert outcome.success, outcome_markdown(outcome, observed)
    assert observed["rows"] == 4985
    # the hard contracts count zero on the typed rows: every bad row went to the quarantine
    assert (
        observed["not_allowed:position"]
        == observed["out_of_range:bid_cpc"]
        == observed["outside_partition:ts"]
        == 0
    )
    for reason in quarantined:
        assert observed[f"quarantine_share:{reason}"] == pytest.approx(5 / 5000)
    assert observed["median_bid"] == pytest.approx(1.3, abs=0.05)


def test_a_share_of_one_reason_above_the_limit_fails_the_day(tmp_path: Path) -> None:
    changes = {i: {"ts": END} for i in range(5)} | {
        i: {"ts": START - timedelta(seconds=1)} for i in range(5, 10)
    }
    lines = [log_line(i, **changes.get(i, {})) for i in range(200)]
    parsed, quarantined, outcome, observed = ingest_and_judge(tmp_path, lines)
    assert quarantined == {"outside_partition:ts": 10} and parsed.valid_rows == 190
    assert outcome.failed_names == ("quarantine_share:outside_partition:ts",)
    assert observed["quarantine_share:outside_partition:ts"] == pytest.approx(0.05)
    assert observed["outside_partition:ts"] == 0


def test_prices_logged_in_cents_fail_the_day(tmp_path: Path) -> None:
    """Every price ×100: most rows are out of range (quarantined), and the few cheap ones that stay
    in range give an implausible median: the day fails on both."""
    lines = [log_line(i, bid_cpc=round((0.05 + (i * 37 % 100) / 40.0) * 100, 3)) for i in range(2000)]
    parsed, quarantined, outcome, observed = ingest_and_judge(tmp_path, lines)
    assert quarantined == {"out_of_range:bid_cpc": 1860}  # only 0.05 … 0.2 (×100 ≤ 20) stay in range
    assert parsed.valid_rows == 140 and parsed.lines_read == 2000
    assert outcome.failed_names == ("median_bid", "quarantine_share:out_of_range:bid_cpc")
    assert observed["median_bid"] == pytest.approx(12.5)
    assert observed["quarantine_share:out_of_range:bid_cpc"] == pytest.approx(0.93)
    # the same day in currency units passes
    assert ingest_and_judge(tmp_path / "units", [log_line(i) for i in range(2000)])[2].success


def test_quarantine_rules_by_reason() -> None:
    (none,) = quarantine_rules({}, 100, 0.02)
    assert (none.name, none.sql, none.high) == ("quarantine_share", "0.0", 0.02)
    rules = quarantine_rules({"b": 3, "a": 1}, 100, 0.02)
    assert [(r.name, float(r.sql)) for r in rules] == [
        ("quarantine_share:a", 0.01),
        ("quarantine_share:b", 0.03),
    ]
    assert "(3 of 100)" in rules[1].description
    (nothing_read,) = quarantine_rules({"a": 1}, 0, 0.02)
    assert float(nothing_read.sql) == 1.0


# --- ad_events ---------------------------------------------------------------------------------------


def events(clicked: list[int]) -> pa.Table:
    """A day of joined events with the given labels (one row per impression)."""
    n = len(clicked)
    step = (END - START) / n
    rows = []
    for i, c in enumerate(clicked):
        base = {
            k: v
            for k, v in impression_row(KEY, i).items()
            if k not in (SOURCE_FILE, LINE_NUMBER, "impression_id")
        }
        rows.append(
            event_row(
                KEY,
                f"imp-{i}",
                **base | {"ts": START + i * step, "clicked": c, "click_delay_s": 30.0 + i if c else None},
            )
        )
    return events_table(rows)


def judge_events(tmp_path: Path, table: pa.Table, contract=CONTRACT):
    path = Warehouse(tmp_path).write_partition("ad_events", KEY, table)
    with duckdb.connect() as con:
        return judge(con, path, events_rules(contract, WINDOW, columns_of(con, path)))


def events_rows(every: int = 20, n: int = 200) -> list[dict[str, object]]:
    return events([int(i % every == 0) for i in range(n)]).to_pylist()


def test_clean_events_pass(tmp_path: Path) -> None:
    outcome, observed = judge_events(tmp_path, pa.Table.from_pylist(events_rows(), schema=events_schema()))
    assert outcome.success, outcome_markdown(outcome, observed)
    assert observed["ctr"] == pytest.approx(0.05) and observed["rows"] == 200


def test_duplicate_impressions_fail(tmp_path: Path) -> None:
    rows = events_rows()
    table = pa.Table.from_pylist(rows + [rows[10], rows[11]], schema=events_schema())
    assert_only_failure(judge_events(tmp_path, table), "duplicate_impressions", 2)  # rows beyond one per id


def test_negative_click_delay_fails(tmp_path: Path) -> None:
    rows = events_rows()
    for i in (0, 20):
        rows[i]["click_delay_s"] = -5.0
    assert_only_failure(
        judge_events(tmp_path, pa.Table.from_pylist(rows, schema=events_schema())), "negative_click_delay", 2
    )


def test_click_id_must_match_clicked(tmp_path: Path) -> None:
    rows = events_rows()
    rows[0]["click_id"] = None  # clicked, no click id
    for i in (1, 2):
        rows[i]["click_id"] = "clk-stray"  # not clicked, with a click id
    outcome, observed = judge_events(tmp_path, pa.Table.from_pylist(rows, schema=events_schema()))
    assert outcome.failed_names == ("clicked_without_click", "click_without_label")
    assert (observed["clicked_without_click"], observed["click_without_label"]) == (1, 2)


def test_labels_other_than_zero_and_one_fail(tmp_path: Path) -> None:
    rows = events_rows()
    rows[3]["clicked"] = 2
    rows[3]["click_id"] = "clk-3"
    outcome, observed = judge_events(tmp_path, pa.Table.from_pylist(rows, schema=events_schema()))
    assert outcome.failed_names == ("label_not_binary",) and observed["label_not_binary"] == 1


@pytest.mark.parametrize("flag", [0, 1])
def test_ctr_of_a_broken_join_fails(tmp_path: Path, flag: int) -> None:
    assert_only_failure(judge_events(tmp_path, events([flag] * 200)), "ctr", float(flag))


def test_events_missing_a_column_fail(tmp_path: Path) -> None:
    outcome, observed = judge_events(tmp_path, events([0, 1]).drop_columns(["click_ts"]))
    assert outcome.failed_names == ("missing_columns",) and len(outcome.expectations) == 1
    assert "(click_ts)" in outcome.expectations[0].description


def test_markdown_shows_failures_and_exact_counts(tmp_path: Path) -> None:
    rows = events_rows()
    for i in (0, 20):
        rows[i]["click_delay_s"] = -5.0
    outcome, observed = judge_events(tmp_path, pa.Table.from_pylist(rows, schema=events_schema()))
    table = outcome_markdown(outcome, observed)
    failed_rows = [line for line in table.splitlines() if line.startswith("| ❌")]
    assert len(failed_rows) == 1
    assert "clicks before their impression" in failed_rows[0] and "| 2 |" in failed_rows[0]
    assert table.count("| ✅") == len(outcome.expectations) - 1
    assert "| 200 |" in table and "| 0.05 |" in table  # the row count and the CTR, as observed


# --- features ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def features_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real features day: two days of events, the statistics of the second, its features."""
    wh = Warehouse(tmp_path_factory.mktemp("features"))
    previous = (DAY - timedelta(days=2)).isoformat()
    for day, offset in ((previous, 0), (KEY, 1)):
        rows = [
            event_row(
                day,
                f"{day}-{i}",
                ts=at(day, 60 * i),
                ad_id=f"a{i % 6}",
                user_id=f"u{i % 9}",
                clicked=int(i % 7 == offset),
            )
            for i in range(60)
        ]
        wh.write_partition("ad_events", day, events_table(rows))
    with wh.duckdb() as con:
        stats = wh.partition_path("feature_stats", KEY)
        build_feature_stats(con, SPEC, KEY, [(previous, wh.partition_path("ad_events", previous))], stats)
        build_features(
            con, SPEC, wh.partition_path("ad_events", KEY), stats, wh.partition_path("features", KEY)
        )
    return wh.partition_path("features", KEY)


def judge_features(tmp_path: Path, features_path: Path, changes: dict[str, dict[int, object]] | None = None):
    table = pq.read_table(features_path)
    for column, values in (changes or {}).items():
        data = table.column(column).to_pylist()
        for i, value in values.items():
            data[i] = value
        table = table.set_column(
            table.schema.get_field_index(column), column, pa.array(data, table.schema.field(column).type)
        )
    path = Warehouse(tmp_path).write_partition("features", KEY, table)
    with duckdb.connect() as con:
        return judge(con, path, features_rules(SPEC, CONTRACT, columns_of(con, path)))


def test_features_suite_passes_good_features_and_fails_bad_ones(tmp_path: Path, features_path: Path) -> None:
    outcome, observed = judge_features(tmp_path / "good", features_path)
    assert outcome.success, outcome_markdown(outcome, observed)
    assert observed["rows"] == 60

    outcome, observed = judge_features(
        tmp_path / "bad",
        features_path,
        {"hist_ad_ctr": {0: 1.5, 5: 1.5}, "hour": {3: 24}, "hist_site_impressions": {4: -1}},
    )
    assert outcome.failed_names == ("range:hour", "range:hist_ad_ctr", "range:hist_site_impressions")
    assert (
        observed["range:hist_ad_ctr"],
        observed["range:hour"],
        observed["range:hist_site_impressions"],
    ) == (2, 1, 1)

    outcome, observed = judge_features(tmp_path / "nulls", features_path, {"hist_advertiser_ctr": {1: None}})
    assert outcome.failed_names == ("null:hist_advertiser_ctr",) and observed["null:hist_advertiser_ctr"] == 1

    outcome, _ = judge_features(tmp_path / "slot", features_path, {"position": {2: 3}})
    assert outcome.failed_names == ("not_allowed:position",)


def test_features_rules_follow_the_feature_spec() -> None:
    names = [
        r.name for r in features_rules(SPEC, CONTRACT, ["impression_id", "ts", "clicked", *SPEC.columns])
    ]
    assert {f"range:{c}" for c in (*SPEC.ctr_features, *SPEC.count_features, "hour", "weekday")} <= set(names)
    assert {f"null:{c}" for c in SPEC.historical} <= set(names)
    no_position = replace(SPEC, has_position=False, reference_position=None)
    present = ["impression_id", "ts", "clicked", *no_position.columns]
    assert "position" not in no_position.columns
    assert not {"not_allowed:position", "null:position"} & {
        r.name for r in features_rules(no_position, CONTRACT, present)
    }
    missing = features_rules(SPEC, CONTRACT, ["impression_id"])
    assert [r.name for r in missing] == ["missing_columns"] and float(missing[0].sql) == 2 + len(SPEC.columns)
