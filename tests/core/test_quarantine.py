"""Ingesting one day into the warehouse: the typed partition, the quarantine beside it, and what the UI
shows of them; the accounting always adds up."""

import gzip
import json
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clickloop.contract_file import load_contract
from clickloop.ingest import dictionary_columns
from clickloop.lines import LogFileError
from clickloop.privacy import pseudonymiser_for
from clickloop.quarantine import ingest_day, quarantined_counts, reasons_markdown, sample_markdown
from clickloop.storage import Warehouse
from tests.core.synthetic import LOGGED_IMPRESSION

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


def _broken(whole: bytes, how: str) -> bytes:
    if how == "truncated":  # a delivery cut off in transfer
        return whole[: len(whole) // 2]
    if how == "corrupt":  # bytes overwritten in the middle of the deflate stream
        middle = len(whole) // 2
        return whole[:middle] + b"\x00" * 64 + whole[middle + 64 :]
    return b"plain text, named .gz\n" + whole  # not gzip at all


@pytest.mark.parametrize(
    ("how", "message"),
    [
        (
            "truncated",
            r"clicks-2\.jsonl\.gz: the gzip data breaks off or is corrupt after line [0-9,]+ \(EOFError",
        ),
        ("corrupt", r"clicks-2\.jsonl\.gz: the gzip data breaks off or is corrupt after line [0-9,]+ \("),
        ("not_gzip", r"clicks-2\.jsonl\.gz: not a gzip file \(it starts with b'pl'"),
    ],
)
def test_a_broken_gzip_file_stops_the_day_naming_the_file_and_writes_nothing(
    tmp_path: Path, how: str, message: str
) -> None:
    wh = Warehouse(tmp_path / "data")
    good = tmp_path / "clicks-1.jsonl.gz"
    good.write_bytes(gzip.compress(f"{click(0)}\n".encode()))
    lines = "".join(f"{click(i)}\n" for i in range(1, 20_001)).encode()
    broken = tmp_path / "clicks-2.jsonl.gz"
    broken.write_bytes(_broken(gzip.compress(lines), how))
    with pytest.raises(LogFileError, match=message):
        ingest_day(wh, [good, broken], CONTRACT.log("clicks"), "raw_clicks", DAY)
    # neither the partition nor its quarantine, nor a temporary file: the day is simply not there
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    # the same lines delivered whole are ingested
    broken.write_bytes(gzip.compress(lines))
    done = ingest_day(wh, [good, broken], CONTRACT.log("clicks"), "raw_clicks", DAY)
    assert done.parsed.valid_rows == 20_001 and done.parsed.quarantine.num_rows == 0


def test_repeating_text_gets_a_parquet_dictionary_and_ids_numbers_and_pseudonyms_do_not(
    tmp_path: Path,
) -> None:
    spec = CONTRACT.log("impressions")
    landed = tmp_path / "impressions.jsonl"
    rows = [
        LOGGED_IMPRESSION
        | {
            "impression_id": f"i-{i}",
            "request_id": f"r-{i}",
            "user_id": f"u{i % 7}",
            "ad_id": f"a{i % 3}",
            "position": 1 + i % 2,
        }
        for i in range(500)
    ]
    landed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wh = Warehouse(tmp_path / "data")
    done = ingest_day(wh, [landed], spec, "raw_impressions", DAY, pseudonymiser_for(CONTRACT, None))
    assert done.parsed.valid_rows == 500
    metadata = pq.ParquetFile(done.path).metadata
    encodings = {
        metadata.schema.column(i).name: set(metadata.row_group(0).column(i).encodings)
        for i in range(metadata.num_columns)
    }
    dictionary = {name for name, used in encodings.items() if used & {"RLE_DICTIONARY", "PLAIN_DICTIONARY"}}
    assert {"ad_id", "site_id", "source_file"} <= dictionary
    assert not dictionary & {"impression_id", "request_id", "user_id", "ts", "position", "bid_cpc"}
    assert set(dictionary_columns(pq.read_schema(done.path), spec)) == dictionary
    assert pq.read_table(done.path).column("ad_id").to_pylist() == [r["ad_id"] for r in rows]
