"""Large days for the refresh benchmark, made by tiling a simulated day.

Simulating a 50M-impression day takes the simulator about half an hour per day on these cores, and
the refresh needs three such days. A large day is instead ``copies`` copies of a simulated
:data:`TILE_BASE`-impression day, each copy in its own file with its ids made unique by a copy
number after their prefix (``i-…`` → ``i17-…`` for impressions, ``r-`` requests, ``k-`` clicks):
the same users, ads, sites and fault lines as the base day, ``copies`` times the requests. The
files are what the simulator writes (gzip JSON lines in the landing folder's layout), so ingest and
its floor read them exactly as they read simulated days.

Only the standard library: the benchmark's parent process imports this module.
"""

from __future__ import annotations

import gzip
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

#: Impressions of the simulated day a larger day is tiled from.
TILE_BASE = 1_000_000
#: The id prefixes of the simulator's logs that a copy number makes unique.
ID_PREFIXES = (b'"i-', b'"r-', b'"k-')
#: gzip level of the tiled files: the simulator's files are compressed harder, but reading
#: decompresses at the same speed whatever the level.
COMPRESS_LEVEL = 1


def tiled(line_block: bytes, copy: int) -> bytes:
    """``line_block`` with every simulator id given the copy number ``copy``."""
    for prefix in ID_PREFIXES:
        line_block = line_block.replace(prefix, prefix[:2] + str(copy).encode() + b"-")
    return line_block


def _tiled_name(name: str, copy: int) -> str:
    stem, _, suffix = name.partition(".")
    return f"{stem}-tile{copy:03d}.{suffix}"


def _write_copy(base_file: Path, target_dir: Path, copy: int) -> Path:
    """One copy of one base file, written to a temporary name and renamed."""
    data = tiled(gzip.decompress(base_file.read_bytes()), copy)
    target = target_dir / _tiled_name(base_file.name, copy)
    tmp = target.with_name(f".{target.name}.tmp")
    with gzip.open(tmp, "wb", compresslevel=COMPRESS_LEVEL) as out:
        out.write(data)
    os.replace(tmp, target)
    return target


def tile_files(base_landing: Path, landing: Path, copies: int, workers: int = 2) -> list[Path]:
    """Every log file under ``base_landing`` (``<kind>/date=…/*.jsonl.gz``), ``copies`` times into
    the same place under ``landing``; the simulator's manifests are not copied (a landing-folder
    deployment does not read them)."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, not {copies}")
    files = sorted(
        p
        for p in base_landing.rglob("*.jsonl.gz")
        if not p.relative_to(base_landing).parts[0].startswith("_")
    )
    if not files:
        raise FileNotFoundError(f"no *.jsonl.gz log files under {base_landing} to tile")
    jobs = []
    for base_file in files:
        target_dir = landing / base_file.parent.relative_to(base_landing)
        target_dir.mkdir(parents=True, exist_ok=True)
        jobs.extend((base_file, target_dir, copy) for copy in range(copies))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_write_copy, *zip(*jobs, strict=True)))
