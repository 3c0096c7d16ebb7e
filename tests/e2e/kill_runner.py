"""Runs of the loop's jobs in processes that can be killed: each run is a child forked from one warm
process (imports done once), executing one job in-process on a persistent SQLite instance, with
``CLICKLOOP_FAULT_POINT`` set when the run is to be killed (:mod:`clickloop.faults`).

``python -m tests.e2e.kill_runner`` is the warm process: it reads one JSON request a line on stdin,
forks a child per request, waits for it, and answers one JSON line (how the child ended). The
children write their logs to files, never to the protocol's stdout. :class:`KillRunner` is the
client the tests use. Fork before any thread exists: the warm process only imports (XGBoost's
OpenMP pool, DuckDB's threads and gRPC start in the children).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_DATE = "2026-10-01"
#: a small world: a day simulates and ingests in well under a second
SIMULATOR = {"requests_per_day": 1_500, "n_users": 2_000, "n_ads": 300, "n_sites": 30}
#: a short training on 1 day, validated on the 2nd, tested on the 3rd
TRAINING_OPS: dict[str, Any] = {
    "training_and_test_sets": {"config": {"train_days": 1}},
    "ctr_model": {
        "config": {
            "n_trials": 1,
            "search_num_boost_round": 20,
            "num_boost_round": 60,
            "early_stopping_rounds": 10,
            "min_child_weight": 1.0,
        }
    },
}


def settings_for(data_dir: str):  # -> pipelines.settings.Settings
    from pipelines.settings import Settings

    return Settings(
        data_dir=Path(data_dir),
        start_date=START_DATE,
        executor="in_process",
        resources={"simulator": SIMULATOR},
    )


def _child(request: Mapping[str, Any]) -> int:
    """Execute one job (or some of its assets) for a partition; 0 on success, 1 on failure."""
    from dagster import AssetKey

    from clickloop.faults import FAULT_POINT_ENV
    from pipelines.cli.runner import QUIET
    from pipelines.definitions import build_defs
    from pipelines.settings import ensure_dagster_home

    if request.get("fault"):
        os.environ[FAULT_POINT_ENV] = request["fault"]
    for name, value in (request.get("env") or {}).items():
        os.environ[name] = value
    from dagster import DagsterInstance

    started = time.perf_counter()
    defs = build_defs(settings_for(request["data_dir"]))
    instance = DagsterInstance.from_config(str(ensure_dagster_home(Path(request["home"]))))
    try:
        assets = request.get("assets")
        result = defs.resolve_job_def(request["job"]).execute_in_process(
            instance=instance,
            partition_key=request.get("partition"),
            raise_on_error=False,
            run_config={**QUIET, **({"ops": request["ops"]} if request.get("ops") else {})},
            asset_selection=[AssetKey(a) for a in assets] if assets else None,
        )
        print(f"kill_runner: {request['job']} ran in {time.perf_counter() - started:.2f}s", file=sys.stderr)
        return 0 if result.success else 1
    finally:
        instance.dispose()


def _warm_up(data_dir: str) -> None:
    """What every child would otherwise do again: the imports, the simulated world."""
    import mlflow.xgboost  # noqa: F401

    import pipelines.definitions
    import resources.tracking  # noqa: F401

    resources = pipelines.definitions.build_resources(settings_for(data_dir))
    resources["log_source"].world()


def _learn_imports(path: Path) -> None:
    """Import what a child imported during its run (it wrote the names to ``path``), so the next
    children start warm. Importing starts no thread; a module that fails to import is skipped."""
    if not path.exists():
        return
    for name in path.read_text().split():
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 (a private module that only imports in context)
                pass
    path.unlink()


def _fork(request: Mapping[str, Any], copy: int, imported: Path) -> int:
    """Start one child running ``request``; its output goes to the request's log (``.<copy>``)."""
    log_path = request["log"] if copy == 0 else f"{request['log']}.{copy}"
    log = open(log_path, "ab")  # noqa: SIM115 (handed to the child)
    pid = os.fork()
    if pid == 0:  # the run
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        before = set(sys.modules)
        try:
            code = _child(request)
        except BaseException:
            traceback.print_exc()
            code = 2
        if copy == 0:
            imported.write_text("\n".join(sorted(set(sys.modules) - before)))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    log.close()
    return pid


def serve() -> None:
    """The warm process: fork a child per request line, answer how it ended."""
    warm = False
    protocol = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        if not warm:
            _warm_up(request["data_dir"])
            warm = True
        imported = Path(request["log"]).with_suffix(".modules")
        children = [_fork(request, copy, imported) for copy in range(int(request.get("copies") or 1))]
        forked = time.perf_counter()
        answers = []
        for pid in children:  # all started before any is waited for: they run at once
            _, status = os.waitpid(pid, 0)
            answers.append(
                {
                    "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                    "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                }
            )
        print(
            f"{len(children)} child(ren) took {time.perf_counter() - forked:.2f}s",
            file=sys.stderr,
            flush=True,
        )
        _learn_imports(imported)
        answer = answers[0] if len(answers) == 1 else {"copies": answers}
        protocol.write(json.dumps(answer) + "\n")
        protocol.flush()


@dataclass(frozen=True)
class Ended:
    """How a run's process ended."""

    signal: int | None
    exit: int | None
    log: Path

    @property
    def killed(self) -> bool:
        return self.signal == signal.SIGKILL

    @property
    def succeeded(self) -> bool:
        return self.exit == 0

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"


class KillRunner:
    """The client of the warm process; :meth:`close` ends it."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.kill_runner"],
            cwd=Path(__file__).resolve().parents[2],
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log_dir / "kill_runner.log", "ab"),  # noqa: SIM115
            text=True,
        )

    def run(
        self,
        data_dir: Path,
        home: Path,
        job: str,
        partition: str | None = None,
        assets: Sequence[str] | None = None,
        ops: Mapping[str, Any] | None = None,
        fault: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Ended:
        """Run ``job`` in a fresh child; ``fault`` names the point at which it kills itself."""
        (ended,) = self.run_at_once(1, data_dir, home, job, partition, assets, ops, fault, env)
        return ended

    def run_at_once(
        self,
        copies: int,
        data_dir: Path,
        home: Path,
        job: str,
        partition: str | None = None,
        assets: Sequence[str] | None = None,
        ops: Mapping[str, Any] | None = None,
        fault: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> list[Ended]:
        """Run the same job ``copies`` times at once, each in its own child."""
        self.count += 1
        log = self.log_dir / f"{self.count:03d}-{job}-{partition or 'all'}-{fault or 'clean'}.log"
        request = {
            "data_dir": str(data_dir),
            "home": str(home),
            "job": job,
            "partition": partition,
            "assets": list(assets) if assets else None,
            "ops": dict(ops) if ops else None,
            "fault": fault,
            "env": dict(env or {}),
            "log": str(log),
            "copies": copies,
        }
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the kill runner ended: see {self.log_dir / 'kill_runner.log'}")
        ended = json.loads(answer)
        each = ended["copies"] if copies > 1 else [ended]
        logs = [log] + [Path(f"{log}.{i}") for i in range(1, copies)]
        return [Ended(e["signal"], e["exit"], path) for e, path in zip(each, logs, strict=True)]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    serve()
