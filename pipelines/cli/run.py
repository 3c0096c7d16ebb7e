"""`make run`: the loop end to end on the embedded simulator, through Dagster, then a summary.

Runs the repository's own jobs in this process on the persistent instance in ``DAGSTER_HOME`` (under
the data directory by default), so ``make ui`` afterwards shows every run, materialization and check.
Days are processed in the order the loop needs: the statistics the ad server may use on day D, then
day D is served and its logs ingested, then the events and features of D-1 (whose attribution
window closed when D's clicks arrived). After the warm-up days (random policy) the first model is
trained, evaluated and gated; then the champion serves the remaining days.
"""

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from dagster import DagsterInstance

from assets.partitions import Calendar
from clickloop.metrics import CALIBRATION_CONFIDENCE
from clickloop.online import calibration_text
from pipelines.cli.runner import LoopRunner, RunReport
from pipelines.definitions import build_defs
from pipelines.settings import Settings, dagster_home, ensure_dagster_home

DEFAULT_WARMUP_DAYS = 10
DEFAULT_SERVED_DAYS = 3


@dataclass
class DayReport:
    """What happened to one day, over the runs that built it."""

    day: str
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, run: RunReport) -> None:
        self.metadata.update(run.metadata)
        self.checks.update(run.checks)
        self.failures += run.failures


def open_instance(settings: Settings) -> DagsterInstance:
    """The persistent instance of these settings (``DAGSTER_HOME``, else under the data dir)."""
    return DagsterInstance.from_config(str(ensure_dagster_home(dagster_home(settings))))


def run_loop(
    runner: LoopRunner, keys: list[str], warmup_days: int, served_days: int
) -> tuple[list[DayReport], DayReport]:
    """``warmup_days`` served by the random policy, a training run, then ``served_days`` served by
    the champion. Returns the reports of the days whose events were built, and the training's."""
    total = warmup_days + served_days + 1  # +1: the clicks of the last reported day
    if len(keys) < total:
        raise SystemExit(f"only {len(keys)} daily partitions exist; fewer days, please")
    keys = keys[:total]
    reports = {k: DayReport(k) for k in keys}

    def day(i: int) -> None:
        key = keys[i]
        reports[key].add(runner.run("feature_stats_job", key))  # what serving D may know
        reports[key].add(runner.run("ingest_job", key))  # day D is served and logged
        if i > 0:  # D-1's attribution window closed with D's clicks
            reports[keys[i - 1]].add(runner.run("events_job", keys[i - 1]))

    for i in range(warmup_days + 1):
        day(i)
    training = DayReport("training")
    training.add(runner.run("training_job"))
    for i in range(warmup_days + 1, total):
        day(i)
    return [reports[k] for k in keys[:-1]], training


def _num(report: DayReport, asset: str, key: str) -> str:
    value = report.metadata.get(asset, {}).get(key)
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else f"{value:,}"


def accounting_table(reports: list[DayReport]) -> str:
    """The row accounting of every day, one line each."""
    head = (
        f"{'day':<10} {'imp lines':>9} {'valid':>9} {'quar':>5} {'events':>9} {'dup imp':>7} "
        f"{'clicks':>7} {'attrib':>7} {'orphan':>6} {'before':>6} {'dup clk':>7} {'CTR':>7} checks"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        attributed = r.metadata.get("ad_events", {}).get("clicked")
        if r.checks and all(r.checks.values()):
            checks = "ok"
        elif r.checks:
            checks = "FAILED: " + ", ".join(k for k, ok in r.checks.items() if not ok)
        else:
            checks = "-"
        lines.append(
            f"{r.day:<10} {_num(r, 'raw_impressions', 'lines_read'):>9} "
            f"{_num(r, 'raw_impressions', 'valid_rows'):>9} "
            f"{_num(r, 'raw_impressions', 'quarantined_rows'):>5} "
            f"{_num(r, 'ad_events', 'dagster/row_count'):>9} "
            f"{_num(r, 'ad_events', 'duplicate_impressions'):>7} "
            f"{_num(r, 'raw_clicks', 'valid_rows'):>7} "
            f"{(f'{attributed:,}' if attributed is not None else '-'):>7} "
            f"{_num(r, 'ad_events', 'orphan_clicks'):>6} "
            f"{_num(r, 'ad_events', 'clicks_before_impression'):>6} "
            f"{_num(r, 'ad_events', 'duplicate_clicks'):>7} "
            f"{_num(r, 'ad_events', 'ctr'):>7} {checks}"
        )
        lines.extend(f"{'':<10} ! {f}" for f in r.failures)
    return "\n".join(lines)


#: the serving table's calibration column: the day's figure and its exact Poisson interval
CALIBRATION_HEAD = f"calib ({CALIBRATION_CONFIDENCE:.0%} interval)"


def serving_table(reports: list[DayReport]) -> str:
    """Who served each day and what it earned: the business metric next to the proxy."""
    head = (
        f"{'day':<10} {'served by':<16} {'CTR':>7} {'pred CTR':>8} {CALIBRATION_HEAD:>21} "
        f"{'NE':>6} {'rev/1000 req':>12} {'oracle capture':>14} {'drift share':>11}"
    )
    lines = [head, "-" * len(head)]

    def f(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in reports:
        m = r.metadata.get("online_metrics")
        if not m:
            continue
        drift = r.metadata.get("drift_report", {}).get("share_drifted_columns")
        lines.append(
            f"{r.day:<10} {str(m.get('model_versions', '-')):<16} {f(m.get('ctr'), '.4f'):>7} "
            f"{f(m.get('mean_predicted_ctr'), '.4f'):>8} "
            f"{calibration_text(m.get('calibration'), m.get('calibration_low'), m.get('calibration_high')):>21} "
            f"{f(m.get('normalized_entropy'), '.3f'):>6} "
            f"{f(m.get('revenue_per_1000_requests'), ',.1f'):>12} "
            f"{f(m.get('oracle_capture'), '.1%'):>14} {f(drift, '.0%'):>11}"
        )
    return "\n".join(lines)


def model_summary(training: DayReport) -> str:
    """The evaluation of the trained model next to its baselines, and the gate's decision."""
    evaluation = training.metadata.get("model_evaluation", {})
    gate = training.metadata.get("champion_model", {})
    if not evaluation:
        return "training did not finish:\n" + "\n".join(f"  ! {f}" for f in training.failures)
    lines = [
        f"model v{evaluation['model_version']} on test day {evaluation['test_day']} "
        f"({evaluation['dagster/row_count']:,} rows): AUC {evaluation['auc']:.4f}, "
        f"normalized entropy {evaluation['normalized_entropy']:.4f}, "
        f"calibration {evaluation['calibration']:.3f}",
        "",
        str(evaluation["comparison"]),
        "",
        f"promotion: {gate.get('decision', 'not reached')} (champion now v{gate.get('champion_version', '-')})",
    ]
    lines.extend(f"  ! {f}" for f in training.failures)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--warmup-days",
        type=int,
        default=int(os.environ.get("CLICKLOOP_WARMUP_DAYS") or DEFAULT_WARMUP_DAYS),
        help="days served by the random policy before the first training (train, validation, test)",
    )
    parser.add_argument(
        "--served-days",
        type=int,
        default=int(os.environ.get("CLICKLOOP_SERVED_DAYS") or DEFAULT_SERVED_DAYS),
        help="days served by the champion after the training",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print(
        f"clickloop: {args.warmup_days} days, training, {args.served_days} served days; "
        f"data in {settings.data_dir}",
        flush=True,
    )
    instance = open_instance(settings)
    runner = LoopRunner(build_defs(settings), instance)
    keys = Calendar(settings.start_date, settings.feature_window_days).keys()
    reports, training = run_loop(runner, keys, args.warmup_days, args.served_days)
    print()
    print(accounting_table(reports))
    print()
    print(model_summary(training))
    print()
    print(serving_table(reports))
    print(f"\nDagster instance: {instance.root_directory} (make ui shows these runs)")
    print(f"total {time.perf_counter() - start:.0f}s")
    return 1 if training.failures or any(r.failures for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
