"""Settings: what the environment may change, read in one place (:meth:`Settings.from_env`).

Every setting has an embedded default, so ``make run`` needs no configuration. The defaults are
stated once, in the class they configure (a resource, a core dataclass); a setting left unset here
keeps it. String and integer settings the environment sets are handed to the resources as Dagster
``EnvVar``s (the UI shows them as read from the environment, and the value is never stored in a
run's config); Dagster has no float ``EnvVar``, so the thresholds are read as values, as are the few
settings that shape the graph (the first day, the history window, the log contract, the log source,
the executor), since the graph is built from them.

Tests, ``make run`` and ``make scenario`` build their own ``Settings`` and their own definitions;
nothing writes ``os.environ``.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dagster import EnvVar

from clickloop.features import DEFAULT_WINDOW_DAYS
from clickloop.simulator import SimulatorConfig

#: The first daily partition by default: the embedded simulator's first day.
DEFAULT_START_DATE = SimulatorConfig().start_date
#: The daily refresh's UTC hour by default: yesterday's clicks (their attribution window) are in by then.
DEFAULT_REFRESH_HOUR = 1
LOG_SOURCES = ("simulator", "landing")
EXECUTORS = ("multiprocess", "in_process", "celery", "k8s")

#: Resource fields the environment may set: variable -> (resource, field, type).
ENV_RESOURCE_FIELDS: dict[str, tuple[str, str, type]] = {
    "CLICKLOOP_LANDING_DIR": ("log_source", "landing_dir", str),
    "CLICKLOOP_PSEUDONYM_KEY": ("log_contract", "pseudonym_key", str),
    "CLICKLOOP_SEED": ("simulator", "seed", int),
    "CLICKLOOP_REQUESTS_PER_DAY": ("simulator", "requests_per_day", int),
    "CLICKLOOP_SCENARIO": ("simulator", "scenario", str),
    "CLICKLOOP_SCENARIO_START": ("simulator", "scenario_start", str),
    "CLICKLOOP_EXPLORATION_SHARE": ("simulator", "exploration_share", float),
    "CLICKLOOP_ROLLOUT": ("rollout", "enabled", bool),
    "CLICKLOOP_CANARY_SHARE": ("rollout", "canary_share", float),
    "CLICKLOOP_DUCKDB_THREADS": ("warehouse", "duckdb_threads", int),
    "CLICKLOOP_DUCKDB_MEMORY_LIMIT": ("warehouse", "duckdb_memory_limit", str),
    "MLFLOW_TRACKING_URI": ("model_registry", "tracking_uri", str),
    "MLFLOW_UI_URL": ("model_registry", "ui_url", str),
    "CLICKLOOP_MONITORING_DB_URL": ("monitoring_store", "url", str),
    "CLICKLOOP_REDIS_URL": ("online_store", "url", str),
    "CLICKLOOP_RANKER_URL": ("serving", "ranker_url", str),
    "CLICKLOOP_DRIFT_SHARE_THRESHOLD": ("retrain_policy", "drift_share_threshold", float),
    "CLICKLOOP_CALIBRATION_TOLERANCE": ("retrain_policy", "calibration_tolerance", float),
    "CLICKLOOP_NE_TOLERANCE": ("retrain_policy", "normalized_entropy_tolerance", float),
    "CLICKLOOP_COLD_START_TOLERANCE": ("retrain_policy", "cold_start_tolerance", float),
    "CLICKLOOP_MAX_CHAMPION_AGE_DAYS": ("retrain_policy", "max_champion_age_days", int),
    "CLICKLOOP_ALERT_WEBHOOK": ("alerts", "url", str),
    "CLICKLOOP_DASK_SCHEDULER": ("dask_cluster", "scheduler_address", str),
    "CLICKLOOP_WAREHOUSE_URL": ("warehouse", "url", str),
    "CLICKLOOP_MLFLOW_ARTIFACTS": ("model_registry", "artifact_location", str),
    "CLICKLOOP_REPORTS_URL": ("reports", "base_url", str),
}


def _env_var(name: str, kind: type, env: Mapping[str, str]) -> Any:
    if kind is int:
        return EnvVar.int(name)
    if kind is bool:  # nor a bool EnvVar: a value
        value = env[name].strip().lower()
        if value not in ("1", "true", "yes", "0", "false", "no"):
            raise ValueError(f"{name} must be true or false, not {env[name]!r}")
        return value in ("1", "true", "yes")
    if kind is float:  # Dagster has no float EnvVar (and a float field refuses a str one): a value
        try:
            return float(env[name])
        except ValueError:
            raise ValueError(f"{name} must be a number, not {env[name]!r}") from None
    return EnvVar(name)


def _int_setting(env: Mapping[str, str], name: str, default: int) -> int:
    """An integer setting of the environment; unset or empty: its default."""
    value = env.get(name) or str(default)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {value!r}") from None


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything that may differ between two deployments of the loop."""

    #: Parquet partitions, quarantine, reports, the simulator's landing folder, the embedded stores
    data_dir: Path
    #: the first daily partition (the first day with logs)
    start_date: str = DEFAULT_START_DATE
    #: days of history behind each day's features
    feature_window_days: int = DEFAULT_WINDOW_DAYS
    #: the log contract's YAML file; empty: the simulator's
    log_contract: str = ""
    #: ``simulator`` (the embedded default) or ``landing`` (real logs in a landing folder)
    log_source: str = "simulator"
    #: ``multiprocess`` (Dagster's default, a process per step), ``in_process`` (one process per run)
    #: ``celery`` (each step a task on Celery workers; broker: ``CLICKLOOP_CELERY_BROKER``) or ``k8s``
    #: (each step a Kubernetes Job sized by its op tags, see ``deploy/k8s/dagster.yaml``)
    executor: str = "multiprocess"
    #: resource fields by resource name (values or ``EnvVar``s); anything unset keeps its default
    resources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: the Dagster instance's folder for the command-line tools; None: ``<data_dir>/dagster_home``
    dagster_home: Path | None = None
    #: the UTC hour of the daily refresh: yesterday's logs are complete by then
    refresh_hour: int = DEFAULT_REFRESH_HOUR

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        if self.dagster_home is not None:
            object.__setattr__(self, "dagster_home", Path(self.dagster_home).expanduser().resolve())
        _choice("log_source", self.log_source, LOG_SOURCES)
        _choice("executor", self.executor, EXECUTORS)
        if not 0 <= self.refresh_hour <= 23:
            raise ValueError(f"refresh_hour must be an hour of the day (0 to 23), not {self.refresh_hour}")

    def resource(self, name: str) -> dict[str, Any]:
        """The fields set for one resource."""
        return dict(self.resources.get(name, {}))

    def with_resource(self, name: str, **values: Any) -> "Settings":
        """These settings with more fields of one resource set."""
        merged = {k: dict(v) for k, v in self.resources.items()}
        merged.setdefault(name, {}).update(values)
        return replace(self, resources=merged)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """The settings of the environment (``os.environ`` unless given)."""
        env = os.environ if environ is None else environ
        resources: dict[str, dict[str, Any]] = {}
        for variable, (resource, name, kind) in ENV_RESOURCE_FIELDS.items():
            if env.get(variable):
                resources.setdefault(resource, {})[name] = _env_var(variable, kind, env)
        return cls(
            data_dir=Path(env.get("CLICKLOOP_DATA_DIR") or "data"),
            start_date=env.get("CLICKLOOP_START_DATE") or DEFAULT_START_DATE,
            feature_window_days=_int_setting(env, "CLICKLOOP_FEATURE_WINDOW_DAYS", DEFAULT_WINDOW_DAYS),
            log_contract=env.get("CLICKLOOP_LOG_CONTRACT", ""),
            log_source=env.get("CLICKLOOP_LOG_SOURCE") or "simulator",
            executor=env.get("CLICKLOOP_EXECUTOR") or "multiprocess",
            resources=resources,
            dagster_home=Path(env["DAGSTER_HOME"]) if env.get("DAGSTER_HOME") else None,
            refresh_hour=_int_setting(env, "CLICKLOOP_REFRESH_HOUR", DEFAULT_REFRESH_HOUR),
        )


def dagster_home(settings: Settings) -> Path:
    """The instance folder of these settings: ``DAGSTER_HOME`` when it was set, else under the data
    directory."""
    return settings.dagster_home or settings.data_dir / "dagster_home"


def ensure_dagster_home(home: Path) -> Path:
    """The folder, created with a minimal SQLite-backed ``dagster.yaml`` when it has none
    (telemetry off). An existing ``dagster.yaml`` is left alone."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("# embedded default: SQLite storage in this folder\ntelemetry:\n  enabled: false\n")
    return home
