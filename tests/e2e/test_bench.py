"""Smoke test of the benchmark: a tiny run measures every step and writes its results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import IN_PROCESS_ENV
from bench.steps import STEPS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
#: Impressions per day of the smoke run. Its time is mostly fixed costs (Evidently's reports, the
#: refresh's Dagster runs): 5k takes ~15 % less CPU than 20k, 2k no less.
SIZE = 5_000


def test_quick_bench_measures_every_step(tmp_path: Path) -> None:
    # the ranker's load: 2 s at its rate instead of 30; every step in the one process (a fresh
    # interpreter per child, 28 of them, was half the test's time; the children's own path is
    # test_a_child_process_measures_a_step)
    env = {
        **os.environ,
        "CLICKLOOP_DATA_DIR": str(tmp_path),
        "CLICKLOOP_BENCH_RANKER_SECONDS": "2",
        IN_PROCESS_ENV: "1",
    }
    subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--sizes", str(SIZE)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,  # the daily refresh runs a dozen Dagster jobs (its history, then the refresh)
    )
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    rows: dict[str, list[dict]] = {}
    for row in results["rows"]:
        rows.setdefault(row["step"], []).append(row)
    assert list(rows) == [step.name for step in STEPS]
    for step in STEPS:
        # scoring and drift are measured at their own points (candidates; the day's rows, and
        # 10x as many but for --quick)
        points = step.points_at(SIZE, [SIZE])[:1]
        assert [row["size"] for row in rows[step.name]] == list(points)
        for row in rows[step.name]:
            assert row["day_size"] == SIZE
            assert row["ours"]["seconds"] > 0 and row["ours"]["peak_mib"] > 0
            if step.floor is None:
                assert row["floor"] is None and row["ratio"] is None
            else:
                assert row["floor"]["seconds"] > 0 and row["floor"]["peak_mib"] > 0
                assert row["ratio"] > 0
    (scoring,) = rows["scoring"]
    for side in ("ours", "floor"):
        info = scoring[side]["info"]
        assert info["reps"] > 1 and info["predictions"] == info["candidates"] == SIZE
        assert info["median_s"] == scoring[side]["seconds"] <= info["p99_s"]
    means = [scoring[side]["info"]["mean_prediction"] for side in ("ours", "floor")]
    assert abs(means[0] - means[1]) < 1e-6  # same model, same candidates, same predictions
    (ranker,) = rows["ranker"]
    ours = ranker["ours"]["info"]
    assert ours["errors"] == 0 and ours["requests"] == 2 * ours["rate"]
    assert 0 < ours["p50_ms"] <= ours["p99_ms"] and ranker["floor"]["info"]["requests"] > 0
    (training,) = rows["training"]
    assert training["ours"]["info"]["rounds"] == training["floor"]["info"]["rounds"] == 100
    markdown = (tmp_path / "bench" / "results.md").read_text()
    assert "| size | step |" in markdown and "p99" in markdown
    assert not (tmp_path / "bench" / "work").exists()


def test_a_child_process_measures_a_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a measurement run does for every step: a child process, its peak from ``os.wait4``."""
    from bench.__main__ import run_benchmark

    monkeypatch.delenv(IN_PROCESS_ENV, raising=False)
    monkeypatch.setenv("CLICKLOOP_DATA_DIR", str(tmp_path))
    results = run_benchmark([1_000], tmp_path / "bench", steps=["simulate"])
    (row,) = results["rows"]
    assert (row["step"], row["size"], results["failures"]) == ("simulate", 1_000, [])
    ours = row["ours"]
    assert 0 < ours["seconds"] < ours["child_wall_seconds"]  # the interpreter's start is not timed
    assert ours["peak_mib"] >= ours["hwm_end_mib"] > 0  # the child's own high-water mark
    assert not (tmp_path / "bench" / "work").exists()


def test_a_tiled_day_is_copies_of_the_simulated_day_with_unique_ids(tmp_path: Path) -> None:
    import duckdb

    from bench.tiling import tile_files
    from clickloop.simulator import FaultRates, World, simulate_day, write_day

    day = __import__("datetime").date(2026, 10, 8)
    write_day(simulate_day(World(3), day, requests_per_day=500), tmp_path / "base", FaultRates())
    written = tile_files(tmp_path / "base", tmp_path / "landing", copies=3)
    base = sorted((tmp_path / "base").rglob("*.jsonl.gz"))
    assert len(written) == 3 * len(base)

    def ids(files: str) -> tuple[int, int]:
        return duckdb.execute(
            f"SELECT count(*), count(DISTINCT impression_id) FROM read_json('{files}', "
            "format = 'newline_delimited', ignore_errors = true, columns = {'impression_id': 'VARCHAR'})"
        ).fetchone()

    base_rows, base_ids = ids(f"{tmp_path}/base/impressions/*/*.jsonl.gz")
    rows, unique = ids(f"{tmp_path}/landing/impressions/*/*.jsonl.gz")
    assert (rows, unique) == (3 * base_rows, 3 * base_ids)
    click_rows, _ = ids(f"{tmp_path}/landing/clicks/*/*.jsonl.gz")
    joined = duckdb.execute(
        f"SELECT count(*) FROM read_json('{tmp_path}/landing/clicks/*/*.jsonl.gz', format = "
        "'newline_delimited', ignore_errors = true, columns = {'impression_id': 'VARCHAR'}) c "
        f"JOIN read_json('{tmp_path}/landing/impressions/*/*.jsonl.gz', format = 'newline_delimited', "
        "ignore_errors = true, columns = {'impression_id': 'VARCHAR'}) i USING (impression_id)"
    ).fetchone()[0]
    assert 0 < joined <= click_rows  # clicks point at impressions of their own copy
