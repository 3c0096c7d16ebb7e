"""Settings from the environment, as Dagster ``EnvVar``s where a variable is set.

Every setting has an embedded default, so ``make run`` needs no configuration; set the variable to
change it. Where the variable is set, the resource is given an ``EnvVar`` (the UI shows it as read
from the environment, and the value is never stored in the run's config).
"""

import os
from pathlib import Path

from dagster import EnvVar


def env_str(name: str, default: str) -> str | EnvVar:
    return EnvVar(name) if os.getenv(name) else default


def env_int(name: str, default: int) -> int | EnvVar:
    return EnvVar.int(name) if os.getenv(name) else default


def env_float(name: str, default: float) -> float | EnvVar:
    return EnvVar.float(name) if os.getenv(name) else default


def data_dir() -> Path:
    """The one data directory: Parquet partitions, the landing folder of the simulator, reports."""
    return Path(os.getenv("CLICKLOOP_DATA_DIR", "data")).expanduser().resolve()


def log_source_kind() -> str:
    """``simulator`` (the embedded default) or ``landing`` (real logs in ``CLICKLOOP_LANDING_DIR``)."""
    kind = os.getenv("CLICKLOOP_LOG_SOURCE", "simulator")
    if kind not in ("simulator", "landing"):
        raise ValueError(f"CLICKLOOP_LOG_SOURCE must be 'simulator' or 'landing', not {kind!r}")
    return kind


def executor_kind() -> str:
    """How a run executes its steps: ``multiprocess`` (Dagster's default: one process per step,
    steps in parallel) or ``in_process`` (one process: no per-step start-up, which costs seconds of
    imports per step; right for small daily runs on a small machine)."""
    kind = os.getenv("CLICKLOOP_EXECUTOR", "multiprocess")
    if kind not in ("multiprocess", "in_process"):
        raise ValueError(f"CLICKLOOP_EXECUTOR must be 'multiprocess' or 'in_process', not {kind!r}")
    return kind


def ensure_dagster_home() -> Path:
    """``DAGSTER_HOME`` (default: under the data directory), created with a minimal SQLite-backed
    ``dagster.yaml`` when it has none (telemetry off). An existing ``dagster.yaml`` is left alone."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(data_dir() / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("# embedded default: SQLite storage in this folder\ntelemetry:\n  enabled: false\n")
    return home
