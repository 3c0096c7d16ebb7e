"""Shared fixtures and helpers for the tests that start real Dagster processes
(``tests/test_deployment.py``, ``tests/test_ui.py``).

Everything here is real: processes are started in their own process group (so the whole tree,
run workers included, is killed at teardown), PostgreSQL databases are created and dropped on the
local server, and the webserver is driven through the same GraphQL API its UI uses.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
#: The virtualenv's ``bin`` folder: the console scripts (``dagster``, ``dagster-webserver``, ...).
VENV_BIN = Path(sys.executable).parent
#: Admin connection to the local PostgreSQL server (trust auth), as in test_postgres_instance.
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
                lines.append(
                    f"{event['__typename']}: {error['message']}{''.join(error.get('stack') or [])}"
                )
                for link in error.get("errorChain") or []:
                    cause = link["error"]
                    lines.append(
                        f"  caused by: {cause['message']}{''.join(cause.get('stack') or [])}"
                    )
            elif event.get("level") in ("ERROR", "CRITICAL"):
                lines.append(f"{event['__typename']}: {event.get('message')}")
        return "\n".join(lines) or "<no error events>"

    def wait_for_run(
        self, run_id: str, timeout_s: float, alive: Sequence[ManagedProcess] = ()
    ) -> str:
        """Poll the run until it ends; its final status (SUCCESS, FAILURE or CANCELED)."""

        def finished() -> str | None:
            status = self.run_status(run_id)
            return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

        return wait_until(
            finished, timeout_s, f"run {run_id} to finish", interval_s=1.0, alive=alive
        )


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


@pytest.fixture()
def postgres_databases() -> Iterator[PostgresDatabases]:
    """Creates fresh databases on the local PostgreSQL server; drops them all afterwards."""
    databases = PostgresDatabases()
    try:
        yield databases
    finally:
        databases.drop_all()


# --- the definitions under test ----------------------------------------------------------------


@pytest.fixture(scope="session")
def clickloop_defs() -> Any:
    """The project's one ``Definitions`` (``pipelines.definitions.defs``), as processes load it."""
    from pipelines.definitions import defs

    return defs


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
