"""Ingest by the log contract: every line of JSON lines, CSV and Parquet files is typed or
quarantined with its file, line number and first reason; lines read = valid + quarantined (+ the CSV
header line), whatever the dirt and however the files are cut into chunks."""

import csv
import gzip
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clickloop import readers
from clickloop.contract import Field, LogSpec
from clickloop.contract_file import load_contract, parse_contract
from clickloop.ingest import ParsedLogs, TimeWindow, parse_log_files
from clickloop.lines import LogFileError, iter_line_chunks, read_lines
from clickloop.privacy import REDACTED, WITHHELD, pseudonymiser_for
from clickloop.quarantine import day_window
from tests.core.synthetic import LOGGED_IMPRESSION

CONTRACT = load_contract()
IMPRESSIONS = CONTRACT.impressions
DAY = date(2026, 10, 1)
WINDOW = day_window(DAY)

GOOD = LOGGED_IMPRESSION


def variant(**changes: object) -> str:
    record = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    return json.dumps(record)


#: (line, expected reason or None when valid), judged against the day of GOOD
CASES: list[tuple[str, str | None]] = [
    (variant(), None),
    (variant(position=2, bid_cpc=1), None),  # an integer price is a number
    (variant(os=None, country=None), None),  # optional context may be null
    (variant(predicted_ctr=...), None),  # optional field may be missing
    (variant(extra_field="kept out"), None),  # unknown fields are ignored
    (variant(ts="2026-10-01T10:15:02+02:00"), None),  # an offset is converted to UTC
    (variant(bid_cpc=0.01), None),  # the range's bounds are inside it
    (variant()[:37], "invalid_json"),
    ("", "empty_line"),
    ("   ", "empty_line"),
    ("[1, 2]", "not_an_object"),
    ('"just a string"', "not_an_object"),
    (variant(user_id=None), "null:user_id"),
    (variant(ad_id=...), "null:ad_id"),
    (variant(position="first"), "bad_type:position"),
    (variant(position=1.5), "bad_type:position"),
    (variant(bid_cpc="0.4USD"), "bad_type:bid_cpc"),
    (variant(ts="yesterday"), "bad_type:ts"),
    (variant(ts=1727770502), "bad_type:ts"),
    # a boolean, an array or an object is not a number (true is not position 1)
    (variant(position=True), "bad_type:position"),
    (variant(bid_cpc=False), "bad_type:bid_cpc"),
    (variant(bid_cpc=[0.4]), "bad_type:bid_cpc"),
    (variant(predicted_ctr={"p": 0.1}), "bad_type:predicted_ctr"),
    (variant(ts=True), "bad_type:ts"),
    # a value is converted where it can be: an id logged as a number is its text, a number logged
    # as a string is the number (what does not convert is a bad type, above)
    (variant(impression_id=12345), None),
    (variant(os=7), None),
    (variant(position="2", bid_cpc="0.5"), None),
    (variant(position=2.0, bid_cpc=4e-1, predicted_ctr=None), None),  # a whole 2.0 is the int 2
    # row rules: the allowed slots, the price and prediction ranges, the day's own timestamps
    (variant(position=3), "not_allowed:position"),
    (variant(position=0), "not_allowed:position"),
    (variant(bid_cpc=45.0), "out_of_range:bid_cpc"),
    (variant(bid_cpc=0.0), "out_of_range:bid_cpc"),
    (variant(bid_cpc=-0.5), "out_of_range:bid_cpc"),
    (variant(predicted_ctr=1.5), "out_of_range:predicted_ctr"),
    (variant(ts="2026-10-02T00:00:00Z"), "outside_partition:ts"),  # the end is exclusive
    (variant(ts="2026-09-30T23:59:59.700Z"), "outside_partition:ts"),
    # the first reason counts: a null before a bad type, a type before a rule, fields in order
    (variant(user_id=None, position="first"), "null:user_id"),
    (variant(position="first", bid_cpc=45.0), "bad_type:position"),
    (variant(position=3, bid_cpc=45.0), "not_allowed:position"),
    (variant(bid_cpc=45.0, ts="2026-10-05T00:00:00Z"), "out_of_range:bid_cpc"),
]


def write_lines(path: Path, lines: list[str], gz: bool = True, newline: str = "\n") -> Path:
    data = (newline.join(lines) + newline).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def parse(
    files: list[Path], spec: LogSpec = IMPRESSIONS, window: TimeWindow | None = WINDOW, **kw
) -> ParsedLogs:
    kw.setdefault("pseudonymiser", pseudonymiser_for(CONTRACT, None))
    with duckdb.connect() as con:
        return parse_log_files(con, files, spec, window, **kw)


def assert_every_line_once(parsed: ParsedLogs, expected: list[tuple[str, int]]) -> None:
    """Each line of ``expected`` (file, line) is valid or quarantined, exactly once."""
    seen = [
        (r["source_file"], r["line_number"])
        for t in (parsed.valid, parsed.quarantine)
        for r in t.select(["source_file", "line_number"]).to_pylist()
    ]
    assert sorted(seen) == sorted(expected)
    assert sum(parsed.quarantined_by_reason.values()) == parsed.quarantine.num_rows


# --- JSON lines -----------------------------------------------------------------------------------


def test_each_kind_of_dirt_gets_its_reason(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "impressions.jsonl.gz", [line for line, _ in CASES])
    parsed = parse([f])
    assert parsed.lines_read == len(CASES) and parsed.files == [str(f)]
    reasons = {r["line_number"]: r["reason"] for r in parsed.quarantine.to_pylist()}
    expected = {i: reason for i, (_, reason) in enumerate(CASES, start=1) if reason}
    assert reasons == expected
    valid_lines = parsed.valid.column("line_number").to_pylist()
    assert valid_lines == [i for i, (_, reason) in enumerate(CASES, start=1) if reason is None]
    raw = {r["line_number"]: r["raw_line"] for r in parsed.quarantine.to_pylist()}
    assert raw[8] == CASES[7][0]  # the raw line is kept verbatim
    assert all(r["source_file"] == str(f) for r in parsed.quarantine.to_pylist())
    assert parsed.quarantined_by_reason["out_of_range:bid_cpc"] == 4
    assert list(parsed.quarantined_by_reason) == sorted(parsed.quarantined_by_reason)


def test_without_a_window_no_timestamp_is_outside(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "i.jsonl", [variant(ts="2030-01-01T00:00:00Z")], gz=False)
    assert parse([f], window=None).valid.num_rows == 1
    assert parse([f]).quarantined_by_reason == {"outside_partition:ts": 1}


def test_valid_rows_are_typed(tmp_path: Path) -> None:
    f = write_lines(
        tmp_path / "i.jsonl",
        [variant(), variant(bid_cpc=1), variant(ts="2026-10-01T10:15:02.123+02:00")],
        gz=False,
    )
    parsed = parse([f])
    assert parsed.valid.column_names == list(IMPRESSIONS.typed_columns)
    assert parsed.valid.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert parsed.valid.schema.field("position").type == pa.int32()
    assert parsed.valid.schema.field("bid_cpc").type == pa.float64()
    assert parsed.valid.column("bid_cpc").to_pylist() == [0.42, 1.0, 0.42]
    first, _, offset = parsed.valid.column("ts").to_pylist()
    assert (first.hour, first.minute, first.second, first.microsecond) == (8, 15, 2, 123000)
    assert offset == first  # 10:15 at +02:00 is 08:15 UTC
    assert parsed.quarantine.schema.names == ["source_file", "line_number", "reason", "raw_line"]


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
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    lone = tmp_path / "lone.jsonl"
    lone.write_bytes(b"\n")
    assert read_lines([empty]).num_rows == 0
    assert read_lines([lone]).column("line").to_pylist() == [""]  # "\n" alone is one empty line


@pytest.mark.parametrize("keep_order", [True, False])
def test_rows_keep_their_line_order_when_duckdb_types_a_chunk_on_several_threads(
    tmp_path: Path, keep_order: bool
) -> None:
    """A chunk of many Arrow batches is typed in parallel: the valid rows and the quarantine come out
    in line order, each line where it was; not sorted again where DuckDB keeps the order (its
    default), sorted on a connection where that is off."""
    n = 60_000  # several of ingest's batches of 16,384 rows in one chunk
    lines = [variant(impression_id=f"i-{k}") if k % 7 else variant(position=3) for k in range(1, n + 1)]
    path = write_lines(tmp_path / "day.jsonl", lines, gz=False)
    with duckdb.connect(config={"threads": 4, "preserve_insertion_order": keep_order}) as con:
        parsed = parse_log_files(
            con, [path], IMPRESSIONS, WINDOW, pseudonymiser=pseudonymiser_for(CONTRACT, None)
        )
    valid = parsed.valid.column("line_number").to_pylist()
    assert valid == [k for k in range(1, n + 1) if k % 7]
    assert parsed.valid.column("impression_id").to_pylist() == [f"i-{k}" for k in valid]
    assert parsed.quarantine.column("line_number").to_pylist() == list(range(7, n + 1, 7))


def test_clicks_parse(tmp_path: Path) -> None:
    f = write_lines(
        tmp_path / "c.jsonl.gz",
        [
            json.dumps({"click_id": "k1", "impression_id": "i-1", "ts": "2026-10-01T08:16:00Z"}),
            json.dumps({"click_id": "k2", "impression_id": None, "ts": "2026-10-01T08:16:00Z"}),
            json.dumps({"click_id": "k3", "impression_id": "i-1", "ts": "2026-10-02T00:00:01Z"}),
        ],
    )
    parsed = parse([f], CONTRACT.log("clicks"))
    assert parsed.valid.column("click_id").to_pylist() == ["k1"]
    assert parsed.valid.column_names == list(CONTRACT.log("clicks").typed_columns)
    assert parsed.quarantined_by_reason == {"null:impression_id": 1, "outside_partition:ts": 1}


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


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.lists(st.lists(line_strategy, max_size=20), min_size=1, max_size=3),
    chunk_bytes=st.integers(1, 300),
)
def test_accounting_identity_on_dirty_logs(tmp_path: Path, files: list[list[str]], chunk_bytes: int) -> None:
    """Whatever the dirt, lines read = valid + quarantined, and each line is in exactly one;
    reading in small chunks (lines cut anywhere) gives exactly what one chunk per file gives."""
    paths = []
    for i, lines in enumerate(files):
        path = tmp_path / f"part-{i}-{abs(hash(tuple(lines)))}.jsonl.gz"
        paths.append(write_lines(path, lines) if lines else path.write_bytes(b"") or path)
    parsed = parse(paths)
    assert parsed.lines_read == sum(len(lines) for lines in files)
    assert parsed.valid.num_rows + parsed.quarantine.num_rows == parsed.lines_read
    assert_every_line_once(
        parsed, [(str(p), n) for p, lines in zip(paths, files, strict=True) for n in range(1, len(lines) + 1)]
    )
    chunked = parse(paths, chunk_bytes=chunk_bytes)
    assert chunked.lines_read == parsed.lines_read
    assert chunked.valid.equals(parsed.valid)
    assert chunked.quarantine.equals(parsed.quarantine)


# --- CSV ------------------------------------------------------------------------------------------

#: the header in another order than the contract, with a column the contract does not know
HEADER = [
    "ad_id",
    "impression_id",
    "ts",
    "request_id",
    "user_id",
    "position",
    "bid_cpc",
    "campaign_id",
    "advertiser_id",
    "site_id",
    "site_category",
    "os",
    "extra",
]


def csv_line(**changes: str) -> str:
    values = {c: str(GOOD.get(c, "x")) for c in HEADER} | changes
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow([values[c] for c in HEADER])
    return out.getvalue()


#: (line, expected reason or None when valid), after the header line
CSV_CASES: list[tuple[str, str | None]] = [
    (csv_line(), None),
    (csv_line(site_category="news, local", impression_id="i-quoted"), None),  # a quoted comma
    (csv_line(os=""), None),  # an empty optional field is null
    ("", "empty_line"),
    (csv_line() + ",one too many", "bad_row:field_count"),
    (",".join(HEADER[:-2]), "bad_row:field_count"),  # one too few
    (csv_line(user_id=""), "null:user_id"),
    (csv_line(position="first"), "bad_type:position"),
    (csv_line(position="1.5"), "bad_type:position"),  # never rounded to a slot
    (csv_line(position="0x1"), "bad_type:position"),
    (csv_line(bid_cpc="0.4USD"), "bad_type:bid_cpc"),
    (csv_line(ts="yesterday"), "bad_type:ts"),
    (csv_line(position="3"), "not_allowed:position"),
    (csv_line(bid_cpc="45"), "out_of_range:bid_cpc"),
    (csv_line(ts="2026-10-02T00:00:00Z"), "outside_partition:ts"),
    # what Python's csv module refuses is quarantined, not a crash of the day
    (csv_line().replace(",news,", ",ne\rws,"), "bad_row:csv_syntax"),
    ("   ", "empty_line"),
]


@pytest.mark.parametrize(("gz", "newline"), [(False, "\n"), (True, "\r\n")], ids=["plain", "gzip-crlf"])
def test_csv_lines_are_typed_or_quarantined_line_by_line(tmp_path: Path, gz: bool, newline: str) -> None:
    lines = [",".join(HEADER), *(line for line, _ in CSV_CASES)]
    f = write_lines(tmp_path / ("i.csv.gz" if gz else "i.csv"), lines, gz=gz, newline=newline)
    parsed = parse([f])
    # the header is line 1: read, but neither valid nor quarantined
    assert parsed.lines_read == len(lines) == parsed.valid.num_rows + parsed.quarantine.num_rows + 1
    expected = {i: reason for i, (_, reason) in enumerate(CSV_CASES, start=2) if reason}
    assert {r["line_number"]: r["reason"] for r in parsed.quarantine.to_pylist()} == expected
    assert parsed.valid.column("line_number").to_pylist() == [
        i for i, (_, reason) in enumerate(CSV_CASES, start=2) if reason is None
    ]
    assert_every_line_once(parsed, [(str(f), n) for n in range(2, len(lines) + 1)])
    rows = parsed.valid.to_pylist()
    assert rows[1]["site_category"] == "news, local" and rows[1]["impression_id"] == "i-quoted"
    assert rows[2]["os"] is None and rows[0]["os"] == "ios"
    assert rows[0]["position"] == 1 and rows[0]["bid_cpc"] == 0.42
    assert rows[0]["user_segment"] is None  # a contract field the header lacks: null (optional)
    raw = {r["line_number"]: r["raw_line"] for r in parsed.quarantine.to_pylist()}
    # verbatim, without the carriage return, the user id redacted (clickloop.privacy)
    assert raw[9] == CSV_CASES[7][0].replace(",u1,", f",{REDACTED},")
    assert raw[6] == WITHHELD  # a record that does not split: where its user id is is unknown
    assert (
        parsed.valid.schema == parse([write_lines(tmp_path / "j.jsonl", [variant()], gz=False)]).valid.schema
    )


def test_csv_read_in_small_chunks_gives_the_same_rows(tmp_path: Path) -> None:
    lines = [",".join(HEADER), *(line for line, _ in CSV_CASES)]
    f = write_lines(tmp_path / "i.csv.gz", lines, newline="\r\n")
    whole, chunked = parse([f]), parse([f], chunk_bytes=50)
    assert chunked.lines_read == whole.lines_read
    assert chunked.valid.equals(whole.valid) and chunked.quarantine.equals(whole.quarantine)


def test_csv_header_without_a_required_field_is_refused(tmp_path: Path) -> None:
    header = [c for c in HEADER if c != "user_id"]
    f = write_lines(tmp_path / "i.csv", [",".join(header)], gz=False)
    with pytest.raises(
        LogFileError, match=r"i\.csv: the CSV header lacks the contract's required field\(s\) user_id"
    ):
        parse([f])


def test_files_of_several_formats_make_one_day(tmp_path: Path) -> None:
    a = write_lines(tmp_path / "a.jsonl.gz", [variant(impression_id="j"), "{"])
    b = write_lines(tmp_path / "b.csv", [",".join(HEADER), csv_line(impression_id="c"), ""], gz=False)
    parsed = parse([a, b])
    assert parsed.lines_read == 5 and parsed.valid.column("impression_id").to_pylist() == ["j", "c"]
    assert parsed.quarantined_by_reason == {"empty_line": 1, "invalid_json": 1}


# --- Parquet --------------------------------------------------------------------------------------


def test_parquet_rows_are_typed_or_quarantined_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 6
    ts = [datetime(2026, 10, 1, 8, tzinfo=UTC)] * n
    ts[5] = datetime(2026, 10, 2, 0, tzinfo=UTC)  # outside the day
    table = pa.table(
        {
            "impression_id": ["p0", "p1", None, "p3", "p4", "p5"],
            "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
            "request_id": ["r"] * n,
            "user_id": ["u"] * n,
            "ad_id": ["a"] * n,
            "campaign_id": ["c"] * n,
            "advertiser_id": ["v"] * n,
            "site_id": ["s"] * n,
            "country": ["US", None, "US", "US", "US", "US"],
            "position": ["1", "2", "1", "first", "3", "1"],  # as text: judged by the cast
            "bid_cpc": [0.5, 1.5, 0.5, 0.5, 0.5, 0.5],
            "unknown": [1] * n,
        }
    )
    f = tmp_path / "part.parquet"
    pq.write_table(table, f, row_group_size=2)
    parsed = parse([f])
    assert parsed.lines_read == n == parsed.valid.num_rows + parsed.quarantine.num_rows
    assert [(r["line_number"], r["reason"]) for r in parsed.quarantine.to_pylist()] == [
        (3, "null:impression_id"),
        (4, "bad_type:position"),
        (5, "not_allowed:position"),
        (6, "outside_partition:ts"),
    ]
    valid = parsed.valid.to_pylist()
    assert [(r["impression_id"], r["line_number"], r["position"], r["country"]) for r in valid] == [
        ("p0", 1, 1, "US"),
        ("p1", 2, 2, None),
    ]
    assert valid[0]["ts"] == ts[0] and valid[0]["user_segment"] is None
    assert json.loads(parsed.quarantine.column("raw_line")[1].as_py())["position"] == "first"
    assert (
        parsed.valid.schema == parse([write_lines(tmp_path / "j.jsonl", [variant()], gz=False)]).valid.schema
    )
    # read in batches of 4 rows: the refused rows of the second batch keep their numbers and text
    monkeypatch.setattr(readers, "PARQUET_BATCH_ROWS", 4)
    batched = parse([f])
    assert batched.quarantine.equals(parsed.quarantine) and batched.valid.equals(parsed.valid)
    raw = batched.quarantine.column("raw_line").to_pylist()
    assert [r.split(",")[0] for r in raw[1:]] == [f'{{"impression_id": "p{i}"' for i in (3, 4, 5)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"impression_id,ts\n", r"bad\.parquet: not a readable Parquet file \(.*magic bytes"),
        (None, r"bad\.parquet: not a readable Parquet file \("),  # cut off: the footer is missing
    ],
    ids=["not_parquet", "truncated"],
)
def test_an_unreadable_parquet_log_is_refused_naming_the_file(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    f = tmp_path / "bad.parquet"
    if content is None:
        pq.write_table(pa.Table.from_pylist([json.loads(variant())] * 100), f)
        content = f.read_bytes()[:-100]
    f.write_bytes(content)
    with pytest.raises(LogFileError, match=message):
        parse([f])


def test_parquet_non_integral_slot_is_a_bad_type(tmp_path: Path) -> None:
    f = tmp_path / "floats.parquet"
    base = json.loads(variant())
    pq.write_table(pa.Table.from_pylist([base | {"position": p} for p in (1.0, 1.5, 2.0)]), f)
    parsed = parse([f])
    assert parsed.valid.column("position").to_pylist() == [1, 2]
    assert parsed.quarantined_by_reason == {"bad_type:position": 1}


def test_parquet_without_a_required_column_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "part.parquet"
    pq.write_table(pa.table({"impression_id": ["a"], "ts": ["2026-10-01T00:00:00Z"]}), f)
    with pytest.raises(
        LogFileError, match=r"part\.parquet: the Parquet file lacks the contract's required column"
    ):
        parse([f])


def test_no_files_give_empty_typed_tables() -> None:
    parsed = parse([])
    assert parsed.lines_read == 0 and parsed.valid.num_rows == 0 and parsed.quarantine.num_rows == 0
    assert parsed.valid.column_names == list(IMPRESSIONS.typed_columns)
    assert parsed.quarantined_by_reason == {}


#: a CSV field as writers quote it: plain, or quoted whole with doubled quotes (commas, spaces inside)
_FIELD_TEXT = st.text(alphabet=st.sampled_from(["a", "1", ",", " ", "\t", '"', "é", "\u00a0"]), max_size=6)
_WRITTEN_FIELD = st.one_of(
    _FIELD_TEXT.filter(lambda t: '"' not in t and "," not in t),
    _FIELD_TEXT.map(lambda t: '"' + t.replace('"', '""') + '"'),
)
#: lines of any characters (mostly malformed), and lines of 1 to 4 written fields (3 make a record)
_CSV_LINES = st.lists(
    st.one_of(
        st.text(
            alphabet=st.sampled_from(["a", "1", ",", " ", "\t", '"', "é", "\u00a0", "\r", "\x00"]),
            max_size=12,
        ),
        st.lists(_WRITTEN_FIELD, min_size=1, max_size=4).map(",".join),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(_CSV_LINES)
def test_csv_lines_split_by_arrow_give_what_pythons_csv_gives(texts: list[str]) -> None:
    header = ["a", "b", "c"]
    spec = LogSpec(
        kind="impressions",
        fields=tuple(Field(source=name, column=name, type="string", required=False) for name in header),
    )
    lines = pa.table(
        {
            "source_file": pa.array(["f.csv"] * len(texts)),
            "line_number": pa.array(range(1, len(texts) + 1), pa.int64()),
            "line": pa.array(texts, pa.large_string()),
        }
    )
    mixed = readers._csv_rows(lines, header, spec)  # Arrow where it can, Python's csv elsewhere
    text = lines.column("line").combine_chunks().cast(pa.string())
    nulls = pa.nulls(len(texts), pa.string())
    reasons, values = readers._csv_rows_by_python(
        text, pa.array([True] * len(texts)), header, [0, 1, 2], nulls, [nulls] * 3
    )
    assert mixed.column("pre_reason").to_pylist() == reasons.to_pylist()
    assert [mixed.column(f"s{i}").to_pylist() for i in (1, 2, 3)] == [v.to_pylist() for v in values]


#: a contract whose sources reach into nested objects (JSON Pointers)
NESTED = parse_contract(
    {
        "name": "nested",
        "impressions": {
            "fields": [
                {"source": "/imp/id", "column": "impression_id"},
                {"source": "ts", "column": "ts", "type": "timestamp"},
                {"source": "/ad/id", "column": "ad_id"},
                {"source": "/ad/price", "column": "bid_cpc", "type": "float", "range": [0.01, 5.0]},
                {"source": "/device/os", "column": "os", "required": False},
                {"source": "/user/id", "column": "user_id", "personal": True},
            ]
        },
        "label": {"source": "clicked"},
        "features": {"categorical": ["os"], "entities": [{"name": "ad", "columns": ["ad_id"]}]},
    }
)


def test_json_pointer_sources_reach_into_nested_objects(tmp_path: Path) -> None:
    contract = NESTED
    ts = "2026-10-01T08:00:00Z"

    def line(imp: object = ..., device: object = ..., price: object = 0.5) -> str:
        record = {"imp": {"id": "i1"} if imp is ... else imp, "ts": ts, "clicked": 0}
        record |= {"ad": {"id": "a1", "price": price}, "user": {"id": "carol-1234"}}
        if device is not ...:
            record["device"] = device
        return json.dumps(record)

    lines = [
        line(device={"os": "ios", "type": "phone"}),
        line(),  # an optional nested field that is absent
        line(imp="i3"),  # the id's parent is not an object: the id is missing
        line(price="cheap"),
        line(price=True),
    ]
    f = write_lines(tmp_path / "nested.jsonl", lines, gz=False)
    spec = contract.impressions
    parsed = parse([f], spec=spec, pseudonymiser=pseudonymiser_for(contract, "ab" * 32))
    valid = parsed.valid.to_pylist()
    assert [(r["impression_id"], r["ad_id"], r["bid_cpc"], r["os"]) for r in valid] == [
        ("i1", "a1", 0.5, "ios"),
        ("i1", "a1", 0.5, None),
    ]
    assert valid[0]["user_id"] == pseudonymiser_for(contract, "ab" * 32).value("carol-1234")
    quarantine = parsed.quarantine.to_pylist()
    assert [(r["line_number"], r["reason"]) for r in quarantine] == [
        (3, "null:impression_id"),
        (4, "bad_type:bid_cpc"),
        (5, "bad_type:bid_cpc"),
    ]
    assert all("carol-1234" not in r["raw_line"] and REDACTED in r["raw_line"] for r in quarantine)


def test_json_pointer_sources_reach_into_parquet_struct_columns(tmp_path: Path) -> None:
    ts = datetime(2026, 10, 1, 8, tzinfo=UTC)
    rows = [
        {"imp": {"id": "i1"}, "ts": ts, "ad": {"id": "a1", "price": 0.5}, "device": {"os": "ios"}},
        {"imp": {"id": "i2"}, "ts": ts, "ad": {"id": "a1", "price": 0.5}, "device": None},
        {"imp": None, "ts": ts, "ad": {"id": "a1", "price": 0.5}, "device": {"os": "ios"}},
        {"imp": {"id": "i4"}, "ts": ts, "ad": {"id": "a1", "price": 9.5}, "device": {"os": "ios"}},
    ]
    for row in rows:
        row |= {"user": {"id": "carol-1234"}, "clicked": 0}
    f = tmp_path / "nested.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    pseudonymiser = pseudonymiser_for(NESTED, "ab" * 32)
    parsed = parse([f], spec=NESTED.impressions, pseudonymiser=pseudonymiser)
    valid = parsed.valid.to_pylist()
    assert [(r["impression_id"], r["ad_id"], r["bid_cpc"], r["os"]) for r in valid] == [
        ("i1", "a1", 0.5, "ios"),
        ("i2", "a1", 0.5, None),
    ]
    assert {r["user_id"] for r in valid} == {pseudonymiser.value("carol-1234")}
    assert [(r["line_number"], r["reason"]) for r in parsed.quarantine.to_pylist()] == [
        (3, "null:impression_id"),
        (4, "out_of_range:bid_cpc"),
    ]
    # a file without the struct field a required source points to is refused by name
    pq.write_table(pa.Table.from_pylist([{**rows[0], "imp": {"key": "i1"}}]), f)
    with pytest.raises(LogFileError, match=r"lacks the contract's required column\(s\) \['/imp/id'\]"):
        parse([f], spec=NESTED.impressions, pseudonymiser=pseudonymiser)
