"""The test tiers mirror the layout: ``tests/core`` (the domain core, fast), ``tests/resources`` and
``tests/assets`` and ``tests/pipelines`` (Dagster definitions materialized in-process), and
``tests/e2e`` (real processes and services: PostgreSQL, the daemon, the webserver, a browser, the
scenarios, the benchmark). Everything under ``tests/e2e`` is marked ``e2e``, so
``pytest -m "not e2e"`` is the inner loop and ``make test`` runs every tier but one: ``tests/scale``
(the stable stream at 5,000 and 20,000 requests a day, some 15 minutes on 2 cores) is skipped unless
``--scale`` is given (``make test-scale``, which ``.ci/run`` runs after ``make test``).

When the session selects end-to-end tests that need long background work (the daemon's history, the
drift scenarios, the rollout scenario), that work starts at the session's first test, whatever its
tier, and runs at a lower CPU priority beside the rest: on 2 cores the faster tiers' single-threaded
tests leave a core free for it, and its tests find it done when they run last.

``make test`` runs two pytest-xdist workers, which take the tests group by group
(:func:`worker_group`): the end-to-end tier is one group on one worker (with the background work,
started at its first test), the tiers that read the shared simulated history are another (the
history is built once), and every other module is a group of its own, so a module's fixtures are
built once. The two big groups are queued first, so each worker starts on one.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.e2e.support import Background, PostgresDatabases

TESTS = Path(__file__).resolve().parent
E2E = TESTS / "e2e"
SCALE = TESTS / "scale"
#: the xdist groups: the end-to-end tier, and what reads the shared history (``tests/assets/history.py``)
E2E_GROUP = "e2e"
HISTORY_GROUP = "history"
#: the tiers, and the end-to-end module, whose tests read the shared history
HISTORY_READERS = (TESTS / "assets", TESTS / "pipelines", E2E / "test_ranker.py")


def worker_group(path: Path) -> str:
    """The group a pytest-xdist worker takes whole: the history's readers, the end-to-end tier, else
    the test module itself."""
    path = path.resolve()
    if any(path == reader or reader in path.parents for reader in HISTORY_READERS):
        return HISTORY_GROUP
    if E2E in path.parents:
        return E2E_GROUP
    return str(path.relative_to(TESTS))


def _under_xdist(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--scale",
        action="store_true",
        help="run the scale tier (tests/scale: the stable stream at 5,000 and 20,000 requests a day)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)
        if SCALE in item.path.resolve().parents:
            item.add_marker(pytest.mark.scale)
            if not config.getoption("--scale"):
                item.add_marker(pytest.mark.skip(reason="the scale tier: make test-scale (pytest --scale)"))
    if _under_xdist(config):
        # the two long groups first, so that each worker takes one before the modules are shared out
        rank = {E2E_GROUP: 0, HISTORY_GROUP: 1}
        items.sort(key=lambda item: rank.get(worker_group(item.path), 2))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scope scheduling, the scopes being :func:`worker_group` of each test's file, queued
    in the workers' collection order (the two long groups first)."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = config.rootpath / nodeid.split("::", 1)[0]
            # each scale of the scale tier on a worker of its own
            return nodeid if SCALE in path.resolve().parents else worker_group(path)

    config.option.loadscopereorder = False
    return GroupScheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item (``item.rep_call``), so fixtures can tell at
    teardown whether the test failed (the browser fixture then saves a screenshot)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _background_modules(session: pytest.Session) -> frozenset[str]:
    """The selected end-to-end modules whose results are built in the background."""
    cached = getattr(session, "_clickloop_background_modules", None)
    if cached is None:
        from tests.e2e.support import BACKGROUND_MODULES

        cached = frozenset(
            item.path.name
            for item in session.items
            if item.path.name in BACKGROUND_MODULES and E2E in item.path.parents
        )
        session._clickloop_background_modules = cached  # type: ignore[attr-defined]
    return cached


@pytest.fixture(scope="session")
def session_databases() -> Iterator[PostgresDatabases]:
    """Databases that live as long as the session (those built in the background)."""
    from tests.e2e.support import PostgresDatabases

    databases = PostgresDatabases()
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture(scope="session")
def background(session_databases: PostgresDatabases) -> Iterator[Background]:
    """The background jobs, ``SCENARIO_WORKERS`` at a time: the daemon's history beside the
    scenarios' warm-up, then the rollout scenario and the scenarios. (Stopped before their
    databases are dropped.)"""
    from tests.e2e.support import SCENARIO_WORKERS, Background

    jobs = Background(workers=SCENARIO_WORKERS)
    try:
        yield jobs
    finally:
        jobs.shutdown()


@pytest.fixture(autouse=True)
def _start_background_work(request: pytest.FixtureRequest) -> None:
    """At the session's first test (under xdist: the end-to-end worker's first test): start what the
    selected daemon, scenario and rollout tests will need (once per session; nothing when none of
    them is selected)."""
    if _under_xdist(request.config) and worker_group(request.node.path) != E2E_GROUP:
        return
    selected = _background_modules(request.session)
    if not selected:
        return
    from tests.e2e.support import (
        DAEMON_MODULE,
        ROLLOUT_MODULE,
        SCENARIO_MODULE,
        SCENARIO_ORDER,
        build_daemon_history,
        build_scenario_warmup,
        run_rollout,
        run_scenario,
    )

    jobs: Background = request.getfixturevalue("background")
    factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    if DAEMON_MODULE in selected and not jobs.started("daemon_history"):
        url = request.getfixturevalue("session_databases").create()
        jobs.submit("daemon_history", build_daemon_history, factory.mktemp("daemon"), url, datetime.now(UTC))
    scenarios = SCENARIO_MODULE in selected and not jobs.started("warmup")
    if scenarios:
        root = factory.mktemp("scenarios")
        warmup = jobs.submit("warmup", build_scenario_warmup, root)
    # the rollout scenario next: the first worker free (after the daemon's history) takes it
    if ROLLOUT_MODULE in selected and not jobs.started("rollout"):
        jobs.submit("rollout", run_rollout, factory.mktemp("rollout"))
    if scenarios:
        # the longest first, so the workers finish together; each waits for the warm-up
        for name in SCENARIO_ORDER:
            jobs.submit(name, lambda n=name: run_scenario(n, root, warmup.result()))
