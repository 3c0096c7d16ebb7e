"""The benchmark's regression check on two small results (no benchmark run)."""

import json
from pathlib import Path

import pytest

from bench.compare import REGRESSION_THRESHOLD, compare_results, comparison_markdown, load_results


def row(step: str, size: int, ratio: float | None, cpu_ratio: float | None = None) -> dict:
    return {"step": step, "size": size, "title": step, "ratio": ratio, "cpu_ratio": cpu_ratio}


PREVIOUS = {
    "rows": [
        row("ingest", 1_000_000, 8.0, 9.0),
        row("join", 1_000_000, 2.5, 3.0),
        row("features", 1_000_000, 1.4),
        row("simulate", 1_000_000, None),
        row("drift", 10_000_000, 1.6),
    ]
}
CURRENT = {
    "rows": [
        row("ingest", 1_000_000, 9.7, 9.1),  # +21 %: regressed
        row("join", 1_000_000, 3.0, 3.3),  # +20 % exactly: not more than the threshold
        row("features", 1_000_000, 1.0),  # better
        row("simulate", 1_000_000, None),  # no floor: not judged
        row("training", 1_000_000, 1.4),  # new
    ]
}


def test_a_ratio_worse_by_more_than_the_threshold_regresses() -> None:
    assert REGRESSION_THRESHOLD == 0.20
    comparison = compare_results(PREVIOUS, CURRENT)
    by_step = {r.step: r for r in comparison.rows}
    assert [r.step for r in comparison.regressions] == ["ingest"]
    assert by_step["ingest"].change == pytest.approx(9.7 / 8.0 - 1)
    assert by_step["join"].change == pytest.approx(0.2) and not by_step["join"].regressed
    assert by_step["features"].change == pytest.approx(-0.2857, abs=1e-4)
    assert by_step["simulate"].change is None and not by_step["simulate"].regressed
    assert by_step["training"].previous_ratio is None and by_step["training"].change is None
    # rows of this run first, then those only the previous run measured
    assert [r.step for r in comparison.rows] == [
        "ingest",
        "join",
        "features",
        "simulate",
        "training",
        "drift",
    ]
    assert by_step["drift"].current_ratio is None and not by_step["drift"].regressed
    # a looser threshold passes the same run; a stricter one catches the join too
    assert compare_results(PREVIOUS, CURRENT, threshold=0.25).regressions == ()
    assert [r.step for r in compare_results(PREVIOUS, CURRENT, threshold=0.1).regressions] == [
        "ingest",
        "join",
    ]


def test_the_report_names_each_row_and_the_verdict() -> None:
    text = comparison_markdown(compare_results(PREVIOUS, CURRENT, baseline="results.previous.json"))
    lines = text.splitlines()
    assert lines[0] == "## Against results.previous.json"
    assert "| 1M | ingest | 8.00× | 9.70× | +21% | 9.00× | 9.10× | +1% | **regressed** |" in lines
    assert "| 1M | join | 2.50× | 3.00× | +20% | 3.00× | 3.30× | +10% | ok |" in lines
    assert "| 1M | training | — | 1.40× | — | — | — | — | new |" in lines
    assert "| 10M | drift | 1.60× | — | — | — | — | — | not measured now |" in lines
    assert "| 1M | simulate | — | — | — | — | — | — | no ratio |" in lines
    assert lines[-1] == "1 regression(s)."
    assert compare_results(PREVIOUS, PREVIOUS).as_dict()["regressions"] == 0
    assert comparison_markdown(compare_results(PREVIOUS, PREVIOUS)).splitlines()[-1] == "No regression."


def test_a_baseline_that_is_not_results_is_refused(tmp_path: Path) -> None:
    assert load_results(tmp_path / "none.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not a benchmark results file \(invalid JSON"):
        load_results(bad)
    bad.write_text(json.dumps({"steps": []}))
    with pytest.raises(ValueError, match="no 'rows' list"):
        load_results(bad)
    with pytest.raises(ValueError, match="threshold"):
        compare_results(PREVIOUS, CURRENT, threshold=-0.1)


def test_a_run_keeps_the_results_it_replaces_and_compares_with_them(tmp_path: Path) -> None:
    from bench.__main__ import run_benchmark

    (tmp_path / "results.json").write_text(json.dumps(PREVIOUS))
    results = run_benchmark([], tmp_path)  # no size: nothing is measured, nothing regresses
    assert json.loads((tmp_path / "results.previous.json").read_text()) == PREVIOUS
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["comparison"] == results["comparison"]
    assert results["comparison"]["regressions"] == 0
    assert {r["step"] for r in results["comparison"]["rows"]} == {
        "ingest",
        "join",
        "features",
        "simulate",
        "drift",
    }
    assert "## Against results.previous.json" in (tmp_path / "results.md").read_text()
    # --baseline: another file, named in the report; a bad one fails before anything runs
    run_benchmark([], tmp_path / "again", baseline=tmp_path / "results.previous.json")
    assert (
        f"## Against {tmp_path / 'results.previous.json'}" in (tmp_path / "again" / "results.md").read_text()
    )
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="not a benchmark results file"):
        run_benchmark([], tmp_path / "third", baseline=tmp_path / "bad.json")
    assert not (tmp_path / "third" / "results.json").exists()


def test_a_point_that_fails_is_reported_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh day over 1M impressions must be whole copies of the 1M day: 1.5M fails in its
    child's prepare, and the run records it instead of losing the rows around it."""
    from bench.__main__ import run_benchmark

    monkeypatch.setenv("CLICKLOOP_BENCH_REFRESH_POINTS", "1500000")
    results = run_benchmark([1_000], tmp_path, steps=["refresh"])
    assert results["rows"] == []
    (failure,) = results["failures"]
    assert (failure["step"], failure["size"], failure["day_size"]) == ("refresh", 1_500_000, 1_000)
    assert "refresh/prepare at 1,500,000" in failure["error"]
    assert "must be a multiple of it" in failure["error"]
    assert json.loads((tmp_path / "results.json").read_text())["failures"] == [failure]
    report = (tmp_path / "results.md").read_text()
    assert "**Failed**" in report and "- 1500k daily refresh (3 runs): refresh/prepare at 1,500,000" in report
