"""Ingesting one day into the warehouse: the typed partition, the quarantine beside it, and what the UI
shows of them; the accounting always adds up."""

import json
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq

from clickloop.contract_file import load_contract
from clickloop.quarantine import ingest_day, quarantined_counts, reasons_markdown, sample_markdown
from clickloop.storage import Warehouse

CONTRACT = load_contract()
DAY = date(2026, 10, 1)


def click(i: int, ts: str = "2026-10-01T08:00:00Z") -> str:
    return json.dumps({"click_id": f"k{i}", "impression_id": f"i{i}", "ts": ts})


def test_a_day_lands_in_its_partition_and_its_quarantine(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "data")
    landed = tmp_path / "clicks.jsonl"
    landed.write_text(
        "\n".join([click(1), "not json", click(2), click(3, "2026-10-02T00:00:00Z"), "", click(4)]) + "\n"
    )
    done = ingest_day(wh, [landed], CONTRACT.log("clicks"), "raw_clicks", DAY)
    assert done.path == wh.partition_path("raw_clicks", "2026-10-01")
    assert done.quarantine_path == wh.quarantine_path("raw_clicks", "2026-10-01")
    typed = pq.read_table(done.path)
    assert typed.column("click_id").to_pylist() == ["k1", "k2", "k4"]
    assert typed.column("line_number").to_pylist() == [1, 3, 6]
    quarantine = pq.read_table(done.quarantine_path).to_pylist()
    assert [(r["line_number"], r["reason"], r["raw_line"]) for r in quarantine] == [
        (2, "invalid_json", "not json"),
        (4, "outside_partition:ts", click(3, "2026-10-02T00:00:00Z")),
        (5, "empty_line", ""),
    ]
    with wh.duckdb() as con:
        counts = quarantined_counts(con, done.quarantine_path)
        assert quarantined_counts(con, tmp_path / "none.parquet") == {}
    assert counts == done.parsed.quarantined_by_reason
    assert counts == {"empty_line": 1, "invalid_json": 1, "outside_partition:ts": 1}
    assert done.parsed.lines_read == 6 == typed.num_rows + sum(counts.values())
    assert not [p for p in (tmp_path / "data").rglob("*") if p.name.endswith(".tmp")]

    assert reasons_markdown(counts).splitlines()[2:] == [
        "| empty_line | 1 |",
        "| invalid_json | 1 |",
        "| outside_partition:ts | 1 |",
    ]
    assert "| (none) | 0 |" in reasons_markdown({})
    sample = sample_markdown(done.parsed, limit=2)
    assert "| clicks.jsonl:2 | invalid_json | `not json` |" in sample
    assert "clicks.jsonl:4" in sample and "clicks.jsonl:5" not in sample
