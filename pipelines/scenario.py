"""`make scenario name=device_shift`: a simulated stream with a drift scenario, run by the loop's own
schedule and sensors, day by day.

The stream starts with ``--warmup-days`` served by the random policy and a first training. Then, for
each following day, in the order the daemon would run them: the daily schedule is evaluated at its
tick and its run executed; the run-status sensors of the refresh chain are evaluated on the run that
just succeeded and their runs executed; then the retraining sensors are evaluated and any training
they request is executed (a ``run_key`` already launched is not launched again, as in the daemon).
Everything runs in-process on the instance in ``<data dir>/scenarios/<name>/dagster_home``, so
``make ui`` pointed at it (``CLICKLOOP_DATA_DIR``) shows the runs. A day-by-day table follows.
"""

import argparse
import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, time, timezone
from pathlib import Path
from typing import Any

SCENARIO_DEFAULTS = {"requests": 20_000, "warmup": 10, "start": 13, "days": 18}


@dataclass
class DayRow:
    """What the table shows for one day."""

    day: str
    served_by: str = "-"
    ctr: float | None = None
    calibration: float | None = None
    oracle_capture: float | None = None
    drift_share: float | None = None
    context_drift: float | None = None
    fired: list[str] = field(default_factory=list)
    #: the retraining requests of the day's monitoring: sensor, metric, value, threshold, run
    triggers: list[dict[str, Any]] = field(default_factory=list)
    #: why the retraining sensors refused to run on the day's data (a failed blocking check)
    blocked: str | None = None

    @property
    def checks_failed(self) -> bool:
        return self.blocked is not None


def configure(name: str, data_root: Path, start_key: str, requests: int) -> Path:
    """Point the code location's settings at this scenario's own data folder (before importing
    the definitions, which read them)."""
    data = data_root / "scenarios" / name
    os.environ.update(
        {
            "CLICKLOOP_DATA_DIR": str(data),
            "DAGSTER_HOME": str(data / "dagster_home"),
            "CLICKLOOP_SCENARIO": name,
            "CLICKLOOP_SCENARIO_START": start_key,
            "CLICKLOOP_REQUESTS_PER_DAY": str(requests),
        }
    )
    return data


def run_scenario(name: str, warmup: int, start: int, days: int, requests: int) -> list[DayRow]:
    from pipelines.settings import data_dir

    root = data_dir()
    from assets.partitions import daily_partitions

    keys = daily_partitions.get_partition_keys()[: days + 1]
    configure(name, root, keys[start], requests)

    from dagster import (
        DagsterInstance,
        DagsterRunStatus,
        RunRequest,
        build_run_status_sensor_context,
        build_schedule_context,
        build_sensor_context,
    )

    from pipelines.automation import CHAIN, context_drift_share
    from pipelines.definitions import defs
    from pipelines.run import DayReport, _run
    from pipelines.settings import ensure_dagster_home

    ensure_dagster_home()
    instance = DagsterInstance.get()
    repo = defs.get_repository_def()
    resources = repo.get_top_level_resources()
    rows = {k: DayRow(k) for k in keys}
    launched: set[str] = set()

    def execute(job: str, partition: str | None, tags: dict[str, str] | None = None):
        report = DayReport(partition or "training")
        result = defs.get_job_def(job).execute_in_process(
            instance=instance,
            partition_key=partition,
            raise_on_error=False,
            tags=tags,
            # failures are expected in some scenarios: one line each below, not a traceback
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        )
        print(f"  {job:<17} {partition or '':<10} {'ok' if result.success else 'FAILED'}", flush=True)
        for failure in [] if result.success else result.get_step_failure_events():
            error = failure.step_failure_data.error
            print(f"    {failure.step_key}: {error.message.strip().splitlines()[0] if error else '?'}")
        return result, report

    # warm-up: the random policy serves, then the first model
    for i in range(warmup + 1):
        _run(defs, "feature_stats_job", keys[i], instance, DayReport(keys[i]))
        _run(defs, "ingest_job", keys[i], instance, DayReport(keys[i]))
        if i > 0:
            _run(defs, "events_job", keys[i - 1], instance, DayReport(keys[i - 1]))
    execute("training_job", None)
    # from here on the refresh chain builds each served day's statistics two days ahead; the
    # first served day's are built by hand, as the chain would have after the warm-up
    _run(defs, "feature_stats_job", keys[warmup + 1], instance, DayReport(keys[warmup + 1]))

    schedule = repo.get_schedule_def("daily_refresh_schedule")
    retraining = [repo.get_sensor_def(n) for n in ("drift_sensor", "quality_sensor", "staleness_sensor")]

    def follow_chain(job: str, result: Any) -> None:
        """Evaluate the chain's run-status sensors on a finished run, as the daemon would, and
        execute (then follow) what they request."""
        status = DagsterRunStatus.SUCCESS if result.success else DagsterRunStatus.FAILURE
        for link in CHAIN:
            if link.after != job or link.status != status:
                continue
            event = result.get_run_success_event() if result.success else result.get_run_failure_event()
            context = build_run_status_sensor_context(
                sensor_name=link.sensor,
                dagster_event=event,
                dagster_instance=instance,
                dagster_run=result.dagster_run,
            )
            request = repo.get_sensor_def(link.sensor)(context)
            if isinstance(request, RunRequest):
                follow_chain(link.then, execute(link.then, request.partition_key)[0])

    for i in range(warmup + 1, days + 1):
        tick = datetime.combine(
            daily_partitions.time_window_for_partition_key(keys[i]).end.date(), time(1), timezone.utc
        )  # the schedule's tick after day i ends
        with build_schedule_context(
            instance=instance, scheduled_execution_time=tick, repository_def=repo
        ) as context:
            requests_ = schedule.evaluate_tick(context).run_requests or []
        for request in requests_:
            follow_chain("ingest_job", execute("ingest_job", request.partition_key)[0])
        for sensor_def in retraining:
            with build_sensor_context(
                instance=instance, repository_def=repo, resources=resources, sensor_name=sensor_def.name
            ) as context:
                evaluation = sensor_def.evaluate_tick(context)
            for request in evaluation.run_requests or []:
                if request.run_key in launched:
                    continue
                launched.add(request.run_key)
                day = request.tags.get("clickloop/day", keys[i])
                row = rows.setdefault(day, DayRow(day))
                row.fired.append(
                    f"{sensor_def.name}: {request.tags.get('clickloop/metric')}="
                    f"{float(request.tags.get('clickloop/value', 'nan')):.3g}"
                )
                result, _ = execute("training_job", None, tags=request.tags)
                row.triggers.append(
                    {
                        "sensor": sensor_def.name,
                        "metric": request.tags.get("clickloop/metric"),
                        "value": float(request.tags.get("clickloop/value", "nan")),
                        "threshold": float(request.tags.get("clickloop/threshold", "nan")),
                        "launched_after": keys[i],
                        "run_id": result.run_id,
                        "success": result.success,
                    }
                )
            reason = evaluation.skip_message or ""
            if "bad data" in reason and keys[i] in reason and rows[keys[i]].blocked is None:
                rows[keys[i]].blocked = reason

    from resources.monitoring_store import MonitoringStore

    store = MonitoringStore(
        data_dir=os.environ["CLICKLOOP_DATA_DIR"], url=os.getenv("CLICKLOOP_MONITORING_DB_URL", "")
    )
    for key, row in rows.items():
        online = store.online_metrics_for(key)
        if online:
            main = max(online, key=lambda r: r["impressions"])
            row.served_by = ", ".join(r["model_version"] for r in online)
            row.ctr, row.calibration = main["ctr"], main["calibration"]
            row.oracle_capture = main["oracle_capture"]
        drift = store.drift_for(key)
        if drift:
            row.drift_share = drift["share_drifted_columns"]
            row.context_drift = context_drift_share(drift)
    return [rows[k] for k in keys[:days]]


def table(rows: list[DayRow], start_key: str) -> str:
    def f(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        "| day | scenario | served by | CTR | calibration | oracle capture | drifted columns | "
        "drifted context | sensor fired |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        fired = "; ".join(r.fired) or (
            "none: the day failed a blocking data check, no retraining on it" if r.checks_failed else ""
        )
        lines.append(
            f"| {r.day} | {'on' if r.day >= start_key else ''} | {r.served_by} | {f(r.ctr, '.4f')} | "
            f"{f(r.calibration, '.3f')} | {f(r.oracle_capture, '.1%')} | {f(r.drift_share, '.0%')} | "
            f"{f(r.context_drift, '.0%')} | {fired} |"
        )
    return "\n".join(lines)


def write_json(rows: list[DayRow], name: str, start_key: str, path: Path) -> None:
    """The day-by-day rows as JSON (what the tests read), written atomically."""
    import json

    payload = {
        "scenario": name,
        "start": start_key,
        "days": [{**asdict(r), "checks_failed": r.checks_failed} for r in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="stable, device_shift, ctr_drop, new_campaigns or price_unit_bug")
    parser.add_argument("--warmup-days", type=int, default=SCENARIO_DEFAULTS["warmup"])
    parser.add_argument("--start-day", type=int, default=SCENARIO_DEFAULTS["start"],
                        help="index of the first day of the scenario")
    parser.add_argument("--days", type=int, default=SCENARIO_DEFAULTS["days"])
    parser.add_argument("--requests-per-day", type=int, default=SCENARIO_DEFAULTS["requests"])
    parser.add_argument("--json", type=Path, help="also write the day-by-day rows to this file")
    args = parser.parse_args(argv)
    from assets.partitions import daily_partitions

    start_key = daily_partitions.get_partition_keys()[args.start_day]
    rows = run_scenario(args.name, args.warmup_days, args.start_day, args.days, args.requests_per_day)
    print(f"\nscenario {args.name} from {start_key}\n")
    print(table(rows, start_key))
    if args.json:
        write_json(rows, args.name, start_key, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
