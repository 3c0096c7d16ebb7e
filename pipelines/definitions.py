"""The code location: the one ``Definitions`` of clickloop, built from settings.

``defs`` is what ``workspace.yaml``, ``dagster dev`` and ``dagster api grpc`` load; it reads the
environment (:meth:`Settings.from_env`) when Dagster loads it, not when this module is imported.
``make run``, ``make scenario`` and the tests call :func:`build_defs` with their own settings.
"""

from typing import Any

from dagster import (
    Definitions,
    ExecutorDefinition,
    Field,
    Noneable,
    Selector,
    in_process_executor,
    multi_or_in_process_executor,
)
from dagster import definitions as lazy_definitions

from assets import loop_assets
from assets.partitions import Calendar
from clickloop.contract_file import load_contract
from clickloop.presentation import REPORTS_FOLDER
from pipelines.alerts import alert_sensors
from pipelines.jobs import build_jobs
from pipelines.redelivery import redelivery_sensors
from pipelines.rollout_sensor import rollout_sensor
from pipelines.schedules import build_schedules
from pipelines.sensors import RetrainPolicy, chain_sensors, retraining_sensors
from pipelines.settings import Settings
from resources.alerts import AlertWebhook
from resources.contract import LogContractResource
from resources.dask_cluster import DaskCluster
from resources.landing import LandingFolder, LogSource
from resources.monitoring_store import MonitoringStore
from resources.online_store import OnlineFeatureStore
from resources.reports import ReportsSite
from resources.rollout import RolloutResource
from resources.serving import ChampionServing
from resources.simulator import AdServerSimulator
from resources.tracking import ModelRegistry
from resources.warehouse import WarehouseResource

#: What the multiprocess executor's forkserver imports once per run before it forks a process per
#: step: the code location and the libraries most steps import (Great Expectations, MLflow,
#: matplotlib: about 7 s of imports each step would otherwise pay; Evidently, used by one step, is
#: left to it). A run's ``execution`` config may replace the list.
FORKSERVER_PRELOAD = ("pipelines.definitions", "great_expectations", "mlflow", "matplotlib.pyplot")
#: The Celery executor's config; ``deploy/celery/worker.yaml`` gives the workers the same.
CELERY_EXECUTOR_CONFIG = {"broker": {"env": "CLICKLOOP_CELERY_BROKER"}, "backend": "rpc://"}


def build_log_source(settings: Settings, serving: ChampionServing) -> LogSource:
    """The simulator by default (the champion serves it once promoted); real logs in a landing
    folder with ``log_source="landing"``."""
    fields = settings.resource("log_source")
    if settings.log_source == "landing":
        if "landing_dir" not in fields:
            raise ValueError("reading real logs needs their landing folder: set CLICKLOOP_LANDING_DIR")
        return LandingFolder(**fields)
    fields.setdefault("landing_dir", str(settings.data_dir / "landing"))
    return AdServerSimulator(
        **fields, start_date=settings.start_date, serving=serving, **settings.resource("simulator")
    )


def build_resources(settings: Settings) -> dict[str, Any]:
    data = str(settings.data_dir)
    warehouse = WarehouseResource(data_dir=data, **settings.resource("warehouse"))
    registry = ModelRegistry(data_dir=data, **settings.resource("model_registry"))
    contract = LogContractResource(path=settings.log_contract, **settings.resource("log_contract"))
    rollout = RolloutResource(**settings.resource("rollout"))
    serving = ChampionServing(
        registry=registry,
        warehouse=warehouse,
        log_contract=contract,
        rollout=rollout,
        **settings.resource("serving"),
    )
    return {
        "warehouse": warehouse,
        "model_registry": registry,
        "monitoring_store": MonitoringStore(data_dir=data, **settings.resource("monitoring_store")),
        "log_contract": contract,
        "log_source": build_log_source(settings, serving),
        "retrain_policy": RetrainPolicy(**settings.resource("retrain_policy")),
        "rollout": rollout,
        "online_store": OnlineFeatureStore(**settings.resource("online_store")),
        "alerts": AlertWebhook(**settings.resource("alerts")),
        "dask_cluster": DaskCluster(**settings.resource("dask_cluster")),
        "reports": ReportsSite(root=str(warehouse.root / REPORTS_FOLDER), **settings.resource("reports")),
    }


def build_defs(settings: Settings) -> Definitions:
    """The repository of one deployment: its calendar, its log contract, its resources."""
    calendar = Calendar(settings.start_date, settings.feature_window_days)
    contract = load_contract(settings.log_contract or None)
    assets, checks = loop_assets(calendar, contract)
    jobs = build_jobs(contract)
    return Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs.all(),
        schedules=build_schedules(jobs, settings.refresh_hour),
        sensors=[
            *chain_sensors(calendar, jobs),
            *retraining_sensors(calendar, contract, jobs.training),
            *redelivery_sensors(calendar, contract, jobs),
            rollout_sensor(jobs.rollout),
            *alert_sensors(),
        ],
        resources=build_resources(settings),
        executor=build_executor(settings.executor),
    )


def forkserver_executor() -> ExecutorDefinition:
    """Dagster's default executor (a process per step, or ``in_process`` when a run's config picks
    it), its step processes forked from a server that has imported :data:`FORKSERVER_PRELOAD`
    (Dagster's default spawns each from a new interpreter, which loads the code location and its
    libraries again). Run config: ``multiprocess: {max_concurrent, preload_modules}`` or
    ``in_process: {}``, as for Dagster's own."""

    def config(run: dict[str, Any]) -> dict[str, Any]:
        if "in_process" in run:
            return {"in_process": {}}
        chosen = run["multiprocess"]
        preload = {"preload_modules": list(chosen["preload_modules"])}
        return {
            "multiprocess": {
                "max_concurrent": chosen["max_concurrent"],
                "start_method": {"forkserver": preload},
            }
        }

    multiprocess = {
        "max_concurrent": Field(
            Noneable(int), default_value=None, description="step processes at once (default: the CPUs)"
        ),
        "preload_modules": Field(
            [str], default_value=list(FORKSERVER_PRELOAD), description="imported before forking"
        ),
    }
    return multi_or_in_process_executor.configured(
        config,
        config_schema=Field(
            Selector({"multiprocess": multiprocess, "in_process": {}}), default_value={"multiprocess": {}}
        ),
    )


def build_executor(name: str) -> ExecutorDefinition:
    """The executor of ``Settings.executor``: a process per step by default (:func:`forkserver_executor`)."""
    if name == "in_process":
        return in_process_executor
    if name == "celery":  # the workers: `dagster-celery worker start -y deploy/celery/worker.yaml`
        from dagster_celery import celery_executor

        return celery_executor.configured(CELERY_EXECUTOR_CONFIG, name="celery")
    if name == "k8s":  # each step a Kubernetes Job sized by its asset's op tags (assets/compute.py)
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return forkserver_executor()


@lazy_definitions
def defs() -> Definitions:
    """The code location of the environment's deployment."""
    return build_defs(Settings.from_env())
