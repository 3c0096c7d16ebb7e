"""A small simulated history of the loop, built once per test session through the repository's own
jobs: what the asset and pipeline tiers read.

``make run``'s own :func:`pipelines.cli.run.run_loop` drives it: 10 days served by the random policy
(statistics, ingest, then the events of the day before), the first training (split, train, evaluate,
gate), then 2 days served by the champion. Every run executes in this process on a temporary SQLite
Dagster instance; the data (Parquet, MLflow, the monitoring store) lives in a temporary folder.

Tests that change state work on a :meth:`History.copy` (its own folder, instance and definitions).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, Definitions, ExecuteInProcessResult

from assets.partitions import Calendar
from pipelines.cli.run import DayReport, run_loop
from pipelines.cli.runner import QUIET, LoopRunner, RunReport
from pipelines.definitions import build_defs, build_resources
from pipelines.settings import Settings, ensure_dagster_home
from resources.monitoring_store import MonitoringStore
from resources.simulator import AdServerSimulator
from resources.tracking import ModelRegistry, relocate_mlflow_store
from resources.warehouse import WarehouseResource

START_DATE = "2026-10-01"
WARMUP_DAYS = 10
SERVED_DAYS = 2
#: a small world, so a day simulates and ingests in a second or two
SIMULATOR = {"requests_per_day": 3_000, "n_users": 5_000, "n_ads": 600, "n_sites": 60}
#: the training of the history: negatives downsampled (the correction is part of what is tested),
#: and a short search so the session stays quick
TRAINING_OPS: dict[str, Any] = {
    "training_and_test_sets": {"config": {"negative_downsampling_rate": 0.5}},
    "ctr_model": {
        "config": {
            "n_trials": 2,
            "search_num_boost_round": 60,
            "search_max_rows": 20_000,
            "num_boost_round": 400,
        }
    },
}
#: drift on samples of this many rows of a day (of about 6,000) and of its reference
DRIFT_SAMPLE_ROWS = 2_000
OPS_BY_JOB: dict[str, dict[str, Any]] = {
    "training_job": TRAINING_OPS,
    "events_job": {"drift_report": {"config": {"sample_rows": DRIFT_SAMPLE_ROWS}}},
}


class JobConfigRunner(LoopRunner):
    """A :class:`LoopRunner` that gives some jobs their assets' op config (``run_loop`` runs every
    job with the runner's own config, and a job's run config may only name that job's ops)."""

    def __init__(
        self,
        defs: Definitions,
        instance: DagsterInstance,
        ops_by_job: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(defs, instance)
        self.ops_by_job = {job: dict(ops) for job, ops in (ops_by_job or {}).items()}

    def run(
        self,
        job: str,
        partition: str | None = None,
        tags: Mapping[str, str] | None = None,
        echo: bool = True,
        ops: Mapping[str, Any] | None = None,
    ) -> RunReport:
        return super().run(job, partition, tags, echo, ops=self.ops_by_job.get(job) if ops is None else ops)


def open_test_instance(home: Path) -> DagsterInstance:
    """A persistent SQLite instance in ``home`` (never ``DAGSTER_HOME``)."""
    return DagsterInstance.from_config(str(ensure_dagster_home(home)))


def metadata_of(instance: DagsterInstance, asset: str, partition: str | None = None) -> dict[str, Any]:
    """The metadata of the latest materialization of an asset (partition), as plain values."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=AssetKey(asset), asset_partitions=None if partition is None else [partition]
        ),
        limit=1,
    ).records
    assert records, f"{asset} {partition or ''} was not materialized"
    metadata = records[0].asset_materialization.metadata
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


@dataclass
class History:
    """The simulated days, the training and where everything is."""

    root: Path
    settings: Settings
    defs: Definitions
    instance: DagsterInstance
    #: every daily partition key of the run (the last one is served and ingested, not yet joined)
    keys: list[str]
    #: the days whose events were built, in order
    days: list[DayReport]
    training: DayReport

    @property
    def resources(self) -> dict[str, Any]:
        """The resources of the definitions, as objects (the repository holds their definitions)."""
        return build_resources(self.settings)

    @property
    def warehouse_resource(self) -> WarehouseResource:
        return self.resources["warehouse"]

    @property
    def warehouse(self):  # clickloop.storage.Warehouse
        return self.warehouse_resource.get()

    @property
    def simulator(self) -> AdServerSimulator:
        return self.resources["log_source"]

    @property
    def registry(self) -> ModelRegistry:
        return self.resources["model_registry"]

    @property
    def monitoring_store(self) -> MonitoringStore:
        return self.resources["monitoring_store"]

    @property
    def random_days(self) -> list[str]:
        """Days with events served by the random policy."""
        return self.keys[: WARMUP_DAYS + 1]

    @property
    def champion_days(self) -> list[str]:
        """Days served by the champion (the last one is not joined yet)."""
        return self.keys[WARMUP_DAYS + 1 :]

    @property
    def event_days(self) -> list[str]:
        return [d.day for d in self.days]

    def day(self, key: str) -> DayReport:
        return next(d for d in self.days if d.day == key)

    def metadata(self, asset: str, partition: str | None = None) -> dict[str, Any]:
        return metadata_of(self.instance, asset, partition)

    def runner(self, ops_by_job: Mapping[str, Mapping[str, Any]] | None = None) -> JobConfigRunner:
        """A runner on this history's definitions and instance (the history's op config by default)."""
        return JobConfigRunner(self.defs, self.instance, OPS_BY_JOB if ops_by_job is None else ops_by_job)

    def materialize(
        self, selection: Sequence[str], ops: Mapping[str, Any] | None = None, partition: str | None = None
    ) -> ExecuteInProcessResult:
        """Materialize some assets of the code location (and their checks) in one run on this
        history's instance, as a person selecting them in the UI would."""
        job = self.defs.resolve_implicit_global_asset_job_def()
        return job.execute_in_process(
            instance=self.instance,
            asset_selection=[AssetKey(name) for name in selection],
            partition_key=partition,
            run_config={**QUIET, **({"ops": dict(ops)} if ops else {})},
            raise_on_error=False,
        )

    def copy(self, target: Path) -> History:
        """The same history in ``target``: data, MLflow store (relocated) and Dagster instance, with
        its own definitions. The drift reports' HTML is left behind (nothing reads it back)."""
        target.mkdir(parents=True, exist_ok=True)
        shutil.copytree(
            self.root / "data", target / "data", ignore=shutil.ignore_patterns("drift_report.html")
        )
        shutil.copytree(self.root / "dagster_home", target / "dagster_home")
        relocate_mlflow_store(target / "data" / "mlflow" / "mlflow.db", self.root / "data", target / "data")
        settings = _settings(target)
        return History(
            root=target,
            settings=settings,
            defs=build_defs(settings),
            instance=open_test_instance(target / "dagster_home"),
            keys=self.keys,
            days=self.days,
            training=self.training,
        )


def _settings(root: Path) -> Settings:
    return Settings(
        data_dir=root / "data",
        start_date=START_DATE,
        executor="in_process",
        resources={"simulator": SIMULATOR},
    )


def build_history(root: Path) -> History:
    """Simulate and materialize the history in ``root`` (about a minute and a half)."""
    settings = _settings(root)
    defs = build_defs(settings)
    instance = open_test_instance(root / "dagster_home")
    runner = JobConfigRunner(defs, instance, OPS_BY_JOB)
    keys = settings_keys(settings)[: WARMUP_DAYS + SERVED_DAYS + 1]
    days, training = run_loop(runner, keys, WARMUP_DAYS, SERVED_DAYS)
    return History(root, settings, defs, instance, keys, days, training)


def settings_keys(settings: Settings) -> list[str]:
    """Every daily partition key of the settings' calendar."""
    return Calendar(settings.start_date, settings.feature_window_days).keys()


#: prices logged in cents from the second day on (the scenario's start is set by the loop)
PRICE_BUG_SIMULATOR = {"requests_per_day": 1_500, "scenario": "price_unit_bug"}


@dataclass
class PriceBugLoop:
    """``price_unit_bug`` from the second day: three days ingested (the second and third fail their
    blocking check), the statistics of the first two, the events of the first, then an attempt at
    the events of the second (refused)."""

    root: Path
    settings: Settings
    defs: Definitions
    instance: DagsterInstance
    keys: list[str]
    #: (job, partition) -> what the run did
    runs: dict[tuple[str, str], RunReport]

    @property
    def warehouse(self):  # clickloop.storage.Warehouse
        return build_resources(self.settings)["warehouse"].get()


def build_price_bug_loop(root: Path) -> PriceBugLoop:
    keys = settings_keys(_settings(root))[:3]
    settings = _settings(root).with_resource("simulator", **PRICE_BUG_SIMULATOR, scenario_start=keys[1])
    defs = build_defs(settings)
    instance = open_test_instance(root / "dagster_home")
    runner = JobConfigRunner(defs, instance)
    plan = [("feature_stats_job", k) for k in keys[:2]] + [("ingest_job", k) for k in keys]
    plan += [("events_job", keys[0]), ("events_job", keys[1])]
    runs = {(job, key): runner.run(job, key) for job, key in plan}
    return PriceBugLoop(root, settings, defs, instance, keys, runs)


_BUILT: dict[str, Any] = {}


def shared_history(factory: Any) -> History:
    """The session's history (built on first use; ``factory`` is pytest's ``tmp_path_factory``).
    Both tiers' conftests ask for it, and it is built once."""
    if "history" not in _BUILT:
        _BUILT["history"] = build_history(factory.mktemp("history"))
    return _BUILT["history"]


def shared_price_bug_loop(factory: Any) -> PriceBugLoop:
    """The session's price-bug loop (built on first use, once for both tiers)."""
    if "price_bug" not in _BUILT:
        _BUILT["price_bug"] = build_price_bug_loop(factory.mktemp("price_bug"))
    return _BUILT["price_bug"]
