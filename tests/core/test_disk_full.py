"""A full disk during a partition write, on a real size-limited filesystem (a 1 MiB tmpfs the test
mounts; skipped, saying why, where the machine does not allow mounting): the write fails with a
clear error naming the partition's path, the previous version of the partition is intact, and no
temporary file is left behind. Every writer is tried: Arrow's, DuckDB's, and plain bytes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clickloop.storage import (
    DiskFullError,
    Warehouse,
    atomic_copy_query_to_parquet,
    atomic_path,
    atomic_write_bytes,
)

SIZE = "1m"
DAY = "2026-10-01"


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted at a folder of ``tmp_path``; unmounted afterwards."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a size-limited tmpfs here ({done.stderr.strip() or done.returncode}): needs root"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def incompressible(rows: int) -> pa.Table:
    """Random bytes as text: compression gains nothing, so the file is as big as the data."""
    return pa.table({"payload": [os.urandom(512).hex() for _ in range(rows)]})


def test_a_full_disk_fails_the_write_clearly_and_keeps_the_previous_partition(small_disk: Path) -> None:
    store = Warehouse(small_disk)
    previous = incompressible(100)  # about 100 KiB
    path = store.write_partition("raw_impressions", DAY, previous)

    with pytest.raises(DiskFullError) as caught:  # Arrow's writer: about 2 MiB into 1 MiB
        store.write_partition("raw_impressions", DAY, incompressible(2_000))
    assert str(path) in str(caught.value) and "no space left" in str(caught.value)
    assert caught.value.filename == str(path)
    assert pq.read_table(path).equals(previous)

    with store.duckdb() as con, pytest.raises(DiskFullError) as by_duckdb:
        atomic_copy_query_to_parquet(
            con, "SELECT md5(i::VARCHAR) || md5((i * 7)::VARCHAR) AS h FROM range(200000) t(i)", path
        )
    assert str(path) in str(by_duckdb.value)
    assert pq.read_table(path).equals(previous)

    manifest = small_disk / "models" / "manifest.json"
    atomic_write_bytes(manifest, b'{"version": "1"}')
    with pytest.raises(DiskFullError, match="manifest.json"):
        atomic_write_bytes(manifest, os.urandom(2 * 1024 * 1024))
    assert manifest.read_bytes() == b'{"version": "1"}'

    leftovers = [p.name for p in small_disk.rglob(".*.tmp")]
    assert leftovers == []  # the abandoned temporary files were removed: the space is free again
    store.write_partition("raw_impressions", DAY, incompressible(10))  # and the disk works again


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """A writer killed before its rename leaves its temporary file; the next write of the same
    target removes it (its process is gone), never a live writer's."""
    store = Warehouse(tmp_path)
    path = store.write_partition("raw_clicks", DAY, incompressible(3))
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that no longer runs
    orphan = atomic_path(path).with_name(atomic_path(path).name.replace(f".{os.getpid()}.", f".{dead.pid}."))
    orphan.write_bytes(b"half a parquet file")
    live = atomic_path(path)  # this process's: alive
    live.write_bytes(b"being written")
    store.write_partition("raw_clicks", DAY, incompressible(3))
    assert not orphan.exists() and live.exists()
