"""The test tiers mirror the layout: ``tests/core`` (the domain core, fast), ``tests/resources`` and
``tests/assets`` and ``tests/pipelines`` (Dagster definitions materialized in-process), and
``tests/e2e`` (real processes and services: PostgreSQL, the daemon, the webserver, a browser, the
scenarios, the benchmark). Everything under ``tests/e2e`` is marked ``e2e``, so
``pytest -m "not e2e"`` is the inner loop and ``make test`` runs every tier.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item (``item.rep_call``), so fixtures can tell at
    teardown whether the test failed (the browser fixture then saves a screenshot)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
