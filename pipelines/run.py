"""`make run`: materialize several simulated days end to end through Dagster, then summarize.

Runs the repository's own jobs in-process on the persistent instance in ``DAGSTER_HOME`` (under the
data directory by default), so ``make ui`` afterwards shows every run, materialization and check.
Days are processed in the order the loop needs: the statistics the ad server may use on day D, then
day D is served and its logs ingested, then ``ad_events`` and ``features`` of D-1 (whose attribution
window closed when D's clicks arrived).
"""

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from dagster import DagsterInstance, Definitions, ExecuteInProcessResult

from pipelines.settings import data_dir, ensure_dagster_home


@dataclass
class DayReport:
    """What happened to one day, read back from the runs' events."""

    day: str
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _collect(result: ExecuteInProcessResult, report: DayReport) -> None:
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        report.metadata[mat.asset_key.to_user_string()] = {
            k: getattr(v, "value", v) for k, v in mat.metadata.items()
        }
    for evaluation in result.get_asset_check_evaluations():
        report.checks[evaluation.check_name] = evaluation.passed
    for event in result.all_events:
        if event.is_step_failure and event.event_specific_data.error:
            error = event.event_specific_data.error
            while error.cause is not None:  # the user's error, not Dagster's wrapper
                error = error.cause
            report.failures.append(f"{event.step_key}: {error.message.strip().splitlines()[0]}")


def _instance() -> DagsterInstance:
    ensure_dagster_home()
    return DagsterInstance.get()


def run_loop(
    warmup_days: int, served_days: int
) -> tuple[list[DayReport], dict[str, dict[str, Any]], list[str]]:
    """The whole loop on the simulator: ``warmup_days`` served by the random policy, a training run
    (split, train, evaluate, gate), then ``served_days`` served by the champion.

    Returns the reports of the days whose events were built, the training run's metadata by asset,
    and its failures.
    """
    from pipelines.definitions import daily_partitions, defs

    instance = _instance()
    total = warmup_days + served_days + 1  # +1: the clicks of the last reported day
    keys = daily_partitions.get_partition_keys()[:total]
    if len(keys) < total:
        raise SystemExit(f"only {len(keys)} daily partitions exist; fewer days, please")
    reports = {k: DayReport(k) for k in keys}

    def day(i: int) -> None:
        key = keys[i]
        _run(defs, "feature_stats_job", key, instance, reports[key])  # what serving D may know
        _run(defs, "ingest_job", key, instance, reports[key])  # day D is served and logged
        if i > 0:  # D-1's attribution window closed with D's clicks
            _run(defs, "events_job", keys[i - 1], instance, reports[keys[i - 1]])

    for i in range(warmup_days + 1):
        day(i)
    training = DayReport("training")
    _run(defs, "training_job", None, instance, training)
    for i in range(warmup_days + 1, total):
        day(i)
    return [reports[k] for k in keys[:-1]], training.metadata, training.failures


#: the run's own log goes to the instance (the UI shows it); the terminal gets warnings and up.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _run(
    defs: Definitions, job: str, key: str | None, instance: DagsterInstance, report: DayReport
) -> None:
    t0 = time.perf_counter()
    result = defs.get_job_def(job).execute_in_process(
        instance=instance, partition_key=key, raise_on_error=False, run_config=QUIET
    )
    _collect(result, report)
    status = "ok" if result.success else "FAILED"
    print(
        f"  {job:<17} {key or '':<10}  {status:<6} {time.perf_counter() - t0:5.1f}s  "
        f"run {result.run_id[:8]}",
        flush=True,
    )


def _num(report: DayReport, asset: str, key: str) -> str:
    value = report.metadata.get(asset, {}).get(key)
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else f"{value:,}"


def summary(reports: list[DayReport]) -> str:
    """The row accounting of every day, one line each."""
    head = (
        f"{'day':<10} {'imp lines':>9} {'valid':>9} {'quar':>5} {'events':>9} {'dup imp':>7} "
        f"{'clicks':>7} {'attrib':>7} {'orphan':>6} {'before':>6} {'dup clk':>7} {'CTR':>7} checks"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        outcomes = r.metadata.get("ad_events", {})
        checks = "ok" if r.checks and all(r.checks.values()) else (
            "FAILED: " + ", ".join(k for k, ok in r.checks.items() if not ok) if r.checks else "-"
        )
        attributed = outcomes.get("clicked")
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


def serving_summary(reports: list[DayReport]) -> str:
    """Who served each day and what it earned: the business metric next to the proxy."""
    head = (
        f"{'day':<10} {'served by':<16} {'CTR':>7} {'pred CTR':>8} {'calib':>6} "
        f"{'NE':>6} {'rev/1000 req':>12} {'oracle capture':>14} {'drift share':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        m = r.metadata.get("online_metrics")
        if not m:
            continue
        drift = r.metadata.get("drift_report", {}).get("share_drifted_columns")

        def f(value: Any, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        lines.append(
            f"{r.day:<10} {str(m.get('model_versions', '-')):<16} {f(m.get('ctr'), '.4f'):>7} "
            f"{f(m.get('mean_predicted_ctr'), '.4f'):>8} {f(m.get('calibration'), '.3f'):>6} "
            f"{f(m.get('normalized_entropy'), '.3f'):>6} "
            f"{f(m.get('revenue_per_1000_requests'), ',.1f'):>12} "
            f"{f(m.get('oracle_capture'), '.1%'):>14} {f(drift, '.0%'):>11}"
        )
    return "\n".join(lines)


def model_summary(training: dict[str, dict[str, Any]], failures: list[str]) -> str:
    """The evaluation of the trained model next to its baselines, and the gate's decision."""
    evaluation = training.get("model_evaluation", {})
    gate = training.get("champion_model", {})
    if not evaluation:
        return "training did not finish:\n" + "\n".join(f"  ! {f}" for f in failures)
    lines = [
        f"model v{evaluation['model_version']} on test day {evaluation['test_day']} "
        f"({evaluation['dagster/row_count']:,} rows): AUC {evaluation['auc']:.4f}, "
        f"normalized entropy {evaluation['normalized_entropy']:.4f}, "
        f"calibration {evaluation['calibration']:.3f}",
        "",
        str(evaluation["comparison"]),
        "",
        f"promotion: {gate.get('decision', 'not reached')} "
        f"(champion now v{gate.get('champion_version', '-')})",
    ]
    lines.extend(f"  ! {f}" for f in failures)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--warmup-days", type=int, default=int(os.getenv("CLICKLOOP_WARMUP_DAYS", "10")),
        help="days served by the random policy before the first training (train, validation, test)",
    )
    parser.add_argument(
        "--served-days", type=int, default=int(os.getenv("CLICKLOOP_SERVED_DAYS", "3")),
        help="days served by the champion after the training",
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    print(
        f"clickloop: {args.warmup_days} days, training, {args.served_days} served days; "
        f"data in {data_dir()}",
        flush=True,
    )
    reports, training, training_failures = run_loop(args.warmup_days, args.served_days)
    print()
    print(summary(reports))
    print()
    print(model_summary(training, training_failures))
    print()
    print(serving_summary(reports))
    print(f"\nDagster instance: {os.environ['DAGSTER_HOME']} (make ui shows these runs)")
    print(f"total {time.perf_counter() - t0:.0f}s")
    return 1 if training_failures or any(r.failures for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
