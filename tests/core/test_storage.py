"""The warehouse: the Parquet layout, atomic writes, DuckDB with its limits, and one_row."""

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clickloop.storage import (
    DuckDBSettings,
    Warehouse,
    atomic_copy_query_to_parquet,
    atomic_write,
    atomic_write_text,
    connect,
    one_row,
    parquet_list_sql,
    registered,
)


def test_layout_and_partition_keys(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    table = pa.table({"x": [1, 2]})
    assert wh.partition_keys("raw_clicks") == []
    for key in ("2026-10-03", "2026-10-01"):
        wh.write_partition("raw_clicks", key, table)
    wh.write_quarantine("raw_clicks", "2026-10-02", table)
    (tmp_path / "raw_clicks" / "date=2026-10-09").mkdir()  # an empty folder is no partition
    (tmp_path / "raw_clicks" / "notes").mkdir()
    assert (
        wh.partition_path("raw_clicks", "2026-10-01")
        == tmp_path / "raw_clicks/date=2026-10-01/part-0.parquet"
    )
    assert wh.quarantine_path("raw_clicks", "2026-10-02").exists()
    assert wh.table_path("training_set") == tmp_path / "training_set/part-0.parquet"
    assert wh.partition_keys("raw_clicks") == ["2026-10-01", "2026-10-03"]
    assert wh.has_partition("raw_clicks", "2026-10-03") and not wh.has_partition("raw_clicks", "2026-10-02")
    assert wh.existing_partition_paths("raw_clicks", ["2026-09-30", "2026-10-01"]) == [
        wh.partition_path("raw_clicks", "2026-10-01")
    ]
    assert wh.read_partition("raw_clicks", "2026-10-01").equals(table)
    with pytest.raises(FileNotFoundError, match=r"raw_clicks: partition file\(s\) missing.*date=2026-10-02"):
        wh.require_partition_paths("raw_clicks", ["2026-10-01", "2026-10-02"])


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.txt"
    atomic_write_text(target, "old")

    def fail_halfway(handle) -> None:
        handle.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail_halfway)
    assert target.read_text() == "old"
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    with connect() as con, pytest.raises(Exception, match="nope"):
        atomic_copy_query_to_parquet(con, "SELECT * FROM nope", tmp_path / "deep" / "t.parquet")
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]  # no temporary file left
    with connect() as con:
        atomic_copy_query_to_parquet(con, "SELECT 1 AS x", tmp_path / "deep" / "t.parquet")
    assert pq.read_table(tmp_path / "deep" / "t.parquet").column("x").to_pylist() == [1]


def test_duckdb_limits_utc_and_one_row(tmp_path: Path) -> None:
    wh = Warehouse(
        tmp_path, DuckDBSettings(threads=1, memory_limit="512MB", temp_directory=str(tmp_path / "spill"))
    )
    with wh.duckdb() as con:
        assert one_row(con, "SELECT current_setting('threads'), current_setting('TimeZone')") == (1, "UTC")
        assert one_row(con, "SELECT current_setting('memory_limit')") == ("488.2 MiB",)  # 512 MB
        with pytest.raises(ValueError, match="expected one row, got 2"):
            one_row(con, "SELECT * FROM range(2)")
        with pytest.raises(ValueError, match="expected one row, got 0"):
            one_row(con, "SELECT * FROM range(0)")
    assert (tmp_path / "spill").is_dir()
    with pytest.raises(ValueError, match="at least one file"):
        parquet_list_sql([])


def test_a_registered_table_is_a_view_only_inside_its_block(tmp_path: Path) -> None:
    def views(con: duckdb.DuckDBPyConnection) -> set[str]:
        return {
            name for (name,) in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
        }

    with Warehouse(tmp_path).duckdb() as con:
        table = pa.table({"x": [1, 2, 3]})
        with registered(con, table, "numbers") as view:
            assert view.startswith("numbers_") and views(con) == {view}
            assert one_row(con, f"SELECT sum(x) FROM {view}") == (6,)
        assert views(con) == set()
        with pytest.raises(duckdb.BinderException), registered(con, table, "numbers") as view:
            con.sql(f"SELECT no_such_column FROM {view}")
        assert views(con) == set()


def test_partition_folders_are_not_read_as_a_column(tmp_path: Path) -> None:
    """DuckDB reads ``date=…`` folders as a hive column unless told not to: a partition read back
    has exactly the columns written (and a logged column named ``date`` keeps its own values)."""
    wh = Warehouse(tmp_path)
    written = pa.table({"x": [1, 2], "date": ["logged", "values"]})
    paths = [wh.write_partition("t", key, written) for key in ("2026-10-01", "2026-10-02")]
    with connect() as con:
        table = con.sql(f"SELECT * FROM {parquet_list_sql(paths)}").to_arrow_table()
    assert table.column_names == ["x", "date"]
    assert table.column("date").to_pylist() == ["logged", "values"] * 2
