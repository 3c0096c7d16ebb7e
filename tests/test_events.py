"""The impression-click join: every edge case of real logs, on real Parquet files in DuckDB."""

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.events import CLICK_OUTCOMES, join_events
from resources.warehouse import Warehouse

D0, D1, D2, D3 = "2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04"


def at(day: str, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hh, minute=mm, second=ss, tzinfo=timezone.utc)


def impressions_table(rows: list[tuple[str, datetime]]) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            "impression_id": [r[0] for r in rows],
            "ts": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
            "request_id": [f"r-{r[0]}" for r in rows],
            "user_id": ["u1"] * n,
            "user_segment": ["gamers"] * n,
            "ad_id": ["a1"] * n,
            "campaign_id": ["c1"] * n,
            "advertiser_id": ["adv1"] * n,
            "ad_category": ["games"] * n,
            "site_id": ["s1"] * n,
            "site_category": ["news"] * n,
            "device_type": ["mobile"] * n,
            "os": ["ios"] * n,
            "country": ["US"] * n,
            "position": pa.array([1] * n, pa.int32()),
            "bid_cpc": [0.5] * n,
            "model_version": ["random-v0"] * n,
            "predicted_ctr": [0.03] * n,
            "source_file": ["imp.jsonl"] * n,
            "line_number": pa.array(range(1, n + 1), pa.int64()),
        }
    )


def clicks_table(rows: list[tuple[str, str, datetime]]) -> pa.Table:
    return pa.table(
        {
            "click_id": [r[0] for r in rows],
            "impression_id": [r[1] for r in rows],
            "ts": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
            "source_file": ["clk.jsonl"] * len(rows),
            "line_number": pa.array(range(1, len(rows) + 1), pa.int64()),
        }
    )


@pytest.fixture()
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(data_dir=str(tmp_path / "data"))


def run_join(wh: Warehouse, day: str, imp_days: list[str], click_days: list[str], window=24.0):
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
def edge_case_logs(warehouse: Warehouse) -> Warehouse:
    wh = warehouse
    wh.write_partition("raw_impressions", D0, impressions_table([("p1", at(D0, 23, 30))]))
    wh.write_partition(
        "raw_impressions",
        D1,
        impressions_table(
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
    wh.write_partition("raw_impressions", D2, impressions_table([("n1", at(D2, 1))]))
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
    reasons = sorted((q["reason"], q["line_number"]) for q in quarantine)
    assert reasons == [
        ("click_before_impression", 6),
        ("duplicate_click", 3),
        ("duplicate_click", 4),
        ("duplicate_impression", 4),
        ("orphan_click", 5),
    ]
    assert all(q["raw_line"] for q in quarantine)


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


def test_rejoin_gives_identical_output(edge_case_logs: Warehouse) -> None:
    path = edge_case_logs.partition_path("ad_events", D1)
    run_join(edge_case_logs, D1, [D0, D1], [D0, D1, D2])
    first = pq.read_table(path)
    run_join(edge_case_logs, D1, [D0, D1], [D0, D1, D2])
    assert pq.read_table(path).equals(first)
    acc, _, _ = run_join(edge_case_logs, D1, [D0, D1], [D0, D1, D2])
    assert set(acc.click_outcomes) == set(CLICK_OUTCOMES)
