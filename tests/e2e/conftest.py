"""Fixtures of the end-to-end tier (real processes, PostgreSQL, a browser); the helpers they use
are in ``tests/e2e/support.py``.

The long work of the tier runs in the background from the session's first test on (the root
``tests/conftest.py`` starts it when this tier's tests are selected), at a lower CPU priority, while
the other tiers and tests run: the daemon test's history (``make scenario`` on PostgreSQL), then
the scenarios' shared warm-up, then the five scenarios from copies of it. The scenario tests run
last and wait for their results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    DAEMON_HISTORY_TIMEOUT_S,
    DAEMON_MODULE,
    ROLLOUT_MODULE,
    ROLLOUT_TIMEOUT_S,
    SCENARIO_MODULE,
    SCENARIO_TIMEOUT_S,
    Background,
    DaemonHistory,
    PostgresDatabases,
    RolloutRun,
)

E2E = Path(__file__).resolve().parent
#: This tier's modules, in the order they run: the tests without background work first (the
#: daemon's history, the scenarios' warm-up and the rollout scenario are built beside them, and
#: beside the other tiers before them), then the daemon test, the scenario tests and the rollout
#: test, which wait for what ran in the background meanwhile. (The benchmark's smoke test, also in
#: this folder, is not one of them: it runs where it was collected, before them; it asserts what
#: the benchmark measures and writes, never how fast.)
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
