"""The warehouse: Parquet files per partition under one data directory, DuckDB for SQL over them.

Layout under ``data_dir``::

    <asset>/date=YYYY-MM-DD/part-0.parquet           one file per daily partition
    quarantine/<asset>/date=YYYY-MM-DD/part-0.parquet rows the asset refused, with the reason

Every write goes to a temporary file in the target folder and is renamed into place, so a killed run
leaves either the old partition or the new one, never half a file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableResource

PARQUET_NAME = "part-0.parquet"


def atomic_path(target: Path) -> Path:
    """A temporary sibling of ``target``: same folder, so the final rename is atomic."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


def atomic_write_bytes(target: Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically (temp file, fsync, rename)."""
    tmp = atomic_path(target)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def atomic_write_parquet(target: Path, table: pa.Table) -> Path:
    """Write an Arrow table as one Parquet file, atomically."""
    tmp = atomic_path(target)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def atomic_copy_query_to_parquet(con: duckdb.DuckDBPyConnection, sql: str, target: Path) -> Path:
    """Let DuckDB write the result of ``sql`` straight to Parquet, then rename it into place."""
    tmp = atomic_path(target)
    try:
        con.execute(f"COPY ({sql}) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


class Warehouse(ConfigurableResource):
    """Parquet + DuckDB storage for every asset of the loop, rooted at ``data_dir``."""

    data_dir: str
    duckdb_threads: int = 2
    duckdb_memory_limit: str = "4GB"

    @property
    def root(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def partition_dir(self, asset: str, partition_key: str) -> Path:
        return self.root / asset / f"date={partition_key}"

    def partition_path(self, asset: str, partition_key: str) -> Path:
        return self.partition_dir(asset, partition_key) / PARQUET_NAME

    def quarantine_path(self, asset: str, partition_key: str) -> Path:
        return self.partition_path(f"quarantine/{asset}", partition_key)

    def has_partition(self, asset: str, partition_key: str) -> bool:
        return self.partition_path(asset, partition_key).exists()

    def existing_partition_paths(self, asset: str, partition_keys: Sequence[str]) -> list[Path]:
        """Paths of the given partitions that exist (a window may reach before the first day)."""
        return [p for k in partition_keys if (p := self.partition_path(asset, k)).exists()]

    def require_partition_paths(self, asset: str, partition_keys: Sequence[str]) -> list[Path]:
        """Paths of the given partitions; a clear error names any that were never materialized."""
        paths = [self.partition_path(asset, k) for k in partition_keys]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{asset}: partition file(s) missing, materialize them first: {', '.join(missing)}"
            )
        return paths

    def write_partition(self, asset: str, partition_key: str, table: pa.Table) -> Path:
        return atomic_write_parquet(self.partition_path(asset, partition_key), table)

    def write_quarantine(self, asset: str, partition_key: str, table: pa.Table) -> Path:
        return atomic_write_parquet(self.quarantine_path(asset, partition_key), table)

    def read_partition(self, asset: str, partition_key: str) -> pa.Table:
        return pq.read_table(self.require_partition_paths(asset, [partition_key])[0])

    @contextmanager
    def duckdb(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory DuckDB connection with the warehouse's limits; Parquet is the storage."""
        con = duckdb.connect(
            config={"threads": self.duckdb_threads, "memory_limit": self.duckdb_memory_limit}
        )
        try:
            con.execute("SET TimeZone = 'UTC'")
            yield con
        finally:
            con.close()


def parquet_list_sql(paths: Sequence[Path]) -> str:
    """A DuckDB ``read_parquet`` call over the given files (never an empty list)."""
    if not paths:
        raise ValueError("parquet_list_sql needs at least one file")
    quoted = ", ".join(f"'{p}'" for p in paths)
    return f"read_parquet([{quoted}], union_by_name = true)"
