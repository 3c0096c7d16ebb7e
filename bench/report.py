"""The results: one row per measurement, the Markdown report, and their atomic writes.

Standard library only (the parent imports this module).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.harness import Run, Step, size_label


def machine() -> dict[str, object]:
    """The machine and library versions, without importing the libraries."""

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "duckdb": version("duckdb"),
        "pyarrow": version("pyarrow"),
        "pandas": version("pandas"),
        "numpy": version("numpy"),
        "xgboost": version("xgboost"),
        "load_average_start": list(os.getloadavg()),
    }


def result_row(
    size: int, step: Step, ours: Run, floor: Run | None, rows: int | None = None
) -> dict[str, object]:
    """One measurement as results.json keeps it."""

    def as_dict(run: Run | None) -> dict[str, object] | None:
        if run is None:
            return None
        facts: dict[str, object] = {
            "seconds": run.wall_s,
            "cpu_seconds": run.cpu_s,
            "peak_mib": run.peak_mib,
            "rss_start_mib": run.rss_start_mib,
            "hwm_end_mib": run.hwm_end_mib,
            "child_wall_seconds": run.child_wall_s,
            "info": run.info,
        }
        if run.block_wall_s is not None:
            facts["block_wall_seconds"] = run.block_wall_s
        return facts

    ratio = ours.wall_s / floor.wall_s if floor and floor.wall_s > 0 else None
    cpu_ratio = ours.cpu_s / floor.cpu_s if floor and floor.cpu_s > 0 else None
    return {
        "size": rows or size,
        "day_size": size,
        "step": step.name,
        "title": step.title,
        "floor_label": step.floor_label,
        "ours": as_dict(ours),
        "floor": as_dict(floor),
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
    }


def failure_row(size: int, step: Step, rows: int | None, error: BaseException) -> dict[str, object]:
    """A point that could not be measured, with the end of the failed child's log."""
    return {
        "size": rows or size,
        "day_size": size,
        "step": step.name,
        "title": step.title,
        "error": str(error),
    }


def fastest(runs: Sequence[Run]) -> Run:
    """The fastest of repeated runs (the least disturbed by a busy machine), with the highest
    peak memory of them all."""
    best = min(runs, key=lambda run: run.wall_s)
    return replace(best, peak_mib=max(run.peak_mib for run in runs))


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def markdown(results: dict[str, Any], steps: Sequence[Step]) -> str:
    """The report: the table, the floors, the notes and the machine."""
    by_name = {step.name: step for step in steps}
    lines = [
        "# clickloop benchmark",
        "",
        "| size | step | clickloop s | floor s | ratio | clickloop peak MiB | floor peak MiB | detail |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in results["rows"]:
        ours, floor = row["ours"], row["floor"]
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.2f}×"
        step = by_name[row["step"]]
        detail = step.detail(row) if step.detail else ""
        digits = 3 if step.points is not None and ours["seconds"] < 10 else 2
        lines.append(
            f"| {size_label(row['size'])} | {row['title']} | {_num(ours['seconds'], digits)} | "
            f"{_num(floor and floor['seconds'], digits)} | {ratio} | {_num(ours['peak_mib'], 0)} | "
            f"{_num(floor and floor['peak_mib'], 0)} | {detail} |"
        )
    failures = results.get("failures", [])
    if failures:
        lines += ["", "**Failed** (not measured; the end of each failed child's log is in results.json):", ""]
        for failure in failures:
            first = next((line for line in str(failure["error"]).splitlines() if line.strip()), "")
            lines.append(f"- {size_label(failure['size'])} {failure['title']}: {first}")
    measured = {row["step"] for row in results["rows"]}
    lines += ["", "Floors:", ""]
    lines += [f"- {step.title}: {step.floor_label}" for step in steps if step.name in measured]
    lines += ["", "Notes:", ""]
    lines += [f"- {note}" for note in results["notes"]]
    m = results["machine"]
    lines += [
        "",
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}; Python {m['python']}, "
        f"DuckDB {m['duckdb']}, pyarrow {m['pyarrow']}, pandas {m['pandas']}, numpy {m['numpy']}, "
        f"xgboost {m['xgboost']}. Load average at start {m['load_average_start']}, "
        f"at end {m['load_average_end']}.",
        "",
        f"Total wall time: {results['total_wall_seconds']:.0f} s (started {results['started_at']}).",
        "",
    ]
    return "\n".join(lines)


def atomic_write_text(target: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync it, rename it into place. The same as
    ``clickloop.storage.atomic_write_text``, restated because that module imports DuckDB and
    pyarrow, which the parent must not (see the package docstring)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
