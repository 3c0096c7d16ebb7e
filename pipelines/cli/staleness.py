"""`make staleness` (or `make scenario name=staleness`): the cost of staleness (ML Test Score M4).

The ``slow_drift`` world (the ground truth moves a few % a day from the scenario's start) is served
for ``--drift-days`` days twice, from one shared warm-up (the random policy, then the first
champion, trained before the drift starts): by the **frozen** champion (the refresh chain runs, no
retraining sensor is evaluated) and by the **loop** (the daily schedule, the refresh chain and the
retraining sensors, as ``make scenario`` runs them: :mod:`pipelines.cli.scenario`). Per day and per
week of drift both arms' oracle capture, online NE and calibration, and the capture the frozen
champion loses per day of age (:mod:`clickloop.staleness`), are written to
``<data dir>/staleness/staleness.json`` and ``staleness.md``.

``--scenario NAME`` runs the same two arms on another scenario (``new_campaigns``, ``ctr_drop``,
...): what the loop's retraining wins, or loses, against the champion it replaced, on the same
requests (``<data dir>/staleness/NAME/``).
"""

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from clickloop.simulator import SCENARIOS
from clickloop.staleness import ArmDay, StalenessDay, compare_arms, markdown, report
from clickloop.storage import atomic_write_text
from pipelines.cli.scenario import SCENARIO_DEFAULTS, DayRow, run_scenario, write_json
from pipelines.settings import Settings

#: the scenario of the staleness experiment proper (``--scenario`` runs the arms on another)
SCENARIO = "slow_drift"
#: the arms: whether the retraining sensors run
ARMS = {"frozen": False, "loop": True}
STALENESS_DEFAULTS = {"requests": 3_000, "drift_days": 28}
RESULT_JSON = "staleness.json"
RESULT_MD = "staleness.md"


def staleness_root(base: Settings, scenario: str = SCENARIO) -> Path:
    """Where the experiment writes: ``staleness/``, or ``staleness/<scenario>`` for another scenario."""
    root = base.data_dir / "staleness"
    return root if scenario == SCENARIO else root / scenario


def _arm_base(base: Settings, arm: str, scenario: str = SCENARIO) -> Settings:
    """The arm's own data folder (its scenario runs in ``<root>/<arm>/scenarios/<scenario>``)."""
    return replace(base, data_dir=staleness_root(base, scenario) / arm)


def run_arm(
    base: Settings,
    arm: str,
    warmup: int,
    start: int,
    days: int,
    requests: int,
    warmup_from: Path,
    scenario: str = SCENARIO,
) -> tuple[list[DayRow], float]:
    """One arm from a copy of the warm-up: its day rows (also in ``<root>/<arm>/days.json``, as
    ``make scenario --json`` writes them) and its wall time in seconds."""
    began = time.perf_counter()
    arm_base = _arm_base(base, arm, scenario)
    rows, start_key = run_scenario(
        arm_base, scenario, warmup, start, days, requests, warmup_from, retrain=ARMS[arm]
    )
    write_json(rows, scenario, start_key, arm_base.data_dir / "days.json")
    return rows, time.perf_counter() - began


def arm_days(rows: list[DayRow]) -> list[ArmDay]:
    """The served days of an arm's scenario rows, as the comparison reads them."""
    return [
        ArmDay(r.day, r.served_by, r.oracle_capture, r.normalized_entropy, r.calibration)
        for r in rows
        if r.served_by != "-"
    ]


def run_staleness(
    base: Settings,
    warmup: int,
    start: int,
    drift_days: int,
    requests: int,
    workers: int,
    scenario: str = SCENARIO,
) -> tuple[list[StalenessDay], dict[str, Any]]:
    """The warm-up once, then both arms (``workers`` at a time, each in its own process)."""
    days = start + drift_days  # the last day served; its metrics come with the next day's clicks
    began = time.perf_counter()
    warm_base = _arm_base(base, "warmup", scenario)
    _, start_key = run_scenario(warm_base, scenario, warmup, start, days, requests, warmup_only=True)
    warm_dir = warm_base.data_dir / "scenarios" / scenario
    seconds = {"warmup": time.perf_counter() - began}
    args = (warmup, start, days, requests, warm_dir, scenario)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {arm: pool.submit(run_arm, base, arm, *args) for arm in ARMS}
            results = {arm: future.result() for arm, future in futures.items()}
    else:
        results = {arm: run_arm(base, arm, *args) for arm in ARMS}
    seconds.update({arm: s for arm, (_, s) in results.items()})
    seconds["total"] = time.perf_counter() - began
    rows = {arm: r for arm, (r, _) in results.items()}
    first_served = rows["frozen"][warmup + 1].day
    compared = compare_arms(arm_days(rows["frozen"]), arm_days(rows["loop"]), start_key, first_served)
    retrainings = [t for r in rows["loop"] for t in r.triggers]
    meta = {
        "scenario": scenario,
        "drift_start": start_key,
        "first_served": first_served,
        "warmup_days": warmup,
        "drift_days": drift_days,
        "requests_per_day": requests,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "loop_retrainings": retrainings,
    }
    return compared, meta


def write_outputs(days: list[StalenessDay], meta: dict[str, Any], root: Path) -> tuple[Path, Path]:
    """``staleness.json`` (the settings, the days, the weeks, the slopes) and ``staleness.md``."""
    root.mkdir(parents=True, exist_ok=True)
    as_json, as_md = root / RESULT_JSON, root / RESULT_MD
    atomic_write_text(as_json, json.dumps({**meta, **report(days)}, indent=1))
    retrainings = "; ".join(
        f"{t['sensor']} after {t['launched_after']} ({t['metric']}={t['value']:.3g})"
        for t in meta["loop_retrainings"]
    )
    header = (
        f"## The cost of staleness: {meta['scenario']} from {meta['drift_start']}, "
        f"{meta['drift_days']} days, {meta['requests_per_day']:,} requests a day\n\n"
        f"frozen: the champion first served on {meta['first_served']}, never retrained; "
        f"loop: retrained by the sensors ({retrainings or 'none fired'}).\n\n"
    )
    atomic_write_text(as_md, header + markdown(days))
    return as_json, as_md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warmup-days", type=int, default=SCENARIO_DEFAULTS["warmup"])
    parser.add_argument(
        "--start-day", type=int, default=SCENARIO_DEFAULTS["start"], help="first day of drift"
    )
    parser.add_argument("--drift-days", type=int, default=STALENESS_DEFAULTS["drift_days"])
    parser.add_argument("--requests-per-day", type=int, default=STALENESS_DEFAULTS["requests"])
    parser.add_argument("--workers", type=int, default=2, help="arms run at once, each in its own process")
    parser.add_argument(
        "--scenario",
        default=SCENARIO,
        choices=sorted(SCENARIOS),
        help=f"the world both arms serve (default {SCENARIO}: the cost of staleness proper)",
    )
    args = parser.parse_args(argv)
    if args.start_day <= args.warmup_days or args.drift_days < 1:
        parser.error("the drift starts after the warm-up (--start-day > --warmup-days), for at least a day")
    base = Settings.from_env()
    days, meta = run_staleness(
        base,
        args.warmup_days,
        args.start_day,
        args.drift_days,
        args.requests_per_day,
        args.workers,
        args.scenario,
    )
    as_json, as_md = write_outputs(days, meta, staleness_root(base, args.scenario))
    print("\n" + as_md.read_text())
    print(f"wrote {as_json} and {as_md} ({meta['seconds']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
