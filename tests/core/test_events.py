"""Impressions joined to their clicks (and labelled impressions deduplicated): every edge case of real
logs, on real Parquet files in DuckDB, with the accounting of every row."""

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clickloop.checks import events_rules
from clickloop.contract import LINE_NUMBER, SOURCE_FILE, LogContract
from clickloop.contract_file import parse_contract
from clickloop.events import CLICK_OUTCOMES, EventsAccounting, join_events, label_events
from clickloop.expectations import run_rules
from clickloop.quarantine import day_window, ingest_day
from clickloop.storage import Warehouse
from tests.core.synthetic import CONTRACT, impression_row, impressions_table, typed_schema

D0, D1, D2, D3 = "2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04"


def at(day: str, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hh, minute=mm, second=ss, tzinfo=UTC)


def imps(rows: list[tuple[str, datetime]]) -> pa.Table:
    return impressions_table(
        [
            impression_row(
                ts.date().isoformat(),
                i,
                impression_id=impression_id,
                ts=ts,
                request_id=f"r-{impression_id}",
                source_file="imp.jsonl",
                line_number=i + 1,
            )
            for i, (impression_id, ts) in enumerate(rows)
        ]
    )


def clicks_table(rows: list[tuple[str, str, datetime]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"click_id": c, "impression_id": i, "ts": ts, SOURCE_FILE: "clk.jsonl", LINE_NUMBER: n}
            for n, (c, i, ts) in enumerate(rows, start=1)
        ],
        schema=typed_schema(CONTRACT.log("clicks")),
    )


def run_join(wh: Warehouse, day: str, imp_days: list[str], click_days: list[str], window: float = 24.0):
    with wh.duckdb() as con:
        acc = join_events(
            con,
            day,
            [(k, wh.partition_path("raw_impressions", k)) for k in imp_days],
            [(k, wh.partition_path("raw_clicks", k)) for k in click_days],
            window,
            wh.partition_path("ad_events", day),
            wh.quarantine_path("ad_events", day),
        )
    events = pq.read_table(wh.partition_path("ad_events", day)).to_pylist()
    quarantine = pq.read_table(wh.quarantine_path("ad_events", day)).to_pylist()
    return acc, {e["impression_id"]: e for e in events}, quarantine


@pytest.fixture()
def edge_case_logs(tmp_path: Path) -> Warehouse:
    wh = Warehouse(tmp_path / "data")
    wh.write_partition("raw_impressions", D0, imps([("p1", at(D0, 23, 30))]))
    wh.write_partition(
        "raw_impressions",
        D1,
        imps(
            [
                ("late", at(D1, 23, 50)),  # clicked at 00:10 next day
                ("dup", at(D1, 10)),  # clicked twice (same click id twice, then another click)
                ("dupimp", at(D1, 11)),  # logged twice
                ("dupimp", at(D1, 11)),
                ("before", at(D1, 12)),  # its click is stamped before it
                ("slow", at(D1, 1)),  # clicked 23 h later
                ("noclick", at(D1, 13)),
            ]
        ),
    )
    wh.write_partition("raw_impressions", D2, imps([("n1", at(D2, 1))]))
    wh.write_partition("raw_clicks", D0, clicks_table([]))
    wh.write_partition(
        "raw_clicks",
        D1,
        clicks_table(
            [
                ("c-p1", "p1", at(D1, 0, 5)),  # D0's impression clicked after midnight
                ("c-dup", "dup", at(D1, 10, 1)),
                ("c-dup", "dup", at(D1, 10, 1)),  # exact duplicate line
                ("c-dup2", "dup", at(D1, 10, 3)),  # a second click on the same impression
                ("c-orphan", "ghost", at(D1, 14)),
                ("c-before", "before", at(D1, 11, 59)),
                ("c-dupimp", "dupimp", at(D1, 11, 2)),
            ]
        ),
    )
    wh.write_partition(
        "raw_clicks",
        D2,
        clicks_table([("c-late", "late", at(D2, 0, 10)), ("c-slow", "slow", at(D2, 0, 0))]),
    )
    wh.write_partition("raw_clicks", D3, clicks_table([]))
    return wh


def test_every_join_edge_case(edge_case_logs: Warehouse) -> None:
    acc, events, quarantine = run_join(edge_case_logs, D1, [D0, D1], [D0, D1, D2])

    assert set(events) == {"late", "dup", "dupimp", "before", "slow", "noclick"}
    assert events["late"]["clicked"] == 1 and events["late"]["click_id"] == "c-late"
    assert events["late"]["click_delay_s"] == pytest.approx(20 * 60)
    assert events["dup"]["clicked"] == 1 and events["dup"]["click_id"] == "c-dup"
    assert events["dupimp"]["clicked"] == 1
    assert events["before"]["clicked"] == 0 and events["before"]["click_id"] is None
    assert events["slow"]["clicked"] == 1  # 23 h is inside the default 24 h window
    assert events["noclick"]["clicked"] == 0

    assert acc.impressions_in == 7 and acc.duplicate_impressions == 1 and acc.events == 6
    assert acc.clicked == 4 and acc.late_clicks == 2
    assert acc.click_outcomes == {
        "attributed_same_day": 2,  # c-dup, c-dupimp
        "attributed_previous_day": 1,  # c-p1 belongs to D0's impression
        "duplicate_click": 2,
        "orphan_click": 1,
        "click_before_impression": 1,
        "outside_attribution_window": 0,
    }
    assert acc.clicks_in == 7 and acc.ctr == pytest.approx(4 / 6)
    reasons = sorted((q["reason"], q["line_number"]) for q in quarantine)
    assert reasons == [
        ("click_before_impression", 6),
        ("duplicate_click", 3),
        ("duplicate_click", 4),
        ("duplicate_impression", 4),
        ("orphan_click", 5),
    ]
    assert all(q["raw_line"] for q in quarantine)
    assert (
        json.loads(next(q["raw_line"] for q in quarantine if q["reason"] == "orphan_click"))["click_id"]
        == "c-orphan"
    )


def test_a_repeated_impression_keeps_its_earliest_row_across_days(tmp_path: Path) -> None:
    """An id logged twice keeps its earliest row by time (not by line), across D-1 and D; the click
    is matched to that row's time and day."""
    wh = Warehouse(tmp_path / "data")
    wh.write_partition("raw_impressions", D0, imps([("again", at(D0, 23, 59)), ("solo0", at(D0, 8))]))
    rows = [
        ("late_first", at(D1, 9)),  # line 1: logged first, stamped later
        ("again", at(D1, 0, 1)),  # line 2: D-1's impression delivered again
        ("late_first", at(D1, 8)),  # line 3: the earliest row of its id
        ("solo1", at(D1, 10)),
    ]
    wh.write_partition("raw_impressions", D1, imps(rows))
    wh.write_partition("raw_clicks", D0, clicks_table([]))
    clicks = [("c-again", "again", at(D1, 0, 5)), ("c-late", "late_first", at(D1, 8, 30))]
    wh.write_partition("raw_clicks", D1, clicks_table(clicks))
    wh.write_partition("raw_clicks", D2, clicks_table([]))

    acc, events, quarantine = run_join(wh, D1, [D0, D1], [D0, D1, D2])

    assert set(events) == {"late_first", "solo1"}
    assert events["late_first"]["ts"] == at(D1, 8) and events["late_first"]["clicked"] == 1
    assert events["late_first"]["click_delay_s"] == pytest.approx(30 * 60)
    assert (acc.impressions_in, acc.duplicate_impressions, acc.events) == (4, 2, 2)
    assert acc.click_outcomes["attributed_previous_day"] == 1  # c-again: D-1's row is the impression
    assert acc.click_outcomes["attributed_same_day"] == 1
    assert sorted((q["reason"], q["line_number"]) for q in quarantine) == [
        ("duplicate_impression", 1),
        ("duplicate_impression", 2),
    ]


def test_events_have_the_impression_columns_and_pass_their_rules(edge_case_logs: Warehouse) -> None:
    run_join(edge_case_logs, D1, [D0, D1], [D0, D1, D2])
    path = edge_case_logs.partition_path("ad_events", D1)
    table = pq.read_table(path)
    assert table.column_names == [
        *CONTRACT.impressions.columns,
        "clicked",
        "click_id",
        "click_ts",
        "click_delay_s",
    ]
    assert table.schema.field("clicked").type == pa.int8()
    with duckdb.connect() as con:
        present = list(con.sql(f"SELECT * FROM read_parquet('{path}') LIMIT 0").columns)
        rules = events_rules(CONTRACT, day_window(datetime.fromisoformat(D1).date()), present)
        outcome, observed = run_rules(con, f"read_parquet('{path}')", "ad_events", rules)
    # a tiny day with a CTR of 4/6: only the plausible-CTR rule fails, every hard contract holds
    assert outcome.failed_names == ("ctr",) and observed["ctr"] == pytest.approx(4 / 6)


def test_late_click_is_counted_once_across_days(edge_case_logs: Warehouse) -> None:
    """D0's impression clicked after midnight is D0's label, and D1 counts it as previous day's."""
    acc0, events0, _ = run_join(edge_case_logs, D0, [D0], [D0, D1])
    assert events0["p1"]["clicked"] == 1 and acc0.late_clicks == 1
    acc2, events2, _ = run_join(edge_case_logs, D2, [D1, D2], [D1, D2, D3])
    assert acc2.click_outcomes["attributed_previous_day"] == 2  # c-late and c-slow
    assert events2["n1"]["clicked"] == 0


def test_attribution_window_is_configurable(edge_case_logs: Warehouse) -> None:
    acc, events, _ = run_join(edge_case_logs, D1, [D0, D1], [D0, D1, D2], window=1.0)
    assert events["slow"]["clicked"] == 0  # 23 h > 1 h
    assert events["late"]["clicked"] == 1
    acc2, _, q2 = run_join(edge_case_logs, D2, [D1, D2], [D1, D2, D3], window=1.0)
    assert acc2.click_outcomes["outside_attribution_window"] == 1
    assert any(q["reason"] == "outside_attribution_window" for q in q2)


def test_open_attribution_window_is_refused(edge_case_logs: Warehouse) -> None:
    with pytest.raises(ValueError, match="clicks of the day after 2026-10-02 are needed"):
        run_join(edge_case_logs, D1, [D0, D1], [D0, D1])
    with pytest.raises(ValueError, match="attribution window"):
        run_join(edge_case_logs, D1, [D0, D1], [D0, D1, D2], window=30)
    with pytest.raises(ValueError, match="impressions of 2026-10-02 are not among the inputs"):
        run_join(edge_case_logs, D1, [D0], [D0, D1, D2])


def test_rejoin_gives_identical_output(edge_case_logs: Warehouse) -> None:
    path = edge_case_logs.partition_path("ad_events", D1)
    run_join(edge_case_logs, D1, [D0, D1], [D0, D1, D2])
    first = pq.read_table(path)
    run_join(edge_case_logs, D1, [D0, D1], [D0, D1, D2])
    assert pq.read_table(path).equals(first)
    acc, _, _ = run_join(edge_case_logs, D1, [D0, D1], [D0, D1, D2])
    assert set(acc.click_outcomes) == set(CLICK_OUTCOMES)


def test_accounting_that_does_not_add_up_is_a_bug() -> None:
    outcomes = dict.fromkeys(CLICK_OUTCOMES, 0)
    EventsAccounting(D1, 3, 2, 1, 0, outcomes, 0, 0).check()
    with pytest.raises(AssertionError, match="impressions do not add up"):
        EventsAccounting(D1, 3, 3, 1, 0, outcomes, 0, 0).check()
    with pytest.raises(AssertionError, match="clicks do not add up"):
        EventsAccounting(D1, 3, 2, 1, 5, outcomes, 0, 0).check()


# --- Labelled impressions (no click log) -------------------------------------------------------------


def labelled_contract() -> LogContract:
    return parse_contract(
        {
            "name": "labelled",
            "impressions": {
                "fields": [
                    {"source": "id", "column": "impression_id"},
                    {"source": "time", "column": "ts", "type": "timestamp", "format": "epoch_s"},
                    {"source": "item", "column": "ad_id"},
                    {"source": "context"},
                ]
            },
            "label": {"source": "click"},
            "features": {"categorical": ["context"], "entities": [{"name": "item", "columns": ["ad_id"]}]},
        },
        "labelled.yaml",
    )


def epoch(day: str, hh: int) -> float:
    return at(day, hh).timestamp()


def line(impression_id: str, day: str, hh: int, click: object) -> str:
    return json.dumps(
        {"id": impression_id, "time": epoch(day, hh), "item": "a1", "context": "c", "click": click}
    )


def test_labels_as_numbers_and_booleans_are_typed(tmp_path: Path) -> None:
    contract = labelled_contract()
    wh = Warehouse(tmp_path / "data")
    landed = tmp_path / "day.jsonl"
    labels: list[object] = [0, 1, True, False, 2, "yes", 0.5, None, "true"]
    landed.write_text("\n".join(line(f"i{n}", D1, 1, label) for n, label in enumerate(labels)) + "\n")
    done = ingest_day(wh, [landed], contract.impressions, "raw_impressions", at(D1, 0).date())
    valid = pq.read_table(done.path)
    assert valid.schema.field("clicked").type == pa.int8()
    assert valid.column("clicked").to_pylist() == [0, 1, 1, 0, 1]
    reasons = {r["line_number"]: r["reason"] for r in done.parsed.quarantine.to_pylist()}
    # a string that converts is read as what it says ("true"), as for any other typed field; one
    # that does not ("yes"), and a fraction, are bad types
    assert reasons == {
        5: "not_allowed:clicked",
        6: "bad_type:clicked",
        7: "bad_type:clicked",
        8: "null:clicked",
    }

    csv_file = tmp_path / "day.csv"
    texts = ["0", "1", "true", "False", "TRUE", "2", "0.5", ""]
    rows = [f"i{n},{epoch(D1, 1):.0f},a1,c,{text}" for n, text in enumerate(texts)]
    csv_file.write_text("\n".join(["id,time,item,context,click", *rows]) + "\n")
    done = ingest_day(wh, [csv_file], contract.impressions, "raw_impressions", at(D1, 0).date())
    assert pq.read_table(done.path).column("clicked").to_pylist() == [0, 1, 1, 0, 1]
    reasons = {r["line_number"]: r["reason"] for r in done.parsed.quarantine.to_pylist()}
    assert reasons == {7: "not_allowed:clicked", 8: "bad_type:clicked", 9: "null:clicked"}


def test_labelled_impressions_are_deduplicated_and_keep_their_label(tmp_path: Path) -> None:
    contract = labelled_contract()
    wh = Warehouse(tmp_path / "data")
    days = {
        D0: [line("x", D0, 23, 1), line("only-d0", D0, 5, 0)],
        D1: [
            line("x", D1, 1, 1),  # x was served on D0: a duplicate here, D0's label counts there
            line("a", D1, 2, True),
            line("a", D1, 3, 1),  # a duplicate within the day: the earliest row wins
            line("b", D1, 4, False),
            line("b", D1, 2, 1),  # earlier, though logged later: it is the one kept
            line("c", D1, 5, 0),
            line("d", D1, 6, 1),
        ],
    }
    inputs = []
    for day, lines in days.items():
        landed = tmp_path / f"{day}.jsonl"
        landed.write_text("\n".join(lines) + "\n")
        done = ingest_day(wh, [landed], contract.impressions, "raw_impressions", at(day, 0).date())
        inputs.append((day, done.path))
    with wh.duckdb() as con:
        acc = label_events(
            con, D1, inputs, wh.partition_path("ad_events", D1), wh.quarantine_path("ad_events", D1)
        )
    events = {e["impression_id"]: e for e in pq.read_table(wh.partition_path("ad_events", D1)).to_pylist()}
    assert {k: e["clicked"] for k, e in events.items()} == {"a": 1, "b": 1, "c": 0, "d": 1}
    assert all(e["click_id"] is None and e["click_ts"] is None for e in events.values())
    assert (acc.impressions_in, acc.events, acc.duplicate_impressions) == (7, 4, 3)
    assert acc.clicked == 3 and acc.late_clicks == 0
    # the kept rows' labels are attributed, the duplicates' clicks (x and a) are accounted as duplicates
    assert acc.clicks_in == 5
    assert acc.click_outcomes == {
        "attributed_same_day": 3,
        "attributed_previous_day": 0,
        "duplicate_click": 2,
        "orphan_click": 0,
        "click_before_impression": 0,
        "outside_attribution_window": 0,
    }
    quarantine = pq.read_table(wh.quarantine_path("ad_events", D1)).to_pylist()
    assert sorted((q["reason"], q["line_number"]) for q in quarantine) == [
        ("duplicate_impression", 1),
        ("duplicate_impression", 3),
        ("duplicate_impression", 4),
    ]
    path = wh.partition_path("ad_events", D1)
    with duckdb.connect() as con:
        present = list(con.sql(f"SELECT * FROM read_parquet('{path}') LIMIT 0").columns)
        rules = events_rules(contract, day_window(at(D1, 0).date()), present)
        outcome, observed = run_rules(con, f"read_parquet('{path}')", "ad_events", rules)
    assert "clicked_without_click" not in observed  # a labelled day has no click ids to match
    assert outcome.failed_names == ("ctr",) and observed["ctr"] == pytest.approx(0.75)
