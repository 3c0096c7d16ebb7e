"""Parquet partitions under one data directory, DuckDB over them, and atomic writes.

Layout under the data directory::

    <asset>/date=YYYY-MM-DD/part-0.parquet            one file per daily partition
    quarantine/<asset>/date=YYYY-MM-DD/part-0.parquet rows the asset refused, with the reason
    <asset>/part-0.parquet                            a non-partitioned table (training_set, ...)

Every write goes to a temporary file in the target folder and is renamed into place, so a killed
run leaves either the old file or the new one, never half a file, and a reader never sees a partial
file. A write that runs out of disk space raises :class:`DiskFullError` naming the target; the
previous version of the file stays in place.

The root may also be an object-storage prefix (a URL such as ``s3://bucket/clickloop``, see
:func:`storage_path`; credentials and endpoint from the environment: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``): the paths are then fsspec paths (``UPath``),
DuckDB reads and writes through the same fsspec filesystem, and a write goes to a local temporary
file uploaded in one piece once complete (:func:`publish`): an object store shows an object only
once its upload is complete, so a reader sees the old object or the new one, never part of one.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from clickloop.faults import fault_point

PARQUET_NAME = "part-0.parquet"
_PARTITION_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


#: This machine, in temporary file names (a folder may be shared by several machines).
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"

#: A local path, or a path on object storage (:func:`storage_path`).
StoragePath = Path | UPath


def storage_path(location: str | os.PathLike[str]) -> StoragePath:
    """A local folder, or an object-storage prefix for a URL with a scheme (``s3://bucket/x``)."""
    text = str(location)
    if "://" in text and not text.startswith("file://"):
        return UPath(text)
    return Path(text).expanduser().resolve()


def is_remote(path: StoragePath) -> bool:
    """Whether ``path`` is on object storage (not a local file)."""
    return isinstance(path, UPath) and path.protocol not in ("", "file", "local")


def atomic_path(target: StoragePath) -> Path:
    """A temporary sibling of ``target``: same folder, so the final rename is atomic. Its name
    says which machine and process writes it (``.<name>.<host>.<pid>.<uuid>.tmp``). For a target on
    object storage: a local temporary file, uploaded by :func:`commit`."""
    if is_remote(target):
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp")
        os.close(handle)
        return Path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_orphaned_temps(target: Path) -> int:
    """Remove temporary files of ``target`` left by writers of this machine that died (killed
    before they could clean up); a live writer's file is left alone. Returns how many."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.{re.escape(_HOST)}\.(\d+)\.[0-9a-f]{{32}}\.tmp$")
    removed = 0
    for path in target.parent.iterdir():
        match = pattern.match(path.name)
        if match and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class DiskFullError(OSError):
    """The disk filled up while a file was written; the previous version of the file is intact."""

    def __init__(self, target: StoragePath, cause: BaseException) -> None:
        super().__init__(
            errno.ENOSPC,
            f"no space left on device while writing {target}: the write was abandoned and the "
            f"previous version of {target.name} (if any) is intact ({type(cause).__name__}: "
            f"{str(cause).strip().splitlines()[0] if str(cause).strip() else 'ENOSPC'})",
            str(target),
        )
        self.target = target


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error from the OS, Arrow or DuckDB says the disk is full."""
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)


def commit(tmp: Path, target: StoragePath) -> StoragePath:
    """Put a complete temporary file in place, the one moment a reader's view changes: a rename on
    a local disk, one upload of the whole object to object storage (visible only once complete)."""
    fault_point("write.before_rename")
    if is_remote(target):
        target.fs.put_file(str(tmp), str(target))
    else:
        os.replace(tmp, target)
    fault_point("write.after_rename")
    if not is_remote(target):
        remove_orphaned_temps(target)
    return target


@contextmanager
def writing(target: StoragePath) -> Iterator[Path]:
    """A temporary sibling of ``target`` to write; removed afterwards (renamed or not). A full disk
    becomes a :class:`DiskFullError` naming ``target``."""
    tmp = atomic_path(target)
    try:
        yield tmp
    except Exception as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(target, exc) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, target: StoragePath) -> None:
    """:func:`commit` without its return value (the name object-storage callers use)."""
    commit(tmp, target)


def atomic_write(target: StoragePath, write: Callable[[BinaryIO], None]) -> StoragePath:
    """Call ``write`` on a temporary file next to ``target``, fsync it, then rename it into place."""
    with writing(target) as tmp:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        return commit(tmp, target)


def atomic_write_bytes(target: StoragePath, data: bytes) -> StoragePath:
    """Write ``data`` to ``target`` atomically."""
    return atomic_write(target, lambda handle: handle.write(data))


def atomic_write_text(target: StoragePath, text: str) -> StoragePath:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_parquet(target: StoragePath, table: pa.Table) -> StoragePath:
    """Write an Arrow table as one Parquet file, atomically."""
    with writing(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")
        return commit(tmp, target)


def atomic_copy_query_to_parquet(
    con: duckdb.DuckDBPyConnection, sql: str, target: StoragePath
) -> StoragePath:
    """Let DuckDB write the result of ``sql`` straight to Parquet, then rename it into place."""
    with writing(target) as tmp:
        con.execute(f"COPY ({sql}) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")
        return commit(tmp, target)


def parquet_sql(path: StoragePath) -> str:
    """A DuckDB ``read_parquet`` of one file; its ``date=`` folder is not read as a column (DuckDB's
    hive partitioning is off, so a logged field named ``date`` is never shadowed)."""
    return f"read_parquet('{path}', hive_partitioning = false)"


def parquet_list_sql(paths: Sequence[StoragePath]) -> str:
    """A DuckDB ``read_parquet`` call over the given files (never an empty list). The ``date=``
    folders of the partitions are not read as a column (DuckDB's hive partitioning is off)."""
    if not paths:
        raise ValueError("parquet_list_sql needs at least one file")
    quoted = ", ".join(f"'{p}'" for p in paths)
    return f"read_parquet([{quoted}], union_by_name = true, hive_partitioning = false)"


def seeded_sample_sql(key: str, n: int, seed: int) -> str:
    """The ``ORDER BY … LIMIT`` of a deterministic uniform sample of at most ``n`` rows: those with
    the smallest seeded hash of ``key`` (the same rows on every run, whatever the file order or
    thread count; DuckDB keeps only the top ``n`` while it reads, so memory does not grow with the
    rows)."""
    if n < 1:
        raise ValueError(f"sample size must be >= 1, not {n}")
    return f"ORDER BY hash({key}, {int(seed)}), {key} LIMIT {int(n)}"


@dataclass(frozen=True)
class DuckDBSettings:
    """How much of the machine DuckDB may use; it spills to ``temp_directory`` beyond the limit."""

    threads: int = 2
    memory_limit: str = "4GB"
    temp_directory: str | None = None


def connect(settings: DuckDBSettings = DuckDBSettings()) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection (UTC session) with the given limits; Parquet is the storage."""
    # insertion order kept (DuckDB's default, stated): ingest relies on it to keep a chunk's lines in order
    config: dict[str, object] = {
        "threads": settings.threads,
        "memory_limit": settings.memory_limit,
        "preserve_insertion_order": True,
    }
    if settings.temp_directory:
        Path(settings.temp_directory).mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = settings.temp_directory
    con = duckdb.connect(config=config)
    con.execute("SET TimeZone = 'UTC'")
    return con


@dataclass(frozen=True)
class Warehouse:
    """Parquet + DuckDB storage for every table of the loop, rooted at ``root``."""

    #: a local folder, or an object-storage prefix (:func:`storage_path`)
    root: StoragePath
    duckdb_settings: DuckDBSettings = DuckDBSettings()

    def partition_dir(self, table: str, partition_key: str) -> StoragePath:
        return self.root / table / f"date={partition_key}"

    def partition_path(self, table: str, partition_key: str) -> StoragePath:
        return self.partition_dir(table, partition_key) / PARQUET_NAME

    def quarantine_path(self, table: str, partition_key: str) -> StoragePath:
        return self.partition_path(f"quarantine/{table}", partition_key)

    def table_path(self, table: str) -> StoragePath:
        """The one Parquet file of a non-partitioned table."""
        return self.root / table / PARQUET_NAME

    def has_partition(self, table: str, partition_key: str) -> bool:
        return self.partition_path(table, partition_key).exists()

    def partition_keys(self, table: str) -> list[str]:
        """The partitions of ``table`` that exist, in order."""
        folder = self.root / table
        if not folder.is_dir():
            return []
        keys = []
        for child in folder.iterdir():
            match = _PARTITION_DIR.match(child.name)
            if match and (child / PARQUET_NAME).exists():
                keys.append(match.group(1))
        return sorted(keys)

    def existing_partition_paths(self, table: str, partition_keys: Sequence[str]) -> list[StoragePath]:
        """Paths of the given partitions that exist (a window may reach before the first day)."""
        return [p for k in partition_keys if (p := self.partition_path(table, k)).exists()]

    def require_partition_paths(self, table: str, partition_keys: Sequence[str]) -> list[StoragePath]:
        """Paths of the given partitions; a clear error names any that were never materialized."""
        paths = [self.partition_path(table, k) for k in partition_keys]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{table}: partition file(s) missing, materialize them first: {', '.join(missing)}"
            )
        return paths

    def write_partition(self, table: str, partition_key: str, data: pa.Table) -> StoragePath:
        return atomic_write_parquet(self.partition_path(table, partition_key), data)

    def write_quarantine(self, table: str, partition_key: str, data: pa.Table) -> StoragePath:
        return atomic_write_parquet(self.quarantine_path(table, partition_key), data)

    def read_partition(self, table: str, partition_key: str) -> pa.Table:
        return read_parquet(self.require_partition_paths(table, [partition_key])[0])

    @contextmanager
    def duckdb(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A DuckDB connection with the warehouse's limits, closed afterwards."""
        con = connect(self.duckdb_settings)
        if is_remote(self.root):  # DuckDB reads and writes the URLs through fsspec
            con.register_filesystem(self.root.fs)
        try:
            yield con
        finally:
            con.close()


def read_parquet(path: StoragePath, **options: object) -> pa.Table:
    """A Parquet file (local or on object storage) as an Arrow table."""
    if is_remote(path):
        return pq.read_table(path.path, filesystem=path.fs, **options)
    return pq.read_table(path, **options)


def one_row(con: duckdb.DuckDBPyConnection, sql: str) -> tuple:
    """The one row a query returns (its result is fully consumed, so the connection is free)."""
    rows = con.execute(sql).fetchall()
    if len(rows) != 1:
        raise ValueError(f"expected one row, got {len(rows)} from: {sql.strip()[:200]}")
    return rows[0]


@contextmanager
def registered(con: duckdb.DuckDBPyConnection, table: pa.Table, prefix: str) -> Iterator[str]:
    """``table`` as a view of ``con`` for the ``with`` block (a name unique to the table, starting
    with ``prefix``); unregistered afterwards, also when a query fails."""
    view = f"{prefix}_{id(table):x}"
    con.register(view, table)
    try:
        yield view
    finally:
        con.unregister(view)
