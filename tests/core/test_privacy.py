"""Personal ids: pseudonymised at ingest with HMAC-SHA256 (DuckDB's equals Python's hmac), redacted
from quarantined lines; the key decides the pseudonym; no key, no raw ids stored."""

import csv
import hashlib
import hmac
import io
import json
from dataclasses import replace
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clickloop.contract_file import load_contract
from clickloop.ingest import parse_log_files
from clickloop.privacy import (
    REDACTED,
    SIMULATOR_KEY,
    WITHHELD,
    PrivacyError,
    Pseudonymiser,
    pseudonymiser_for,
)
from clickloop.quarantine import day_window, ingest_day
from clickloop.storage import Warehouse

CONTRACT = load_contract()
IMPRESSIONS = CONTRACT.impressions
DAY = date(2026, 10, 1)
KEY = Pseudonymiser(b"a-secret-key", ("user_id",))
#: distinctive raw ids, so that finding one anywhere means it leaked
ALICE, BOB, CAROL = "alice-4711", "bob-0815", "carol-1234"


def impression(n: int, user: object, **changes: object) -> str:
    record = {
        "impression_id": f"i-{n}",
        "ts": "2026-10-01T08:15:02Z",
        "request_id": f"r-{n}",
        "user_id": user,
        "ad_id": "a1",
        "campaign_id": "c1",
        "advertiser_id": "adv1",
        "site_id": "s1",
        "position": 1,
        "bid_cpc": 0.42,
    }
    record.update(changes)
    return json.dumps(record)


def lines() -> list[str]:
    """Valid lines of three users, and refused lines that carry their ids in several ways."""
    return [
        impression(1, ALICE),
        impression(2, BOB),
        impression(3, ALICE),
        impression(4, CAROL, position="first"),  # bad_type: the id parsed
        impression(5, BOB, ts="2026-10-02T01:00:00Z"),  # outside the day
        impression(6, CAROL)[:60],  # truncated: invalid JSON, the id after its key
        json.dumps([ALICE, "a1"]),  # JSON, not an object
        impression(7, 12345),  # a number for an id is taken as its text
    ]


def strings(table: pa.Table) -> list[str]:
    """Every string cell of a table."""
    return [v for c in table.columns if pa.types.is_string(c.type) for v in c.to_pylist() if v is not None]


def test_duckdb_hmac_equals_pythons(tmp_path: Path) -> None:
    ids = ["u000001", "", "ünïcødé-ид", "x" * 300]
    long_key = Pseudonymiser(b"k" * 100)  # a key longer than SHA-256's block is hashed first
    with duckdb.connect() as con:
        for p in (KEY, long_key):
            p.bind(con)
            query = f"SELECT {p.sql('v')} FROM (SELECT unnest(?) AS v)"
            got = con.sql(query, params=[ids]).fetchall()
            expected = [hmac.new(p.key, i.encode(), hashlib.sha256).hexdigest() for i in ids]
            assert [g for (g,) in got] == expected == [p.value(i) for i in ids]
            # the key is bound as a variable, never written into the query's text
            assert p.key.hex() not in query and p._pads()[0] not in query
        assert con.sql(f"SELECT {KEY.sql('NULL')}").fetchall() == [(None,)]


def test_a_column_of_ids_is_hashed_by_duckdb_as_python_hashes_each_id() -> None:
    ids = pa.chunked_array([[ALICE, BOB, None], [ALICE, "", CAROL, BOB]])
    with duckdb.connect() as con:
        got = KEY.column(con, ids)
        assert got.to_pylist() == [None if i is None else KEY.value(i) for i in ids.to_pylist()]
        assert got.type == pa.string() and len(got) == len(ids)
        assert KEY.column(con, pa.array([], pa.string())).to_pylist() == []


def test_same_key_same_pseudonym_other_key_other(tmp_path: Path) -> None:
    landed = tmp_path / "day.jsonl"
    landed.write_text("\n".join(lines()) + "\n")
    other = Pseudonymiser(b"another-key", ("user_id",))
    with duckdb.connect() as con:
        first, again, moved = (
            parse_log_files(con, [landed], IMPRESSIONS, day_window(DAY), pseudonymiser=p).valid
            for p in (KEY, KEY, other)
        )
    users = first.column("user_id").to_pylist()
    raw = (ALICE, BOB, ALICE, "12345")
    assert users == again.column("user_id").to_pylist() == [KEY.value(u) for u in raw]
    assert users[0] == users[2] != users[1]  # one user, one pseudonym: the per-user features join
    assert moved.column("user_id").to_pylist() == [other.value(u) for u in raw]
    assert set(users).isdisjoint(moved.column("user_id").to_pylist())


def test_raw_ids_are_in_neither_the_warehouse_nor_the_quarantine(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "data")
    landed = tmp_path / "day.jsonl"
    landed.write_text("\n".join(lines()) + "\n")
    done = ingest_day(wh, [landed], IMPRESSIONS, "raw_impressions", DAY, KEY)
    typed, quarantine = pq.read_table(done.path), pq.read_table(done.quarantine_path)
    assert typed.num_rows == 4 and quarantine.num_rows == 4
    for text in strings(typed) + strings(quarantine) + [json.dumps(done.parsed.quarantine.to_pylist())]:
        assert not any(raw in text for raw in (ALICE, BOB, CAROL, "12345")), text
    rows = {r["line_number"]: r for r in quarantine.to_pylist()}
    assert {n: r["reason"] for n, r in rows.items()} == {
        4: "bad_type:position",
        5: "outside_partition:ts",
        6: "invalid_json",
        7: "not_an_object",
    }
    assert json.loads(rows[4]["raw_line"]) == json.loads(impression(4, REDACTED, position="first"))
    assert rows[6]["raw_line"] == impression(6, REDACTED)[: 60 - len(CAROL) + len(REDACTED)]
    assert rows[7]["raw_line"] == WITHHELD


def test_a_csv_line_that_does_not_split_is_withheld(tmp_path: Path) -> None:
    header = ["impression_id", "ts", "request_id", "user_id", "ad_id", "campaign_id", "advertiser_id"]
    header += ["site_id", "position", "bid_cpc"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerow(["i1", "2026-10-01T01:00:00Z", "r1", ALICE, "a1", "c1", "v1", "s1", "7", "0.5"])
    writer.writerow(["i2", "2026-10-01T01:00:00Z", "r2", BOB, "a1", "c1", "v1", "s1", "1"])
    # a carriage return in an unquoted field: Python's csv refuses the record
    out.write(f"i3,2026-10-01T01:00:00Z,r3,{CAROL},a\r1,c1,v1,s1,1,0.5\n")
    landed = tmp_path / "day.csv"
    landed.write_bytes(out.getvalue().encode())
    with duckdb.connect() as con:
        parsed = parse_log_files(con, [landed], IMPRESSIONS, day_window(DAY), pseudonymiser=KEY)
    assert parsed.quarantine.column("reason").to_pylist() == [
        "not_allowed:position",
        "bad_row:field_count",
        "bad_row:csv_syntax",
    ]
    assert parsed.quarantine.column("raw_line").to_pylist() == [
        f"i1,2026-10-01T01:00:00Z,r1,{REDACTED},a1,c1,v1,s1,7,0.5",
        WITHHELD,
        WITHHELD,
    ]


def test_personal_fields_are_never_stored_raw_without_a_pseudonymiser(tmp_path: Path) -> None:
    landed = tmp_path / "day.jsonl"
    landed.write_text(impression(1, ALICE) + "\n")
    with duckdb.connect() as con, pytest.raises(PrivacyError, match="user_id"):
        parse_log_files(con, [landed], IMPRESSIONS, day_window(DAY))


def test_without_a_key_only_the_simulators_synthetic_ids_get_the_public_key() -> None:
    simulator = pseudonymiser_for(CONTRACT, "")
    assert simulator is not None and simulator.key == SIMULATOR_KEY.encode()
    assert pseudonymiser_for(CONTRACT, "s3cret").key == b"s3cret"  # type: ignore[union-attr]
    real = replace(CONTRACT, name="my_ad_server")
    with pytest.raises(PrivacyError, match="CLICKLOOP_PSEUDONYM_KEY"):
        pseudonymiser_for(real, None)
    no_personal = replace(
        real,
        impressions=replace(
            IMPRESSIONS, fields=tuple(replace(f, personal=False) for f in IMPRESSIONS.fields)
        ),
    )
    assert pseudonymiser_for(no_personal, None) is None
    assert "s3cret" not in repr(pseudonymiser_for(CONTRACT, "s3cret"))


def test_serving_reaches_the_stored_pseudonym_from_the_raw_id() -> None:
    candidates = pd.DataFrame({"user_id": [ALICE, None, ALICE, BOB], "ad_id": ["a1", "a2", "a3", "a4"]})
    out = KEY.frame(candidates)

    def ids(column: pd.Series) -> list[str | None]:
        return [None if pd.isna(v) else v for v in column]

    assert isinstance(out["user_id"].dtype, pd.CategoricalDtype)  # a lookup reads its codes
    assert ids(out["user_id"]) == [KEY.value(ALICE), None, KEY.value(ALICE), KEY.value(BOB)]
    # ids given as a categorical (the simulator's): the same pseudonyms, only the used ids hashed
    given = candidates.astype({"user_id": pd.CategoricalDtype([BOB, CAROL, ALICE])})
    assert ids(KEY.frame(given)["user_id"]) == ids(out["user_id"])
    assert set(KEY.frame(given)["user_id"].cat.categories) == {KEY.value(ALICE), KEY.value(BOB)}
    # ids of other types with the same text are one user, one pseudonym
    mixed = KEY.frame(pd.DataFrame({"user_id": [7, "7", None]}))["user_id"]
    assert ids(mixed) == [KEY.value("7"), KEY.value("7"), None]
    assert out["ad_id"].tolist() == candidates["ad_id"].tolist()
    assert candidates["user_id"].iloc[0] == ALICE  # the caller's frame is left alone
