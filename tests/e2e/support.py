"""Helpers of the end-to-end tier: real processes, PostgreSQL databases, the webserver's GraphQL
API, the definitions a started process serves.

Everything here is real: processes are started in their own process group (so the whole tree,
run workers included, is killed at teardown), PostgreSQL databases are created and dropped on the
local server, and the webserver is driven through the same GraphQL API its UI uses. The fixtures
built on these live in ``tests/e2e/conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import requests

REPO = Path(__file__).resolve().parents[2]
#: The virtualenv's ``bin`` folder: the console scripts (``dagster``, ``dagster-webserver``, ...).
VENV_BIN = Path(sys.executable).parent
#: Admin connection to the local PostgreSQL server (trust auth).
PG_ADMIN_URL = os.getenv("CLICKLOOP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
#: Simulated ad requests per day in the processes the tests start: small, so runs take seconds.
TEST_REQUESTS_PER_DAY = "3000"
#: Environment prefixes a developer's shell (or the Makefile) may set; the started processes get
#: only what the test gives them.
_INHERITED_PREFIXES = ("CLICKLOOP_", "DAGSTER_", "MLFLOW_")

T = TypeVar("T")


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def process_env(**overrides: str) -> dict[str, str]:
    """This process's environment without clickloop/Dagster/MLflow settings, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
    env.update(overrides)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # XGBoost trains with 2 OpenMP threads, which by default spin while they wait: on 2 cores
    # shared with the other processes of the tier that turned a 20 s training into 500 s. Passive
    # waiting changes no result, only who gets the CPU.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


@dataclass
class ManagedProcess:
    """A command started in its own session; :meth:`stop` kills its whole process group."""

    name: str
    argv: Sequence[str]
    log_path: Path
    popen: subprocess.Popen[bytes] = field(repr=False)

    @classmethod
    def start(
        cls, name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path, cwd: Path = REPO
    ) -> ManagedProcess:
        """Start ``argv`` with stdout and stderr going to ``log_dir/<name>.log``."""
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name=name, argv=list(argv), log_path=log_path, popen=popen)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the process's output (for assertion messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return f"--- {self.name} ({self.log_path}) ---\n{text[-chars:]}"

    def assert_alive(self) -> None:
        assert self.alive(), f"{self.name} exited with {self.popen.returncode}\n{self.log_tail()}"

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace_s``.

        ``dagster dev`` does not always exit on SIGTERM/SIGINT (its children linger), so the group
        is always killed at the end; the leader is reaped either way.
        """
        try:
            pgid = os.getpgid(self.popen.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel did not deliver SIGKILL
            pass


def stop_all(processes: Sequence[ManagedProcess]) -> None:
    """Stop processes in reverse start order (clients before the servers they talk to)."""
    for process in reversed(processes):
        process.stop()


def wait_until(
    probe: Callable[[], T | None],
    timeout_s: float,
    what: str,
    interval_s: float = 0.5,
    alive: Sequence[ManagedProcess] = (),
) -> T:
    """Call ``probe`` until it returns something truthy (returned), failing after ``timeout_s``.

    Fails early, with the process's log, if one of ``alive`` exits in the meantime.
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        for process in alive:
            process.assert_alive()
        try:
            value = probe()
            if value:
                return value
        except (requests.RequestException, OSError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            logs = "\n".join(p.log_tail() for p in alive)
            raise AssertionError(
                f"timed out after {timeout_s:.0f}s waiting for {what} ({last_error})\n{logs}"
            )
        time.sleep(interval_s)


# --- the webserver's GraphQL API ---------------------------------------------------------------


class GraphQLError(AssertionError):
    """The webserver answered a GraphQL request with errors."""


@dataclass(frozen=True)
class DagsterWebserver:
    """A running dagster-webserver and its GraphQL API (what the UI itself calls)."""

    base_url: str

    def server_info(self) -> dict[str, Any] | None:
        """``/server_info`` once the webserver answers, else None."""
        response = requests.get(f"{self.base_url}/server_info", timeout=5)
        return response.json() if response.ok else None

    def query(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST a GraphQL document; its ``data``, or :class:`GraphQLError`."""
        response = requests.post(
            f"{self.base_url}/graphql",
            json={"query": query, "variables": dict(variables or {})},
            timeout=30,
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise GraphQLError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def loaded_location(self, location_name: str) -> dict[str, Any] | None:
        """The code location's workspace entry once it is loaded without error, else None.

        Raises if it loaded with an error (a broken definitions module should fail loudly)."""
        data = self.query(
            """
            query {
              workspaceOrError {
                __typename
                ... on Workspace {
                  locationEntries {
                    name
                    loadStatus
                    locationOrLoadError {
                      __typename
                      ... on RepositoryLocation { repositories { name } }
                      ... on PythonError { message stack }
                    }
                  }
                }
              }
            }
            """
        )
        entries = data["workspaceOrError"].get("locationEntries") or []
        for entry in entries:
            if entry["name"] != location_name or entry["loadStatus"] != "LOADED":
                continue
            located = entry["locationOrLoadError"]
            if located is None:
                return None
            if located["__typename"] == "PythonError":
                raise AssertionError(
                    f"code location {location_name} failed to load: {located['message']}\n"
                    + "".join(located.get("stack") or [])
                )
            return located
        return None

    def repository_name(self, location_name: str) -> str:
        """The one repository of the code location (``__repository__`` for a ``Definitions``)."""
        located = self.loaded_location(location_name)
        assert located is not None, f"code location {location_name} is not loaded"
        names = [r["name"] for r in located["repositories"]]
        assert len(names) == 1, f"expected one repository in {location_name}, got {names}"
        return names[0]

    def run_status(self, run_id: str) -> str:
        data = self.query(
            "query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }",
            {"id": run_id},
        )
        result = data["runOrError"]
        assert result["__typename"] == "Run", f"run {run_id}: {result}"
        return result["status"]

    def run_errors(self, run_id: str) -> str:
        """The error and failure messages of a run's event log (for assertion messages)."""
        data = self.query(
            """
            query($id: ID!) {
              logsForRun(runId: $id) {
                __typename
                ... on EventConnection {
                  events {
                    __typename
                    ... on MessageEvent { message level }
                    ... on ExecutionStepFailureEvent {
                      error { message stack errorChain { error { message stack } } }
                    }
                    ... on RunFailureEvent { error { message } }
                  }
                }
              }
            }
            """,
            {"id": run_id},
        )
        events = data["logsForRun"].get("events") or []
        lines = []
        for event in events:
            error = event.get("error")
            if error:
                lines.append(f"{event['__typename']}: {error['message']}{''.join(error.get('stack') or [])}")
                for link in error.get("errorChain") or []:
                    cause = link["error"]
                    lines.append(f"  caused by: {cause['message']}{''.join(cause.get('stack') or [])}")
            elif event.get("level") in ("ERROR", "CRITICAL"):
                lines.append(f"{event['__typename']}: {event.get('message')}")
        return "\n".join(lines) or "<no error events>"

    def wait_for_run(self, run_id: str, timeout_s: float, alive: Sequence[ManagedProcess] = ()) -> str:
        """Poll the run until it ends; its final status (SUCCESS, FAILURE or CANCELED)."""

        def finished() -> str | None:
            status = self.run_status(run_id)
            return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

        return wait_until(finished, timeout_s, f"run {run_id} to finish", interval_s=1.0, alive=alive)


# --- PostgreSQL --------------------------------------------------------------------------------


class PostgresDatabases:
    """Fresh, empty databases on the local PostgreSQL server, created on demand."""

    def __init__(self, admin_url: str = PG_ADMIN_URL) -> None:
        import psycopg2

        self.admin_url = admin_url
        self.names: list[str] = []
        self._admin = psycopg2.connect(admin_url)
        self._admin.autocommit = True

    def create(self) -> str:
        """A new database; its URL (same server and user as the admin URL)."""
        name = f"clickloop_it_{uuid.uuid4().hex[:10]}"
        with self._admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return self.admin_url.rsplit("/", 1)[0] + f"/{name}"

    def drop_all(self) -> None:
        with self._admin.cursor() as cur:
            for name in self.names:
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        self._admin.close()


# --- the definitions a process serves ----------------------------------------------------------


def definitions_of(env: Mapping[str, str]) -> Any:
    """The ``Definitions`` a Dagster process started with ``env`` serves: ``pipelines.definitions.defs``
    reads the environment when Dagster loads it (``Settings.from_env``), so this is
    ``build_defs(Settings.from_env(env))``."""
    from pipelines.definitions import build_defs
    from pipelines.settings import Settings

    return build_defs(Settings.from_env(env))


def asset_edges(defs: Any) -> set[tuple[str, str]]:
    """Every lineage edge of the definitions, ``(upstream, downstream)`` as user strings."""
    graph = defs.get_repository_def().asset_graph
    return {
        (parent.to_user_string(), node.key.to_user_string())
        for node in graph.asset_nodes
        for parent in node.parent_keys
    }


def asset_names(defs: Any) -> set[str]:
    """Every asset key of the definitions, as user strings (``a/b`` for a multi-part key)."""
    return {node.key.to_user_string() for node in defs.get_repository_def().asset_graph.asset_nodes}


def workspace_location_name() -> str:
    """The code location's name, from the repository's ``workspace.yaml`` (what the UI shows)."""
    import yaml

    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    (target,) = entry.values()
    return str(target["location_name"])


# --- commands run to completion, and work started in the background -----------------------------


@dataclass(frozen=True)
class CommandResult:
    """A finished command: its exit status and its output (stdout and stderr, interleaved)."""

    argv: list[str]
    returncode: int
    log_path: Path

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 6000) -> str:
        return f"--- {' '.join(self.argv[-12:])} ({self.log_path}) ---\n{self.output[-chars:]}"


def run_command(
    argv: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float,
    niceness: int = 0,
    cwd: Path = REPO,
) -> CommandResult:
    """Run ``argv`` to completion in its own process group (killed as a whole on timeout), with
    its output in ``log_path``; ``niceness`` > 0 runs it at a lower CPU priority (``nice``), so
    it takes the CPU the foreground tests leave idle."""
    if _STOPPING.is_set():
        raise AssertionError(f"not started, the session is ending: {' '.join(argv)}")
    command = [*(["nice", "-n", str(niceness)] if niceness else []), *argv]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process = ManagedProcess(name=log_path.stem, argv=command, log_path=log_path, popen=popen)
        with _RUNNING_LOCK:
            stopping = _STOPPING.is_set()
            if not stopping:
                _RUNNING[popen.pid] = process
        if stopping:
            process.stop()
            raise AssertionError(f"stopped, the session is ending: {' '.join(argv)}")
        try:
            popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.stop()
            raise AssertionError(
                f"{' '.join(argv)} did not finish within {timeout_s:.0f}s\n{process.log_tail()}"
            ) from None
        except BaseException:
            process.stop()
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.pop(popen.pid, None)
    return CommandResult(list(argv), popen.returncode, log_path)


#: The commands :func:`run_command` is running (the session stops them if it ends first).
_RUNNING: dict[int, ManagedProcess] = {}
_RUNNING_LOCK = threading.Lock()
_STOPPING = threading.Event()


def stop_running_commands() -> None:
    """Stop every command :func:`run_command` is still running (their process groups), and
    start no other."""
    with _RUNNING_LOCK:
        _STOPPING.set()
        running = list(_RUNNING.values())
    for process in running:
        process.stop()


class Background:
    """Work that starts when the first test needing it starts and runs beside the other tests
    (each job runs its commands at a lower CPU priority); a test waits for the result it needs.

    Jobs run in submission order on ``workers`` threads; a job may wait for an earlier one."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="e2e-background")
        self._futures: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()

    def submit(self, name: str, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Start ``fn(*args)`` as job ``name`` unless it was started already."""
        with self._lock:
            if name not in self._futures:
                self._futures[name] = self._pool.submit(fn, *args)
            return self._futures[name]

    def started(self, name: str) -> bool:
        with self._lock:
            return name in self._futures

    def result(self, name: str, timeout_s: float) -> Any:
        """Job ``name``'s result (waiting up to ``timeout_s``); its exception if it failed."""
        with self._lock:
            future = self._futures[name]
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            raise AssertionError(f"background job {name} did not finish within {timeout_s:.0f}s") from None

    def shutdown(self) -> None:
        """Cancel what has not started, stop what still runs (a session that ended early, e.g.
        with ``-x``), and wait for the workers."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        stop_running_commands()
        self._pool.shutdown(wait=True)


# --- the scenarios (``make scenario``) and the daemon's history --------------------------------

#: The end-to-end modules whose results are built in the background (``tests/conftest.py``).
DAEMON_MODULE = "test_daemon.py"
SCENARIO_MODULE = "test_scenarios.py"
ROLLOUT_MODULE = "test_rollout.py"
BACKGROUND_MODULES = (DAEMON_MODULE, SCENARIO_MODULE, ROLLOUT_MODULE)

#: How the scenarios are run (what each must show is in ``tests/e2e/test_scenarios.py``): every
#: scenario starts from a copy of one warm-up, built once per session. 10 days served by the random
#: policy (days 0..9; their events train the first model), the champion from day 11, the scenario
#: from day 13 (days 11 and 12 are the pre-scenario level).
SCENARIO_REQUESTS_PER_DAY = 3000
SCENARIO_WARMUP_DAYS = 10
SCENARIO_START = 13
#: Day rows of each scenario (``--days``). stable: served for a fortnight (the longest a champion
#: serves before the staleness sensor asks for a retraining). The drift scenarios: their first
#: retraining is launched after day START + 1 at the latest, so its model serves from START + 2 on:
#: the last two rows (START + 2, START + 3) are served after it. price_unit_bug: 3 bad days.
SCENARIO_DAYS = {
    "stable": SCENARIO_WARMUP_DAYS + 1 + 14,
    "device_shift": SCENARIO_START + 4,
    "ctr_drop": SCENARIO_START + 4,
    "new_campaigns": SCENARIO_START + 4,
    "price_unit_bug": SCENARIO_START + 3,
}
#: The order the scenarios start in: the longest first (stable serves 14 days; each drift scenario
#: retrains once, the cool-down holding back the rest), so the workers finish together.
SCENARIO_ORDER = ("stable", "device_shift", "ctr_drop", "new_campaigns", "price_unit_bug")
#: The scenarios run this many at a time (CLICKLOOP_TEST_SCENARIO_WORKERS overrides).
SCENARIO_WORKERS = int(os.getenv("CLICKLOOP_TEST_SCENARIO_WORKERS", "2"))
SCENARIO_TIMEOUT_S = 1500
#: Background commands run at this niceness: the foreground tests (whose processes have start-up
#: and run deadlines) get the CPU first.
BACKGROUND_NICENESS = 10


def scenario_argv(
    name: str, days: int, *options: str, requests_per_day: int = SCENARIO_REQUESTS_PER_DAY
) -> list[str]:
    """``python -m pipelines.cli.scenario NAME`` at the tier's scale (or ``requests_per_day``)."""
    return [
        sys.executable,
        "-m",
        "pipelines.cli.scenario",
        name,
        "--warmup-days",
        str(SCENARIO_WARMUP_DAYS),
        "--start-day",
        str(SCENARIO_START),
        "--days",
        str(days),
        "--requests-per-day",
        str(requests_per_day),
        *options,
    ]


def scenario_env(data_dir: Path) -> dict[str, str]:
    # one DuckDB thread per scenario process: two scenarios share the 2 cores
    return process_env(CLICKLOOP_DATA_DIR=str(data_dir), CLICKLOOP_DUCKDB_THREADS="1")


def build_scenario_warmup(root: Path) -> Path:
    """The warm-up every scenario starts from (``--warmup-only``); its scenario data folder."""
    days = max(SCENARIO_DAYS.values())
    done = run_command(
        scenario_argv("stable", days, "--warmup-only"),
        scenario_env(root),
        root / "logs" / "warmup.log",
        SCENARIO_TIMEOUT_S,
        niceness=BACKGROUND_NICENESS,
    )
    assert done.returncode == 0, f"the scenarios' warm-up failed:\n{done.tail()}"
    return root / "scenarios" / "stable"


def run_scenario(name: str, root: Path, warmup: Path) -> dict[str, Any]:
    """``python -m pipelines.cli.scenario NAME --warmup-from WARMUP`` in its own data folder;
    its JSON day rows, its output and its data folder."""
    out = root / f"{name}.json"
    done = run_command(
        scenario_argv(name, SCENARIO_DAYS[name], "--json", str(out), "--warmup-from", str(warmup)),
        scenario_env(root / name),
        root / "logs" / f"{name}.log",
        SCENARIO_TIMEOUT_S,
        niceness=BACKGROUND_NICENESS,
    )
    assert done.returncode == 0, f"{name}:\n{done.tail()}"
    result = json.loads(out.read_text())
    result["stdout"] = done.output
    result["data_dir"] = str(root / name / "scenarios" / name)
    return result


#: ``make scenario name=rollout`` at the tier's scale (see ``tests/e2e/test_rollout.py``).
ROLLOUT_ARGV = ["--warmup-days", "7", "--requests-per-day", "3000"]
ROLLOUT_TIMEOUT_S = 1500


@dataclass
class RolloutRun:
    """The rollout scenario's decisions (its JSON steps) and its printed output."""

    steps: list[dict[str, Any]]
    output: str


def run_rollout(root: Path) -> RolloutRun:
    """``python -m pipelines.cli.rollout`` in its own data folder, at a lower CPU priority."""
    out = root / "rollout.json"
    done = run_command(
        [sys.executable, "-m", "pipelines.cli.rollout", *ROLLOUT_ARGV, "--json", str(out)],
        process_env(CLICKLOOP_DATA_DIR=str(root), CLICKLOOP_DUCKDB_THREADS="1"),
        root / "rollout.log",
        ROLLOUT_TIMEOUT_S,
        niceness=BACKGROUND_NICENESS,
    )
    assert done.returncode == 0, f"the rollout scenario failed:\n{done.tail()}"
    return RolloutRun(json.loads(out.read_text()), done.output)


#: The daemon test's stream: days before the newest partition (10 served by the random policy, 9
#: of them with features for the first training, then the champion) and its scale.
DAEMON_HISTORY_DAYS = 11
DAEMON_REQUESTS_PER_DAY = "2000"
DAEMON_HISTORY_TIMEOUT_S = 900


def latest_tick(now: datetime, hour: int) -> datetime:
    """The daily refresh's most recent tick (``hour``:00 UTC) at or before ``now``."""
    tick = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return tick if tick <= now else tick - timedelta(days=1)


def refresh_hour_away_from(now: datetime) -> int:
    """The refresh hour whose ticks are 11 to 12 hours before and after ``now``: no tick passes
    while the history is built and the daemon runs, whatever the time of day."""
    return (now.hour + 12) % 24


@dataclass(frozen=True)
class DaemonHistory:
    """Days of a device-shift stream up to the day before the newest partition, built by
    ``make scenario`` on a PostgreSQL instance (the repository's dagster.yaml); the newest day is
    left to the daemon."""

    tick: datetime
    #: the daily refresh's UTC hour in this test (``CLICKLOOP_REFRESH_HOUR``)
    hour: int
    newest: date
    shifted: date
    url: str
    home: Path
    env: dict[str, str]


def build_daemon_history(root: Path, url: str, now: datetime) -> DaemonHistory:
    """The history of the daemon test on the PostgreSQL database ``url``: the first days served
    by the random policy, the first model, and the shifted day (the newest but one) served by it."""
    hour = refresh_hour_away_from(now)
    tick = latest_tick(now, hour)
    newest = (tick - timedelta(days=1)).date()  # the day the catch-up tick ingests
    shifted = newest - timedelta(days=1)
    first = newest - timedelta(days=DAEMON_HISTORY_DAYS)
    data = root / "scenarios" / "device_shift"  # where `make scenario` keeps a scenario's data
    home = data / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = process_env(
        DAGSTER_HOME=str(home),
        DAGSTER_POSTGRES_URL=url,
        CLICKLOOP_MONITORING_DB_URL=url,
        CLICKLOOP_DATA_DIR=str(data),
        CLICKLOOP_START_DATE=first.isoformat(),
        CLICKLOOP_REQUESTS_PER_DAY=DAEMON_REQUESTS_PER_DAY,
        CLICKLOOP_SCENARIO="device_shift",
        CLICKLOOP_SCENARIO_START=shifted.isoformat(),
        CLICKLOOP_REFRESH_HOUR=str(hour),
        # one process per run (each step process would import the project again)
        CLICKLOOP_EXECUTOR="in_process",
    )
    # in-process on the same PostgreSQL instance: up to the shifted day's logs
    done = run_command(
        [
            sys.executable,
            "-m",
            "pipelines.cli.scenario",
            "device_shift",
            "--warmup-days",
            str(DAEMON_HISTORY_DAYS - 2),
            "--start-day",
            str(DAEMON_HISTORY_DAYS - 1),
            "--days",
            str(DAEMON_HISTORY_DAYS - 1),
            "--requests-per-day",
            DAEMON_REQUESTS_PER_DAY,
        ],
        {**env, "CLICKLOOP_DATA_DIR": str(root), "CLICKLOOP_DUCKDB_THREADS": "1"},
        root / "logs" / "history.log",
        DAEMON_HISTORY_TIMEOUT_S,
        niceness=BACKGROUND_NICENESS,
    )
    assert done.returncode == 0, f"the daemon test's history failed:\n{done.tail()}"
    return DaemonHistory(tick, hour, newest, shifted, url, home, env)
