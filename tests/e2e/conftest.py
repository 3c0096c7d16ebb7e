"""Fixtures of the end-to-end tier (real processes, PostgreSQL, a browser); the helpers they use
are in ``tests/e2e/support.py``.

The long work of the tier runs in the background from the first test of the tier on, at a lower
CPU priority, while the other tests run: the daemon test's history (``make scenario`` on
PostgreSQL), then the scenarios' shared warm-up, then the five scenarios from copies of it. The
scenario tests run last and wait for their results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    DAEMON_HISTORY_TIMEOUT_S,
    ROLLOUT_TIMEOUT_S,
    SCENARIO_ORDER,
    SCENARIO_TIMEOUT_S,
    SCENARIO_WORKERS,
    Background,
    DaemonHistory,
    PostgresDatabases,
    RolloutRun,
    build_daemon_history,
    build_scenario_warmup,
    run_rollout,
    run_scenario,
)

E2E = Path(__file__).resolve().parent
#: The modules whose results are built in the background.
DAEMON_MODULE = "test_daemon.py"
SCENARIO_MODULE = "test_scenarios.py"
#: This tier's modules, in the order they run: the tests without background work first (the
#: daemon's history, the scenarios' warm-up and the rollout scenario are built beside them), then
#: the daemon test, the scenario tests and the rollout test, which wait for what ran in the
#: background meanwhile. (The
#: benchmark, also in this folder, is not one of them: it runs before the first of them, with the
#: machine to itself.)
ROLLOUT_MODULE = "test_rollout.py"
MODULE_ORDER = (
    "test_celery_backfill.py",
    "test_postgres_instance.py",
    "test_deployment.py",
    "test_ui.py",
    "test_dask_training.py",
    "test_object_storage.py",
    "test_ranker.py",
    "test_faults.py",
    DAEMON_MODULE,
    SCENARIO_MODULE,
    ROLLOUT_MODULE,
)
OWN_MODULES = set(MODULE_ORDER)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """This tier's own modules in :data:`MODULE_ORDER`, where the first of them was collected;
    every other test keeps its place."""
    own = [i for i, item in enumerate(items) if item.path.name in OWN_MODULES and E2E in item.path.parents]
    if not own:
        return
    ordered = sorted((items[i] for i in own), key=lambda item: MODULE_ORDER.index(item.path.name))
    skip = set(own)
    rest = [item for i, item in enumerate(items) if i not in skip]
    items[:] = rest[: own[0]] + ordered + rest[own[0] :]


@pytest.fixture()
def postgres_databases() -> Iterator[PostgresDatabases]:
    """Creates fresh databases on the local PostgreSQL server; drops them all afterwards."""
    databases = PostgresDatabases()
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture(scope="session")
def session_databases() -> Iterator[PostgresDatabases]:
    """Databases that live as long as the session (those built in the background)."""
    databases = PostgresDatabases()
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture(scope="session")
def background(session_databases: PostgresDatabases) -> Iterator[Background]:
    """The background jobs, ``SCENARIO_WORKERS`` at a time: the daemon's history beside the
    scenarios' warm-up, then the scenarios. (Stopped before their databases are dropped.)"""
    jobs = Background(workers=SCENARIO_WORKERS)
    try:
        yield jobs
    finally:
        jobs.shutdown()


def _selected_modules(session: pytest.Session) -> set[str]:
    return {item.path.name for item in session.items if E2E in item.path.parents}


@pytest.fixture(autouse=True)
def _start_background_work(request: pytest.FixtureRequest) -> None:
    """At the first test of this tier's own modules: start what the selected daemon, scenario and
    rollout tests will need (once per session)."""
    if request.node.path.name not in OWN_MODULES or E2E not in request.node.path.parents:
        return
    selected = _selected_modules(request.session)
    jobs: Background = request.getfixturevalue("background")
    if DAEMON_MODULE in selected and not jobs.started("daemon_history"):
        root = request.getfixturevalue("tmp_path_factory").mktemp("daemon")
        url = request.getfixturevalue("session_databases").create()
        jobs.submit("daemon_history", build_daemon_history, root, url, datetime.now(UTC))
    scenarios = SCENARIO_MODULE in selected and not jobs.started("warmup")
    if scenarios:
        root = request.getfixturevalue("tmp_path_factory").mktemp("scenarios")
        warmup = jobs.submit("warmup", build_scenario_warmup, root)
    # the rollout scenario next: the first worker free (after the daemon's history) takes it
    if ROLLOUT_MODULE in selected and not jobs.started("rollout"):
        jobs.submit("rollout", run_rollout, request.getfixturevalue("tmp_path_factory").mktemp("rollout"))
    if scenarios:
        # the longest first, so the workers finish together; each waits for the warm-up
        for name in SCENARIO_ORDER:
            jobs.submit(name, lambda n=name: run_scenario(n, root, warmup.result()))


@pytest.fixture()
def daemon_history(background: Background) -> DaemonHistory:
    """The daemon test's history (built in the background since the tier's first test)."""
    return background.result("daemon_history", DAEMON_HISTORY_TIMEOUT_S)


@pytest.fixture()
def rollout_result(background: Background) -> RolloutRun:
    """``make scenario name=rollout``, run in the background since the tier's first test."""
    return background.result("rollout", ROLLOUT_TIMEOUT_S)


@pytest.fixture()
def scenario_result(background: Background) -> Callable[[str], dict[str, Any]]:
    """``scenario_result(name)``: the JSON rows of a scenario run in the background."""

    def result(name: str) -> dict[str, Any]:
        return background.result(name, 2 * SCENARIO_TIMEOUT_S)

    return result
