"""This run's ratios against the previous results: which steps regressed.

Each run of ``python -m bench`` first keeps the results it replaces as ``results.previous.json``
(or compares with ``--baseline FILE``). A row of this run (a step at a size) is compared with the
row of the same step and size there: it *regressed* when its wall-clock ratio (clickloop seconds /
floor seconds, the benchmark's headline figure) is more than :data:`REGRESSION_THRESHOLD` worse,
i.e. ``current / previous - 1 > threshold``. The CPU-time ratio's change is shown beside it. Rows
without a ratio (no floor), or found on one side only, are listed and not judged. A regression makes
``python -m bench`` exit with :data:`REGRESSION_EXIT_CODE` after writing its results.

Standard library only: the benchmark's parent process imports nothing heavy (see the package
docstring).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.harness import size_label

#: A ratio more than this much worse (relative) than the previous run's is a regression.
REGRESSION_THRESHOLD = 0.20
#: The exit status of ``python -m bench`` when a step regressed (1 is a crash, 2 a usage error).
REGRESSION_EXIT_CODE = 3
#: The file a run's predecessor is kept as, beside ``results.json``.
PREVIOUS_RESULTS = "results.previous.json"


@dataclass(frozen=True)
class RowChange:
    """One step at one size in both runs (a ratio is None when that run had no floor or row)."""

    step: str
    size: int
    title: str
    previous_ratio: float | None
    current_ratio: float | None
    previous_cpu_ratio: float | None
    current_cpu_ratio: float | None
    #: relative change of the wall-clock ratio (+0.25: 25 % worse); None when not comparable
    change: float | None
    regressed: bool


@dataclass(frozen=True)
class Comparison:
    baseline: str
    threshold: float
    rows: tuple[RowChange, ...]

    @property
    def regressions(self) -> tuple[RowChange, ...]:
        return tuple(r for r in self.rows if r.regressed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "threshold": self.threshold,
            "regressions": len(self.regressions),
            "rows": [asdict(r) for r in self.rows],
        }


def _relative(current: float | None, previous: float | None) -> float | None:
    if current is None or previous is None or previous <= 0:
        return None
    return current / previous - 1.0


def _by_key(results: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(row["step"], int(row["size"])): row for row in results.get("rows", [])}


def compare_results(
    previous: dict[str, Any],
    current: dict[str, Any],
    threshold: float = REGRESSION_THRESHOLD,
    baseline: str = PREVIOUS_RESULTS,
) -> Comparison:
    """Every row of either run, this run's order first, with its ratios' change and verdict."""
    if threshold < 0:
        raise ValueError(f"the regression threshold must be >= 0, not {threshold}")
    before, now = _by_key(previous), _by_key(current)
    keys = list(now) + [k for k in before if k not in now]
    rows = []
    for key in keys:
        old, new = before.get(key, {}), now.get(key, {})
        change = _relative(new.get("ratio"), old.get("ratio"))
        rows.append(
            RowChange(
                step=key[0],
                size=key[1],
                title=str(new.get("title") or old.get("title") or key[0]),
                previous_ratio=old.get("ratio"),
                current_ratio=new.get("ratio"),
                previous_cpu_ratio=old.get("cpu_ratio"),
                current_cpu_ratio=new.get("cpu_ratio"),
                change=change,
                regressed=change is not None and change > threshold,
            )
        )
    return Comparison(baseline, threshold, tuple(rows))


def load_results(path: Path) -> dict[str, Any] | None:
    """A results file, None when there is none; a clear error when it is not one."""
    if not path.exists():
        return None
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a benchmark results file (invalid JSON: {exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise ValueError(f"{path}: not a benchmark results file (no 'rows' list)")
    return results


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _change(value: float | None) -> str:
    return "—" if value is None else f"{value:+.0%}"


def comparison_markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown section: one row per step and size, the verdict last."""
    lines = [
        f"## Against {comparison.baseline}",
        "",
        f"A step regressed when its wall-clock ratio is more than {comparison.threshold:.0%} worse.",
        "",
        "| size | step | previous ratio | ratio | change | previous CPU ratio | CPU ratio | CPU change | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in comparison.rows:
        if r.regressed:
            verdict = "**regressed**"
        elif r.change is not None:
            verdict = "ok"
        elif r.previous_ratio is None and r.current_ratio is not None:
            verdict = "new"
        elif r.current_ratio is None and r.previous_ratio is not None:
            verdict = "not measured now"
        else:
            verdict = "no ratio"
        cpu = _change(_relative(r.current_cpu_ratio, r.previous_cpu_ratio))
        lines.append(
            f"| {size_label(r.size)} | {r.title} | {_ratio(r.previous_ratio)} | {_ratio(r.current_ratio)} | "
            f"{_change(r.change)} | {_ratio(r.previous_cpu_ratio)} | {_ratio(r.current_cpu_ratio)} | "
            f"{cpu} | {verdict} |"
        )
    n = len(comparison.regressions)
    lines += ["", f"{n} regression(s)." if n else "No regression.", ""]
    return "\n".join(lines)
