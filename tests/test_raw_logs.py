"""Raw log parsing: every line is valid or quarantined with its file, line number and reason."""

import gzip
import json
from datetime import date
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assets.raw_logs import IMPRESSION_FIELDS, iter_line_chunks, parse_log_files, read_lines
from resources.landing import LandingFolder, MissingPartitionError

GOOD = {
    "impression_id": "i-1",
    "ts": "2026-10-01T08:15:02.123Z",
    "request_id": "r-1",
    "user_id": "u1",
    "user_segment": "gamers",
    "ad_id": "a1",
    "campaign_id": "c1",
    "advertiser_id": "adv1",
    "ad_category": "games",
    "site_id": "s1",
    "site_category": "news",
    "device_type": "mobile",
    "os": "ios",
    "country": "US",
    "position": 1,
    "bid_cpc": 0.42,
    "model_version": "random-v0",
    "predicted_ctr": 0.03,
}


def variant(**changes: object) -> str:
    record = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    return json.dumps(record)


#: (line, expected reason or None when valid)
CASES: list[tuple[str, str | None]] = [
    (variant(), None),
    (variant(position=2, bid_cpc=1), None),  # an integer price is a number
    (variant(os=None, country=None), None),  # optional context may be null
    (variant(predicted_ctr=...), None),  # optional field may be missing
    (variant(extra_field="kept out"), None),  # unknown fields are ignored
    (variant()[:37], "invalid_json"),
    ("", "empty_line"),
    ("[1, 2]", "not_an_object"),
    ('"just a string"', "not_an_object"),
    (variant(user_id=None), "null:user_id"),
    (variant(ad_id=...), "null:ad_id"),
    (variant(position="first"), "bad_type:position"),
    (variant(position=1.5), "bad_type:position"),
    (variant(bid_cpc="0.4USD"), "bad_type:bid_cpc"),
    (variant(ts="yesterday"), "bad_type:ts"),
    (variant(ts=1727770502), "bad_type:ts"),
    (variant(impression_id=12345), "bad_type:impression_id"),
    (variant(os=7), "bad_type:os"),
]


def write_lines(path: Path, lines: list[str], gz: bool = True) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_each_kind_of_dirt_gets_its_reason(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "impressions.jsonl.gz", [line for line, _ in CASES])
    with duckdb.connect() as con:
        parsed = parse_log_files(con, [f], "impressions")
    assert parsed.lines_read == len(CASES)
    reasons = {r["line_number"]: r["reason"] for r in parsed.quarantine.to_pylist()}
    expected = {i: reason for i, (_, reason) in enumerate(CASES, start=1) if reason}
    assert reasons == expected
    valid_lines = parsed.valid.column("line_number").to_pylist()
    assert valid_lines == [i for i, (_, reason) in enumerate(CASES, start=1) if reason is None]
    raw = {r["line_number"]: r["raw_line"] for r in parsed.quarantine.to_pylist()}
    assert raw[6] == CASES[5][0]  # the raw line is kept verbatim
    assert all(r["source_file"] == str(f) for r in parsed.quarantine.to_pylist())


def test_valid_rows_are_typed(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "i.jsonl", [variant(), variant(bid_cpc=1)], gz=False)
    with duckdb.connect() as con:
        parsed = parse_log_files(con, [f], "impressions")
    assert parsed.valid.schema.field("ts").type.tz == "UTC"
    assert str(parsed.valid.schema.field("position").type) == "int32"
    assert parsed.valid.column("bid_cpc").to_pylist() == [0.42, 1.0]
    ts = parsed.valid.column("ts")[0].as_py()
    assert (ts.hour, ts.minute, ts.second, ts.microsecond) == (8, 15, 2, 123000)
    assert [c.name for c in IMPRESSION_FIELDS] == parsed.valid.column_names[: len(IMPRESSION_FIELDS)]


def test_lines_keep_file_and_number_across_files(tmp_path: Path) -> None:
    a = write_lines(tmp_path / "a.jsonl.gz", ["x", "y"])
    b = tmp_path / "b.jsonl"
    b.write_bytes(b"one\r\ntwo\r\n\xff\xfe broken utf8")  # CRLF, no final newline, bad bytes
    lines = read_lines([a, b]).to_pylist()
    chunked = [t.to_pylist() for t in iter_line_chunks([a, b], chunk_bytes=3)]
    assert len(chunked) > 2 and [r for t in chunked for r in t] == lines
    assert [(Path(r["source_file"]).name, r["line_number"], r["line"]) for r in lines] == [
        ("a.jsonl.gz", 1, "x"),
        ("a.jsonl.gz", 2, "y"),
        ("b.jsonl", 1, "one"),
        ("b.jsonl", 2, "two"),
        ("b.jsonl", 3, "\ufffd\ufffd broken utf8"),
    ]


def test_clicks_parse(tmp_path: Path) -> None:
    f = write_lines(
        tmp_path / "c.jsonl.gz",
        [
            json.dumps({"click_id": "k1", "impression_id": "i-1", "ts": "2026-10-01T08:16:00Z"}),
            json.dumps({"click_id": "k2", "impression_id": None, "ts": "2026-10-01T08:16:00Z"}),
        ],
    )
    with duckdb.connect() as con:
        parsed = parse_log_files(con, [f], "clicks")
    assert parsed.valid.column("click_id").to_pylist() == ["k1"]
    assert parsed.quarantined_by_reason == {"null:impression_id": 1}


line_strategy = st.one_of(
    st.sampled_from([line for line, _ in CASES]),
    st.text(max_size=40).filter(lambda s: "\n" not in s and "\r" not in s),
    st.builds(
        lambda pos, bid, uid: variant(position=pos, bid_cpc=bid, user_id=uid),
        st.one_of(st.integers(-3, 5), st.text(max_size=3), st.none(), st.floats(allow_nan=False)),
        st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.none(), st.text(max_size=4)),
        st.one_of(st.text(max_size=5), st.none(), st.integers()),
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.lists(st.lists(line_strategy, max_size=30), min_size=1, max_size=3),
    chunk_bytes=st.integers(1, 300),
)
def test_accounting_identity_on_dirty_logs(
    tmp_path: Path, files: list[list[str]], chunk_bytes: int
) -> None:
    """Whatever the dirt, lines read = valid + quarantined, and each line is in exactly one;
    reading in small chunks (lines cut anywhere) gives exactly what one chunk per file gives."""
    paths = []
    for i, lines in enumerate(files):
        path = tmp_path / f"part-{i}-{abs(hash(tuple(lines)))}.jsonl.gz"
        paths.append(write_lines(path, lines) if lines else path.write_bytes(b"") or path)
    with duckdb.connect() as con:
        parsed = parse_log_files(con, paths, "impressions")
    assert parsed.lines_read == sum(len(lines) for lines in files)
    assert parsed.valid.num_rows + parsed.quarantine.num_rows == parsed.lines_read
    seen = [
        (r["source_file"], r["line_number"])
        for t in (parsed.valid, parsed.quarantine)
        for r in t.select(["source_file", "line_number"]).to_pylist()
    ]
    expected = [(str(p), n) for p, lines in zip(paths, files) for n in range(1, len(lines) + 1)]
    assert sorted(seen) == sorted(expected)
    assert sum(parsed.quarantined_by_reason.values()) == parsed.quarantine.num_rows
    with duckdb.connect() as con:
        chunked = parse_log_files(con, paths, "impressions", chunk_bytes=chunk_bytes)
    assert chunked.lines_read == parsed.lines_read
    assert chunked.valid.equals(parsed.valid)
    assert chunked.quarantine.equals(parsed.quarantine)


def test_missing_landing_folder_names_folder_and_date(tmp_path: Path) -> None:
    source = LandingFolder(landing_dir=str(tmp_path))
    with pytest.raises(MissingPartitionError, match=r"clicks.*2026-10-03.*date=2026-10-03"):
        source.partition_files("clicks", date(2026, 10, 3))
    folder = tmp_path / "clicks" / "date=2026-10-03"
    folder.mkdir(parents=True)
    (folder / "README.txt").write_text("not a log")
    with pytest.raises(MissingPartitionError, match="holds no"):
        source.partition_files("clicks", date(2026, 10, 3))
    write_lines(folder / "part-1.jsonl.gz", ["{}"])
    assert [p.name for p in source.partition_files("clicks", date(2026, 10, 3))] == [
        "part-1.jsonl.gz"
    ]
