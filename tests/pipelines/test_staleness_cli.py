"""`make staleness` from the arms' scenario rows to its two files (the arms themselves are Dagster runs
of the scenario machinery: minutes, so not run here; the README has a measured run)."""

import json
from datetime import date, timedelta
from pathlib import Path

import pytest

from clickloop.staleness import compare_arms
from pipelines.cli.scenario import DayRow
from pipelines.cli.staleness import arm_days, write_outputs

FIRST = date(2026, 10, 12)


def rows(version: str, captures: list[float]) -> list[DayRow]:
    """A random-policy day (not served by a model: left out), then one served day per capture."""
    served = [
        DayRow(
            str(FIRST + timedelta(days=i)),
            served_by=version,
            ctr=0.05,
            calibration=1.1,
            normalized_entropy=0.88,
            oracle_capture=c,
        )
        for i, c in enumerate(captures)
    ]
    return [DayRow(str(FIRST - timedelta(days=1)), "-"), *served]


def test_the_arms_rows_become_the_json_and_the_markdown(tmp_path: Path) -> None:
    frozen = arm_days(rows("ctr_model-v1", [0.85, 0.84, 0.83, 0.80, 0.79, 0.78, 0.77, 0.76, 0.75]))
    loop = arm_days(rows("ctr_model-v2", [0.85] * 9))
    assert [d.day for d in frozen][0] == str(FIRST) and frozen[0].normalized_entropy == 0.88
    days = compare_arms(frozen, loop, str(FIRST + timedelta(days=1)), str(FIRST))
    meta = {
        "scenario": "slow_drift",
        "drift_start": days[0].day,
        "first_served": str(FIRST),
        "drift_days": 8,
        "requests_per_day": 3000,
        "loop_retrainings": [
            {"sensor": "quality_sensor", "launched_after": days[3].day, "metric": "ne_rise", "value": 0.061}
        ],
    }
    as_json, as_md = write_outputs(days, meta, tmp_path / "staleness")
    payload = json.loads(as_json.read_text())
    assert payload["drift_start"] == "2026-10-13" and len(payload["days"]) == 8
    assert [w["days"] for w in payload["weeks"]] == [7, 1]
    assert payload["weeks"][1]["capture_lost"] == pytest.approx(0.10)
    assert payload["cost_per_day_of_age"]["capture_lost"] > 0
    text = as_md.read_text()
    assert "quality_sensor after 2026-10-16 (ne_rise=0.061)" in text
    assert "| 2026-10-20 | 7 | 8 | ctr_model-v1 | 75.0% |" in text
    assert not [p for p in as_json.parent.iterdir() if p.name not in ("staleness.json", "staleness.md")]
