"""``python -m bench``: the command line, the parent's loop over sizes and steps, and the entry
point of every child process (``--child``). See the package docstring."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.compare import (
    PREVIOUS_RESULTS,
    REGRESSION_EXIT_CODE,
    REGRESSION_THRESHOLD,
    compare_results,
    comparison_markdown,
    load_results,
)
from bench.harness import (
    DAY,
    DEFAULT_SIZES,
    DUCKDB_MEMORY_LIMIT,
    DUCKDB_THREADS,
    QUICK_SIZE,
    ROLES,
    SEED,
    ChildFailed,
    Run,
    Step,
    child_run,
    data_dir,
    progress,
    run_child,
    size_label,
)
from bench.report import atomic_write_text, failure_row, fastest, machine, markdown, result_row
from bench.steps import NOTES, STEPS, required_steps, step_named
from bench.steps_serving import DRIFT_SCALE


def run_benchmark(
    sizes: Sequence[int],
    bench_dir: Path,
    *,
    repeat: int = 1,
    keep_work: bool = False,
    steps: Sequence[str] | None = None,
    first_point_only: bool = False,
    baseline: Path | None = None,
    threshold: float = REGRESSION_THRESHOLD,
) -> dict[str, Any]:
    """Run every step (or the ``steps`` named, after the steps they need, which run unmeasured:
    clickloop's side only, not reported) at every size (ours and floor alternately ``repeat``
    times, keeping the fastest of each); write and return the results. ``first_point_only``
    (``--quick``): a step with several points (the drift report) is measured at its first.

    The results are compared with ``baseline`` (default: the ``results.json`` this run replaces,
    which is kept as ``results.previous.json``): ``results["comparison"]``, and a section of
    ``results.md`` (:mod:`bench.compare`)."""
    latest = bench_dir / "results.json"
    baseline_path = baseline or latest
    previous = load_results(baseline_path)  # before the run: a bad baseline fails at once
    selected = set(steps) if steps else {step.name for step in STEPS}
    work_root = bench_dir / "work"
    shutil.rmtree(work_root, ignore_errors=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "sizes": list(sizes),
            "duckdb_threads": DUCKDB_THREADS,
            "duckdb_memory_limit": DUCKDB_MEMORY_LIMIT,
            "seed": SEED,
            "day": DAY.isoformat(),
            "repeat": repeat,
            "steps": [step.name for step in STEPS if step.name in selected],
            "first_point_only": first_point_only,
        },
        "notes": [
            *NOTES,
            f"each time is the fastest of {repeat} run(s), clickloop and floor alternating "
            "(--repeat); the CPU-time ratio, less sensitive to a busy machine, is in results.json.",
        ],
        "rows": [],
        "failures": [],
    }
    try:
        for size in sizes:
            work = work_root / f"size-{size}"
            for step in required_steps(sorted(selected)):
                points = step.points_at(size, sizes)
                for rows in points[:1] if first_point_only else points:
                    label = f"{size_label(size)} {step.name}" + (
                        "" if rows == size else f" at {size_label(rows)}"
                    )
                    try:
                        if step.prepare is not None:
                            progress(f"{label}: preparing")
                            run_child("prepare", step, size, work, rows)
                        if step.name not in selected:
                            run = run_child("ours", step, size, work, rows)
                            progress(f"{label}: run for the steps that need it ({run.wall_s:.2f} s)")
                            continue
                        row = measure(step, size, work, rows, repeat)
                    except ChildFailed as error:
                        # a point that fails (out of memory, out of disk) is reported and the run
                        # goes on: the rows measured before and after it are kept
                        results["failures"].append(failure_row(size, step, rows, error))
                        progress(f"{label}: FAILED\n{error}")
                        continue
                    results["rows"].append(row)
                    ours, floor = row["ours"], row["floor"]
                    ratio = "" if row["ratio"] is None else f", ratio {row['ratio']:.2f}"
                    floor_s = "" if floor is None else f", floor {floor['seconds']:.2f} s"
                    progress(f"{label}: clickloop {ours['seconds']:.2f} s{floor_s}{ratio}")
    finally:
        if not keep_work:
            shutil.rmtree(work_root, ignore_errors=True)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["total_wall_seconds"] = time.perf_counter() - started
    report = markdown(results, STEPS)
    if previous is not None:
        label = PREVIOUS_RESULTS if baseline is None else str(baseline_path)
        comparison = compare_results(previous, results, threshold, label)
        results["comparison"] = comparison.as_dict()
        report += "\n" + comparison_markdown(comparison)
    if latest.exists():
        os.replace(latest, bench_dir / PREVIOUS_RESULTS)
    atomic_write_text(latest, json.dumps(results, indent=2, default=str) + "\n")
    atomic_write_text(bench_dir / "results.md", report)
    return results


def measure(step: Step, size: int, work: Path, rows: int, repeat: int) -> dict[str, Any]:
    """One step at one point: clickloop and its floor alternately ``repeat`` times, the fastest
    of each kept (:func:`bench.report.fastest`); the row as results.json keeps it."""
    ours_runs: list[Run] = []
    floor_runs: list[Run] = []
    for _ in range(repeat):
        ours_runs.append(run_child("ours", step, size, work, rows))
        if step.floor is not None:
            floor_runs.append(run_child("floor", step, size, work, rows))
    ours = fastest(ours_runs)
    floor = fastest(floor_runs) if floor_runs else None
    row = result_row(size, step, ours, floor, rows)
    row["ours"]["all_seconds"] = [run.wall_s for run in ours_runs]
    if floor_runs:
        row["floor"]["all_seconds"] = [run.wall_s for run in floor_runs]
    return row


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="clickloop's steps side by side with the bare libraries doing the same work.",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="impressions per day (default: 1000000; the daily refresh also at 10M and 50M)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run at {QUICK_SIZE:,} (unless --sizes); the drift report at the day's rows "
        f"only (not also {DRIFT_SCALE}x)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run clickloop and floor alternately N times and keep the fastest of each (default 1)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep <data_dir>/bench/work")
    parser.add_argument(
        "--baseline",
        type=Path,
        help=f"the results to compare with (default: the results.json this run replaces, kept as "
        f"{PREVIOUS_RESULTS})",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=REGRESSION_THRESHOLD,
        help=f"a ratio this much worse (relative) than the baseline's is a regression; exit status "
        f"{REGRESSION_EXIT_CODE} (default {REGRESSION_THRESHOLD})",
    )
    parser.add_argument(
        "--steps",
        nargs="+",
        choices=[step.name for step in STEPS],
        metavar="STEP",
        help="measure only these steps (the steps they need still run, unmeasured); "
        f"choices: {' '.join(step.name for step in STEPS)}",
    )
    # Internal: one child process of the benchmark.
    parser.add_argument("--child", choices=ROLES, help=argparse.SUPPRESS)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sizes and min(args.sizes) < 1_000:
        parser.error("sizes must be at least 1000 impressions per day")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.threshold < 0:
        parser.error("--threshold must be at least 0")
    if args.child and None in (args.step, args.size, args.work, args.result):
        parser.error("--child needs --step, --size, --work and --result")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        step = step_named(args.step)
        return child_run(step, args.child, args.size, args.work, args.result, args.rows)
    sizes = args.sizes or ([QUICK_SIZE] if args.quick else list(DEFAULT_SIZES))
    bench_dir = data_dir() / "bench"
    results = run_benchmark(
        sizes,
        bench_dir,
        repeat=args.repeat,
        keep_work=args.keep_work,
        steps=args.steps,
        first_point_only=args.quick,
        baseline=args.baseline,
        threshold=args.threshold,
    )
    print((bench_dir / "results.md").read_text())
    regressions = results.get("comparison", {}).get("regressions", 0)
    if results["failures"]:
        return 1
    return REGRESSION_EXIT_CODE if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
