"""Smoke test of the benchmark: a tiny run measures every step and writes its results."""

import json
import os
import subprocess
import sys
from pathlib import Path

from pipelines.bench import STEPS

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_measures_every_step(tmp_path: Path) -> None:
    env = {**os.environ, "CLICKLOOP_DATA_DIR": str(tmp_path)}
    subprocess.run(
        [sys.executable, "-m", "pipelines.bench", "--quick", "--sizes", "20000"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    rows = {row["step"]: row for row in results["rows"]}
    assert list(rows) == [step.name for step in STEPS]
    for step in STEPS:
        row = rows[step.name]
        assert row["size"] == 20_000
        assert row["ours"]["seconds"] > 0 and row["ours"]["peak_mib"] > 0
        if step.floor is None:
            assert row["floor"] is None and row["ratio"] is None
        else:
            assert row["floor"]["seconds"] > 0 and row["floor"]["peak_mib"] > 0
            assert row["ratio"] > 0
    assert "| size | step |" in (tmp_path / "bench" / "results.md").read_text()
    assert not (tmp_path / "bench" / "work").exists()
