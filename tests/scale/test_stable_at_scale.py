"""The stable stream over 14 served days at the scales of issue #13: 5,000 and 20,000 requests a day.

The end-to-end tier runs every scenario at 3,000 requests a day from one shared warm-up; here
``stable`` runs alone at each scale, its own warm-up included (``python -m pipelines.cli.scenario
stable``, a real process on its own data folder), and must show what it shows in the tier
(:func:`tests.e2e.scenarios.check_stable_fortnight`): no sensor asks for a retraining, and the
champion's served calibration is 1 ± 0.1 on average and on every one of the 14 days, and here each
day's own figure is within the band too (the end-to-end tier asks only that each day's 95 % interval
meets it: at 3,000 a day the interval is about ± 13 %, at 5,000 ± 8 %, at 20,000 ± 3.5 %).

About 4 and 7 minutes side by side on 2 cores, so not part of ``make test``: ``make test-scale`` runs this tier
(``pytest --scale tests/scale``; each scale on its own pytest-xdist worker), and ``.ci/run`` runs it
after ``make test``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.scenarios import check_stable_fortnight
from tests.e2e.support import SCENARIO_DAYS, run_command, scenario_argv, scenario_env

#: one scale's run, warm-up and 14 served days (13 min on 2 cores for 20,000 a day, with the other
#: scale beside it), with room for a slower machine
TIMEOUT_S = 3600


@pytest.mark.parametrize("requests_per_day", [5_000, 20_000])
def test_stable_stream_asks_for_no_retraining_and_stays_calibrated(
    requests_per_day: int, tmp_path: Path
) -> None:
    out = tmp_path / "stable.json"
    argv = scenario_argv(
        "stable", SCENARIO_DAYS["stable"], "--json", str(out), requests_per_day=requests_per_day
    )
    done = run_command(argv, scenario_env(tmp_path), tmp_path / "stable.log", TIMEOUT_S)
    assert done.returncode == 0, f"stable at {requests_per_day:,} a day:\n{done.tail()}"
    result = json.loads(out.read_text())
    result["stdout"] = done.output
    check_stable_fortnight(result, every_day_in_band=True)
