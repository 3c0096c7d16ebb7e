"""`make scenario name=device_shift`: a simulated stream with a drift scenario, run by the loop's own
schedule and sensors, day by day.

The stream starts with ``--warmup-days`` served by the random policy and a first training (or a copy
of a warm-up, ``--warmup-from``: the days before a scenario starts are the same whatever the
scenario, so ``--warmup-only`` runs every one of them, the champion's days before the start
included, and a copy goes on from the start day). Then, for each following day, in the order the
daemon would run them: the daily schedule is evaluated at its tick and its run executed; the
run-status sensors of the refresh chain are evaluated on the run that just ended and their runs
executed; then the retraining sensors are evaluated and any training they request is executed (a
``run_key`` already launched is not launched again, as in the daemon). Everything runs in this
process on the scenario's own instance in ``<data dir>/scenarios/<name>/dagster_home``, so
``make ui`` pointed at it shows the runs.
"""

import argparse
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunRequest,
    build_resources,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
)

from assets.partitions import Calendar
from clickloop.contract_file import load_contract
from clickloop.metrics import CALIBRATION_CONFIDENCE
from clickloop.online import calibration_text
from clickloop.retraining import DAY_TAG, context_drift_share, request_context_columns
from clickloop.storage import atomic_write_text
from pipelines.cli.runner import SILENT, LoopRunner, RunReport
from pipelines.definitions import build_defs
from pipelines.sensors import CHAIN, RETRAINING_SENSORS
from pipelines.settings import Settings, ensure_dagster_home
from resources.monitoring_store import MonitoringStore
from resources.tracking import relocate_mlflow_store

SCENARIO_DEFAULTS = {"requests": 20_000, "warmup": 10, "start": 13, "days": 18}
WARMUP_RECORD = "warmup.json"
#: what the warm-up's days before the start told (requests, refusals): the copies report them too
WARMUP_ROWS = "warmup_rows.json"


@dataclass
class DayRow:
    """What the table shows for one day."""

    day: str
    served_by: str = "-"
    ctr: float | None = None
    calibration: float | None = None
    #: the interval the day's clicks leave the calibration
    calibration_low: float | None = None
    calibration_high: float | None = None
    normalized_entropy: float | None = None
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


def scenario_settings(base: Settings, name: str, start_key: str, requests: int) -> Settings:
    """The scenario's own data folder and simulator settings."""
    settings = replace(base, data_dir=base.data_dir / "scenarios" / name)
    return settings.with_resource(
        "simulator", scenario=name, scenario_start=start_key, requests_per_day=requests
    )


class ScenarioRun:
    """One scenario on its own instance: warm-up, then the daemon's work day by day."""

    def __init__(self, settings: Settings, keys: list[str], retrain: bool = True) -> None:
        self.settings = settings
        self.keys = keys
        #: False: the retraining sensors are never evaluated (a frozen champion, the staleness
        #: experiment's baseline); the refresh chain runs as always
        self.retrain = retrain
        self.defs: Definitions = build_defs(settings)
        self.instance = DagsterInstance.from_config(
            str(ensure_dagster_home(settings.data_dir / "dagster_home"))
        )
        self.runner = LoopRunner(self.defs, self.instance, run_config=SILENT)
        self.repo = self.defs.get_repository_def()
        self.rows = {k: DayRow(k) for k in keys}
        self.launched: set[str] = set()

    def warm_up(self, warmup: int) -> None:
        """Days 0..warmup served by the random policy, the first model, and the statistics the
        first served day is ranked with (the refresh chain builds them from then on)."""
        for i in range(warmup + 1):
            self.runner.run("feature_stats_job", self.keys[i])
            self.runner.run("ingest_job", self.keys[i])
            if i > 0:
                self.runner.run("events_job", self.keys[i - 1])
        self.runner.run("training_job")
        self.runner.run("feature_stats_job", self.keys[warmup + 1])

    def save_warmup_rows(self, path: Path, keys: list[str]) -> None:
        """What the sensors said on ``keys`` (the served days before the start) and the runs they
        launched, for the scenarios that start from a copy of this warm-up."""
        rows = {
            k: {"fired": r.fired, "triggers": r.triggers, "blocked": r.blocked}
            for k, r in self.rows.items()
            if k in keys
        }
        atomic_write_text(path, json.dumps({"rows": rows, "launched": sorted(self.launched)}))

    def load_warmup_rows(self, path: Path) -> None:
        saved = json.loads(path.read_text())
        for key, fields in saved["rows"].items():
            self.rows[key] = replace(self.rows.get(key, DayRow(key)), **fields)
        self.launched.update(saved["launched"])

    def follow_chain(self, report: RunReport) -> None:
        """Evaluate the chain's run-status sensors on a finished run, as the daemon would, and
        execute (then follow) what they request."""
        result = report.result
        status = DagsterRunStatus.SUCCESS if report.success else DagsterRunStatus.FAILURE
        for link in CHAIN:
            if link.after != report.job or link.status != status:
                continue
            event = result.get_run_success_event() if report.success else result.get_run_failure_event()
            context = build_run_status_sensor_context(
                sensor_name=link.sensor,
                dagster_event=event,
                dagster_instance=self.instance,
                dagster_run=result.dagster_run,
            )
            request = self.repo.get_sensor_def(link.sensor)(context)
            if isinstance(request, RunRequest):
                self.follow_chain(self.runner.run(link.then, request.partition_key))

    def serve(self, key: str) -> None:
        """The schedule's tick after ``key`` ends, the chain, then the retraining sensors."""
        tick = datetime.combine(
            Calendar(self.settings.start_date, self.settings.feature_window_days)
            .partitions.time_window_for_partition_key(key)
            .end.date(),
            time(self.settings.refresh_hour),
            UTC,
        )
        schedule = self.repo.get_schedule_def("daily_refresh_schedule")
        with build_schedule_context(
            instance=self.instance, scheduled_execution_time=tick, repository_def=self.repo
        ) as ctx:
            requests = schedule.evaluate_tick(ctx).run_requests or []
        for request in requests:
            self.follow_chain(self.runner.run("ingest_job", request.partition_key))
        resources = self.repo.get_top_level_resources()
        for name in RETRAINING_SENSORS if self.retrain else ():
            sensor_def = self.repo.get_sensor_def(name)
            with build_sensor_context(
                instance=self.instance, repository_def=self.repo, resources=resources, sensor_name=name
            ) as ctx:
                evaluation = sensor_def.evaluate_tick(ctx)
            for request in evaluation.run_requests or []:
                self._retrain(name, request, key)
            reason = evaluation.skip_message or ""
            if "bad data" in reason and key in reason and self.rows[key].blocked is None:
                self.rows[key].blocked = reason

    def _retrain(self, sensor_name: str, request: RunRequest, key: str) -> None:
        if request.run_key in self.launched:
            return
        self.launched.add(request.run_key)
        tags = request.tags
        day = tags.get(DAY_TAG, key)
        row = self.rows.setdefault(day, DayRow(day))
        value = float(tags.get("clickloop/value", "nan"))
        row.fired.append(f"{sensor_name}: {tags.get('clickloop/metric')}={value:.3g}")
        report = self.runner.run("training_job", tags=tags)
        row.triggers.append(
            {
                "sensor": sensor_name,
                "metric": tags.get("clickloop/metric"),
                "value": value,
                "threshold": float(tags.get("clickloop/threshold", "nan")),
                "launched_after": key,
                "run_id": report.run_id,
                "success": report.success,
            }
        )

    def table_rows(self, days: int) -> list[DayRow]:
        """Every day's row, with its monitoring read back from the store."""
        store_def = self.repo.get_top_level_resources()["monitoring_store"]
        context_columns = request_context_columns(load_contract(self.settings.log_contract or None))
        # the top-level resources are definitions: build the store as a run gets it (a setting read
        # from the environment resolved)
        with build_resources({"monitoring_store": store_def}) as built:
            store = built.monitoring_store
            assert isinstance(store, MonitoringStore), type(store)
            self._read_monitoring(store, context_columns)
        return [self.rows[k] for k in self.keys[:days]]

    def _read_monitoring(self, store: MonitoringStore, context_columns: tuple[str, ...]) -> None:
        for key, row in self.rows.items():
            online = store.online_metrics_for(key)
            if online:
                main = max(online, key=lambda r: r["impressions"])
                row.served_by = ", ".join(r["model_version"] for r in online)
                row.ctr, row.calibration = main["ctr"], main["calibration"]
                row.calibration_low, row.calibration_high = main["calibration_low"], main["calibration_high"]
                row.normalized_entropy = main["normalized_entropy"]
                row.oracle_capture = main["oracle_capture"]
            drift = store.drift_for(key)
            if drift:
                row.drift_share = drift["share_drifted_columns"]
                row.context_drift = context_drift_share(drift, context_columns)


def copy_warmup(source: Path, target: Path, record: dict[str, Any]) -> None:
    """Start from a copy of a warm-up made with the same settings (its MLflow store relocated)."""
    recorded = json.loads((source / WARMUP_RECORD).read_text())
    if recorded != record:
        raise SystemExit(f"{source} is a warm-up of other settings: {recorded} (now {record})")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, symlinks=True)
    relocate_mlflow_store(target / "mlflow" / "mlflow.db", source, target)


def run_scenario(
    base: Settings,
    name: str,
    warmup: int,
    start: int,
    days: int,
    requests: int,
    warmup_from: Path | None = None,
    warmup_only: bool = False,
    retrain: bool = True,
) -> tuple[list[DayRow], str]:
    """The scenario's day rows (none with ``warmup_only``) and its first day; ``retrain=False``
    keeps the first champion serving (no retraining sensor is evaluated)."""
    calendar = Calendar(base.start_date, base.feature_window_days)
    keys = calendar.keys()[: max(days, start) + 1]
    start_key = keys[start]
    settings = scenario_settings(base, name, start_key, requests)
    record = {
        "warmup_days": warmup,
        "start_day": start,
        "requests_per_day": requests,
        "start_date": base.start_date,
    }
    if warmup_from is not None:
        copy_warmup(warmup_from, settings.data_dir, record)
    scenario = ScenarioRun(settings, keys, retrain)
    if warmup_from is None:
        scenario.warm_up(warmup)
    first = warmup + 1
    if warmup_only:
        # the served days before the start too: they are the same whatever the scenario
        for i in range(first, start):
            scenario.serve(keys[i])
        scenario.save_warmup_rows(settings.data_dir / WARMUP_ROWS, keys[first:start])
        atomic_write_text(settings.data_dir / WARMUP_RECORD, json.dumps(record))
        return [], start_key
    if warmup_from is not None:
        scenario.load_warmup_rows(settings.data_dir / WARMUP_ROWS)
        first = start
    for i in range(first, days + 1):
        scenario.serve(keys[i])
    return scenario.table_rows(days), start_key


def table(rows: list[DayRow], start_key: str) -> str:
    def f(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        f"| day | scenario | served by | CTR | calibration ({CALIBRATION_CONFIDENCE:.0%} interval) | "
        "oracle capture | drifted columns | "
        "drifted context | sensor fired |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        fired = "; ".join(r.fired) or (
            "none: the day failed a blocking data check, no retraining on it" if r.checks_failed else ""
        )
        lines.append(
            f"| {r.day} | {'on' if r.day >= start_key else ''} | {r.served_by} | {f(r.ctr, '.4f')} | "
            f"{calibration_text(r.calibration, r.calibration_low, r.calibration_high)} | "
            f"{f(r.oracle_capture, '.1%')} | {f(r.drift_share, '.0%')} | "
            f"{f(r.context_drift, '.0%')} | {fired} |"
        )
    return "\n".join(lines)


def write_json(rows: list[DayRow], name: str, start_key: str, path: Path) -> None:
    """The day-by-day rows as JSON (what the tests read), written atomically."""
    payload = {
        "scenario": name,
        "start": start_key,
        "days": [{**asdict(r), "checks_failed": r.checks_failed} for r in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "name", help="stable, device_shift, ctr_drop, new_campaigns, price_unit_bug or slow_drift"
    )
    parser.add_argument("--warmup-days", type=int, default=SCENARIO_DEFAULTS["warmup"])
    parser.add_argument(
        "--start-day",
        type=int,
        default=SCENARIO_DEFAULTS["start"],
        help="index of the first day of the scenario",
    )
    parser.add_argument("--days", type=int, default=SCENARIO_DEFAULTS["days"])
    parser.add_argument("--requests-per-day", type=int, default=SCENARIO_DEFAULTS["requests"])
    parser.add_argument("--json", type=Path, help="also write the day-by-day rows to this file")
    parser.add_argument(
        "--warmup-from",
        type=Path,
        help="start from a copy of this scenario data folder's warm-up (same settings)",
    )
    parser.add_argument(
        "--warmup-only",
        action="store_true",
        help="stop after the warm-up and the served days before the start (for others to start from a copy)",
    )
    args = parser.parse_args(argv)
    if args.start_day <= args.warmup_days:
        parser.error("the scenario starts after the warm-up (--start-day > --warmup-days)")
    rows, start_key = run_scenario(
        Settings.from_env(),
        args.name,
        args.warmup_days,
        args.start_day,
        args.days,
        args.requests_per_day,
        args.warmup_from,
        args.warmup_only,
    )
    if args.warmup_only:
        print(
            f"warm-up of {args.warmup_days} days ready in {Settings.from_env().data_dir / 'scenarios' / args.name}"
        )
        return 0
    print(f"\nscenario {args.name} from {start_key}\n")
    print(table(rows, start_key))
    if args.json:
        write_json(rows, args.name, start_key, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
