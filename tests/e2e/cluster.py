"""Real Dask clusters for the end-to-end tier: a ``dask scheduler`` and ``dask worker`` processes on
127.0.0.1 (free ports, each in its own process group, killed at teardown), ready when the
scheduler reports every worker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.support import (
    VENV_BIN,
    ManagedProcess,
    free_port,
    port_open,
    process_env,
    stop_all,
    wait_until,
)

#: Seconds a scheduler and its workers get to start (imports of dask, distributed, xgboost).
START_TIMEOUT_S = 90


@contextmanager
def dask_cluster(
    log_dir: Path, workers: int = 2, threads: int = 1, memory_limit: str = "3GB"
) -> Iterator[str]:
    """A scheduler and ``workers`` worker processes; yields the scheduler's address."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = process_env()
    processes: list[ManagedProcess] = []
    try:
        scheduler = ManagedProcess.start(
            "dask-scheduler",
            [
                str(VENV_BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
            ],
            env,
            log_dir,
        )
        processes.append(scheduler)
        wait_until(lambda: port_open(port), START_TIMEOUT_S, "the dask scheduler", alive=processes)
        for n in range(workers):
            argv = [str(VENV_BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--no-dashboard"]
            argv += ["--nthreads", str(threads), "--memory-limit", memory_limit, "--name", f"worker-{n}"]
            argv += ["--local-directory", str(log_dir / f"worker-{n}")]
            argv += ["--preload", "clickloop.dask_worker"]  # imports before the first task
            processes.append(ManagedProcess.start(f"dask-worker-{n}", argv, env, log_dir))
        with Client(address, timeout=START_TIMEOUT_S) as client:
            wait_until(
                lambda: len(client.scheduler_info(n_workers=-1)["workers"]) >= workers,
                START_TIMEOUT_S,
                f"{workers} dask workers",
                alive=processes,
            )
        yield address
    finally:
        stop_all(processes)
