"""What a person does in the Dagster UI, in a real browser against ``make ui``'s ``dagster dev``.

Headless Chromium (Debian's ``/usr/bin/chromium``, installed by ``tests/ensure_chromium.sh``) is
driven with Playwright: the global lineage shows every asset and edge of the project's
``Definitions`` (and its screenshot is saved for the README), an asset is materialized from its page
and its metadata shows up, the daily schedule is switched on and off, and a sensor's state is shown;
the inline plots of the metadata are drawn and the Evidently report opens from its link (the reports
folder served over HTTP as ``make ui`` serves it). What the browser shows is checked against the
webserver's GraphQL API and the ``Definitions``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clickloop.presentation import REPORTS_FOLDER
from pipelines.settings import DEFAULT_START_DATE, ensure_dagster_home
from tests.e2e.support import (
    REPO,
    TEST_REQUESTS_PER_DAY,
    VENV_BIN,
    DagsterWebserver,
    ManagedProcess,
    asset_edges,
    asset_names,
    definitions_of,
    free_port,
    process_env,
    stop_all,
    wait_until,
    workspace_location_name,
)

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    _reason = (
        "\n" + "!" * 78 + "\n"
        f"!!! BROWSER TESTS SKIPPED: {CHROMIUM} does not exist.\n"
        "!!! Run tests/ensure_chromium.sh as root (make test does), or\n"
        "!!! apt-get install chromium chromium-driver\n" + "!" * 78
    )
    print(_reason, file=sys.stderr)
    pytest.skip(_reason, allow_module_level=True)

from playwright.sync_api import (  # noqa: E402
    Browser,
    Page,
    expect,
    sync_playwright,
)
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

#: Where the lineage screenshot goes (the README embeds it).
SCREENSHOT = REPO / "tests" / "screenshots" / "lineage.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1920, "height": 1000}
#: Browser actions on 2 busy cores: generous, a slow machine must not fail the tests.
UI_TIMEOUT_MS = 60_000
RUN_TIMEOUT_S = 120
START_TIMEOUT_S = 150


@dataclass(frozen=True)
class DagsterDev:
    """``dagster dev`` (webserver + daemon + code server) serving the project, and the
    ``Definitions`` of the settings it was started with."""

    api: DagsterWebserver
    location: str
    repository: str
    data_dir: Path
    defs: Any
    #: where the reports folder is served (``CLICKLOOP_REPORTS_URL``)
    reports_url: str

    @property
    def url(self) -> str:
        return self.api.base_url

    def selector(self, kind: str, name: str) -> dict[str, str]:
        """A ``ScheduleSelector``/``SensorSelector`` (``kind`` is ``schedule`` or ``sensor``)."""
        return {
            "repositoryLocationName": self.location,
            "repositoryName": self.repository,
            f"{kind}Name": name,
        }


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    """``make ui``: the embedded default (SQLite instance in a fresh DAGSTER_HOME) on a temporary
    data directory with a small simulator; one for every test of the module."""
    root = tmp_path_factory.mktemp("ui")
    # what `make ui` starts beside dagster dev: the reports folder over HTTP on 127.0.0.1
    reports_dir = root / "data" / REPORTS_FOLDER
    reports_dir.mkdir(parents=True)
    reports_url = f"http://127.0.0.1:{free_port()}"
    env = process_env(
        CLICKLOOP_DATA_DIR=str(root / "data"),
        CLICKLOOP_REPORTS_URL=reports_url,
        DAGSTER_HOME=str(root / "dagster_home"),
        CLICKLOOP_REQUESTS_PER_DAY=TEST_REQUESTS_PER_DAY,
        CLICKLOOP_START_DATE=DEFAULT_START_DATE,
        # a run launched from the UI executes in its run worker, without a process per step (each
        # would import the project again); the UI, not the executor, is under test here
        CLICKLOOP_EXECUTOR="in_process",
    )
    # what `make ui` does first: a DAGSTER_HOME with a minimal dagster.yaml (telemetry off)
    ensure_dagster_home(Path(env["DAGSTER_HOME"]))
    port = free_port()
    process = ManagedProcess.start(
        "dagster-dev",
        [
            str(VENV_BIN / "dagster"),
            "dev",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "workspace.yaml",
        ],
        env,
        root / "logs",
    )
    processes = [process]
    try:
        processes.append(
            ManagedProcess.start(
                "reports-server",
                [
                    sys.executable,
                    "-m",
                    "http.server",
                    reports_url.rsplit(":", 1)[1],
                    "--bind",
                    "127.0.0.1",
                    "--directory",
                    str(reports_dir),
                ],
                env,
                root / "logs",
            )
        )
        api = DagsterWebserver(f"http://127.0.0.1:{port}")
        location = workspace_location_name()
        # what the started code location serves: the definitions of the same settings (built
        # while the processes start)
        defs = definitions_of(env)
        wait_until(api.server_info, START_TIMEOUT_S, "dagster dev's webserver", alive=[process])
        wait_until(
            lambda: api.loaded_location(location),
            START_TIMEOUT_S,
            f"code location {location}",
            alive=[process],
        )
        # the "Join the Dagster community" dialog would cover the page: dismiss it as a person would
        # once (the webserver remembers it)
        assert api.query("mutation { setNuxSeen }")["setNuxSeen"] is True
        yield DagsterDev(api, location, api.repository_name(location), root / "data", defs, reports_url)
    finally:
        stop_all(processes)


@pytest.fixture(scope="module")
def clickloop_defs(dagster_dev: DagsterDev) -> Any:
    """The ``Definitions`` the started ``dagster dev`` serves: ``build_defs`` of its settings."""
    return dagster_dev.defs


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (no browser download)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def page(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    """A fresh browser context (no stored UI state); a screenshot is saved when the test fails."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    try:
        yield page
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            shot = tmp_path / "failure.png"
            try:
                page.screenshot(path=str(shot), full_page=True)
                print(f"\nscreenshot of the failed page ({page.url}): {shot}", file=sys.stderr)
            except Exception as exc:  # the page may be gone; the failure itself matters more
                print(f"\nno screenshot of the failed page: {exc}", file=sys.stderr)
        context.close()


def _key(name: str) -> Any:
    """The ``AssetKey`` of a user string (``a/b`` for a multi-part key)."""
    from dagster import AssetKey

    return AssetKey(name.split("/"))


# --- the global lineage ------------------------------------------------------------------------


def _node_names(page: Page) -> set[str]:
    """The asset names drawn in the graph (asset nodes, not group headers)."""
    return {t.strip() for t in page.locator("[class*='AssetNode_assetName']").all_inner_texts()}


#: Small (zoomed-out) nodes shorten longer names in the middle: ``a_very_long…name``.
MINIMAL_NAME_MAX = 18


def _drawn_name(name: str) -> re.Pattern[str]:
    """How a node writes an asset name: whole, or shortened in the middle with "…"."""
    if len(name) <= MINIMAL_NAME_MAX:
        return re.compile(rf"^{re.escape(name)}$")
    return re.compile(rf"^{re.escape(name[:4])}.*…|^{re.escape(name)}$")


def _shows(drawn: list[str], name: str) -> bool:
    """Whether one of the ``drawn`` node labels is ``name`` (possibly shortened with "…")."""
    for label in drawn:
        if label == name:
            return True
        head, ellipsis, tail = label.partition("…")
        if ellipsis and name.startswith(head) and name.endswith(tail) and len(name) > len(label):
            return True
    return False


def _zoom_to_fit(page: Page) -> bool:
    """Double-click an empty spot of the graph's canvas (the UI zooms the graph to fit), zooming
    out first when the graph covers the whole canvas; False when no empty spot was found."""
    for _ in range(6):
        spot = _empty_canvas_spot(page)
        if spot:
            page.mouse.dblclick(spot["x"], spot["y"])
            _wait_for_still_graph(page)  # the zoom is animated
            return True
        page.get_by_role("button", name="zoom_out", exact=True).click()
        _wait_for_still_graph(page)
    return False


def _graph_box(page: Page) -> list[float] | None:
    """Where the graph's drawing is on the page (it moves and scales while the view zooms)."""
    return page.evaluate(
        """() => {
            const svg = [...document.querySelectorAll('svg')]
                .find(s => s.querySelector('foreignObject'));
            if (!svg) return null;
            const r = svg.getBoundingClientRect();
            return [r.x, r.y, r.width, r.height].map(v => Math.round(v * 10) / 10);
        }"""
    )


def _wait_for_still_graph(page: Page, timeout_s: float = 15) -> None:
    """Poll the graph's box until it holds still over three polls (the zoom animation ended)."""
    boxes: list[list[float] | None] = []

    def still() -> bool:
        boxes.append(_graph_box(page))
        return len(boxes) >= 3 and boxes[-1] is not None and boxes[-1] == boxes[-2] == boxes[-3]

    wait_until(still, timeout_s, "the lineage graph's zoom to end", interval_s=0.1)


def _empty_canvas_spot(page: Page) -> dict[str, float] | None:
    """A point of the graph's canvas with nothing drawn on it (neither node, group nor toolbar)."""
    return page.evaluate(
        """() => {
            const svg = [...document.querySelectorAll('svg')]
                .find(s => s.querySelector('foreignObject'));
            const canvas = svg && svg.parentElement && svg.parentElement.parentElement;
            if (!canvas) return null;
            const r = canvas.getBoundingClientRect();
            for (const fy of [0.5, 0.35, 0.65, 0.2, 0.8]) {
                for (const fx of [0.015, 0.985, 0.5, 0.1, 0.9]) {
                    const x = r.left + fx * r.width, y = r.top + fy * r.height;
                    const hit = document.elementFromPoint(x, y);
                    if (hit === canvas || hit === svg || hit === svg.parentElement) return {x, y};
                }
            }
            return null;
        }"""
    )


def test_lineage_shows_every_asset_and_edge(page: Page, dagster_dev: DagsterDev, clickloop_defs: Any) -> None:
    """The global lineage draws a node for every asset of ``defs``; the edges the page loads from
    the API (``dependencyKeys``) are exactly the lineage of ``defs``. Saves the screenshot."""
    expected_names = asset_names(clickloop_defs)
    expected_edges = asset_edges(clickloop_defs)
    graph_responses = []
    page.on(
        "response",
        lambda r: (
            graph_responses.append(r)
            if "/graphql" in r.url and "dependencyKeys" in (r.request.post_data or "")
            else None
        ),
    )

    page.goto(f"{dagster_dev.url}/asset-groups")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    page.locator("svg foreignObject").first.wait_for()

    # make room for the graph: the asset tree and the navigation fold away
    tree_toggle = page.get_by_role("button", name="panel_show_right", exact=True)
    if tree_toggle.count() == 1:
        tree_toggle.click()
    # groups are drawn collapsed: open them all (gear menu of the graph's toolbar)
    page.get_by_role("button", name="settings", exact=True).click()
    expand = page.get_by_role("menuitem", name="Expand all groups")
    if expand.count():
        expand.click()
    else:  # a single group is drawn open already
        page.keyboard.press("Escape")
    page.get_by_role("button", name="Hide navigation").click()
    # the whole graph in the window (only nodes on screen are drawn)
    assert _zoom_to_fit(page), "found no empty spot of the graph canvas to double-click"

    expected = sorted(n.split("/")[-1] for n in expected_names)  # a node shows the key's last part

    def all_names_drawn() -> list[str] | None:
        drawn = sorted(_node_names(page))
        return drawn if len(drawn) == len(expected) and all(_shows(drawn, n) for n in expected) else None

    try:
        wait_until(all_names_drawn, UI_TIMEOUT_MS / 1000, "a node for every asset of defs")
    except AssertionError:
        raise AssertionError(
            f"lineage nodes {sorted(_node_names(page))} != assets of defs {expected}"
        ) from None
    for name in expected:  # each node visible, by its name, as a person sees it
        node = page.locator("[class*='AssetNode_assetName']").filter(has_text=_drawn_name(name)).first
        expect(node).to_be_visible()

    # the edges come from the API the page itself called
    assert graph_responses, "the lineage page loaded no asset dependencies from the GraphQL API"
    loaded_edges: set[tuple[str, str]] = set()
    for response in graph_responses:
        for node in _asset_nodes_in(response.json()):
            child = "/".join(node["assetKey"]["path"])
            loaded_edges.update(("/".join(dep["path"]), child) for dep in node["dependencyKeys"])
    assert loaded_edges == expected_edges

    # the whole graph, fitted to the window, for the README
    page.mouse.move(2, VIEWPORT["height"] - 2)  # no hover highlight in the picture
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def _asset_nodes_in(body: Any) -> Iterator[dict[str, Any]]:
    """Every object with ``assetKey`` and ``dependencyKeys`` in a GraphQL response."""
    if isinstance(body, dict):
        if "assetKey" in body and "dependencyKeys" in body:
            yield body
        for value in body.values():
            yield from _asset_nodes_in(value)
    elif isinstance(body, list):
        for value in body:
            yield from _asset_nodes_in(value)


# --- materializing an asset from its page ------------------------------------------------------

_MATERIALIZATION = """
query($key: AssetKeyInput!, $partition: String!) {
  assetNodes(assetKeys: [$key]) {
    assetMaterializations(partitions: [$partition]) {
      runId
      metadataEntries { label }
    }
  }
}
"""


def _launch_from_asset_page(page: Page, asset: str, partition: str, attempts: int = 2) -> str:
    """Materialize… → (confirm the missing-upstream warning) → type the partition → Launch 1 run;
    the run id from the toast's link.

    The asset page can re-render while its data arrives and close the launch dialog under the
    person's hands (seen once on a loaded machine): then the dialogs are closed and it is done
    again, once."""
    materialize = page.get_by_role("button", name=re.compile(r"Materialize…$"))
    dialogs = page.get_by_role("dialog")
    confirm = dialogs.filter(has_text="Are you sure?").get_by_role("button", name="Confirm")
    launch = dialogs.filter(has_text=f"Launch runs to materialize {asset}")
    launch_button = launch.get_by_role("button", name=re.compile(r"^Launch 1 run$"))
    # the page has loaded the asset's definition (its code location) before a person clicks
    expect(page.get_by_text("Code location", exact=True).first).to_be_visible()
    for attempt in range(1, attempts + 1):
        try:
            expect(materialize).to_be_enabled()
            materialize.click()
            # the UI first warns that the upstream partitions are missing: confirm and go on
            expect(confirm.or_(launch)).to_be_visible()
            if confirm.is_visible():
                confirm.click()
            expect(launch).to_be_visible()
            partitions = launch.get_by_role("textbox").first
            partitions.fill(partition)
            partitions.press("Enter")
            expect(launch_button).to_be_enabled(timeout=UI_TIMEOUT_MS / 3)
            launch_button.click()
            break
        except (AssertionError, PlaywrightTimeout):
            if attempt == attempts:
                raise
            page.keyboard.press("Escape")
            page.keyboard.press("Escape")
            expect(dialogs).to_have_count(0)

    # the toast links to the new run
    view = page.get_by_role("link", name="View", exact=True).first
    expect(view).to_be_visible()
    href = view.get_attribute("href") or ""
    match = re.search(r"/runs/([0-9a-f-]{36})", href)
    assert match, f"the launch toast links to {href!r}, not a run"
    return match[1]


def test_materialize_an_asset_from_its_page(page: Page, dagster_dev: DagsterDev, clickloop_defs: Any) -> None:
    """A person opens ``feature_stats`` (cheap: its first day has no history), clicks
    Materialize, picks the first partition and launches; the run succeeds and the asset's events
    show the new materialization with its metadata."""
    asset = "feature_stats"
    assert asset in asset_names(clickloop_defs), f"{asset} is no longer an asset of defs"
    partition = (
        clickloop_defs.get_repository_def()
        .asset_graph.get(_key(asset))
        .partitions_def.get_first_partition_key()
    )

    page.goto(f"{dagster_dev.url}/assets/{asset}")
    run_id = _launch_from_asset_page(page, asset, partition)

    status = dagster_dev.api.wait_for_run(run_id, RUN_TIMEOUT_S)
    assert status == "SUCCESS", f"run {run_id}: {status}\n{dagster_dev.api.run_errors(run_id)}"
    page.goto(f"{dagster_dev.url}/runs/{run_id}")
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()

    # what the materialization recorded, according to the API
    nodes = dagster_dev.api.query(_MATERIALIZATION, {"key": {"path": [asset]}, "partition": partition})[
        "assetNodes"
    ]
    (materialization,) = [m for m in nodes[0]["assetMaterializations"] if m["runId"] == run_id]
    labels = [entry["label"] for entry in materialization["metadataEntries"]]
    assert labels, f"the materialization of {asset} {partition} has no metadata"

    # ... and what the asset's page shows
    page.goto(f"{dagster_dev.url}/assets/{asset}")
    page.get_by_role("tab", name="Events").click()
    expect(page.get_by_text(re.compile(r"materialized in run")).first).to_be_visible()
    expect(page.get_by_role("link", name=run_id[:8]).first).to_be_visible()
    for label in labels:
        expect(page.get_by_text(label, exact=True).first).to_be_visible()


# --- schedules and sensors ---------------------------------------------------------------------

_SCHEDULE_STATUS = """
query($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    __typename
    ... on Schedule { scheduleState { status } }
  }
}
"""

_SENSOR_STATE = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { id status } }
  }
}
"""


def _is_daily(cron: Any) -> bool:
    """A cron schedule that fires once a day (``M H * * *``)."""
    crons = [cron] if isinstance(cron, str) else list(cron)
    return any(
        len(fields := c.split()) == 5 and fields[2:] == ["*", "*", "*"] and "*" not in fields[:2]
        for c in crons
    )


def _running_switch(page: Page) -> tuple[Any, Any]:
    """The "Running" switch of a schedule's or sensor's page: what a person clicks (the visible
    switch) and the checkbox that holds its state."""
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="Running", exact=True))
    return row.locator("label").filter(has=page.locator("input[type=checkbox]")), row.get_by_role("checkbox")


def test_turn_the_daily_schedule_on_and_off(page: Page, dagster_dev: DagsterDev, clickloop_defs: Any) -> None:
    """A person opens the daily schedule from the automation page and flips its "Running"
    switch on and off; after each click the page and the instance (GraphQL) agree."""
    schedules = [s for s in clickloop_defs.get_repository_def().schedule_defs if _is_daily(s.cron_schedule)]
    if not schedules:
        pytest.skip("defs has no daily schedule yet: nothing to switch on and off")
    name = schedules[0].name

    def status() -> str:
        data = dagster_dev.api.query(_SCHEDULE_STATUS, {"selector": dagster_dev.selector("schedule", name)})
        return data["scheduleOrError"]["scheduleState"]["status"]

    page.goto(f"{dagster_dev.url}/automation")
    page.get_by_role("link", name=re.compile(rf"\b{re.escape(name)}\b")).click()
    expect(page).to_have_url(re.compile(rf"/schedules/{re.escape(name)}$"))
    switch, checkbox = _running_switch(page)

    # on, then off (off, then on again if it was deployed running): the UI and the API agree
    initial = status()
    flipped = {"STOPPED": "RUNNING", "RUNNING": "STOPPED"}
    for expected in (flipped[initial], initial):
        expect(checkbox).to_be_checked(checked=expected == "STOPPED")  # the state before the click
        switch.click()
        expect(checkbox).to_be_checked(checked=expected == "RUNNING")
        wait_until(lambda want=expected: status() == want, 30, f"{name} to be {expected}")


def test_sensor_state_is_visible(page: Page, dagster_dev: DagsterDev, clickloop_defs: Any) -> None:
    """Every sensor of ``defs`` is listed on the automation page; a sensor's page shows its state
    (stopped, then running once started through the API, as a deployment would)."""
    sensors = sorted(s.name for s in clickloop_defs.get_repository_def().sensor_defs)
    if not sensors:
        pytest.skip("defs has no sensor yet: no sensor state to show")
    name = sensors[0]
    selector = dagster_dev.selector("sensor", name)

    def state() -> dict[str, str]:
        return dagster_dev.api.query(_SENSOR_STATE, {"selector": selector})["sensorOrError"]["sensorState"]

    page.goto(f"{dagster_dev.url}/automation")
    for sensor in sensors:
        expect(page.get_by_role("link", name=re.compile(rf"\b{re.escape(sensor)}\b"))).to_be_visible()

    page.get_by_role("link", name=re.compile(rf"\b{re.escape(name)}\b")).click()
    expect(page).to_have_url(re.compile(rf"/sensors/{re.escape(name)}$"))
    _, checkbox = _running_switch(page)
    if state()["status"] == "RUNNING":
        expect(checkbox).to_be_checked()
    else:
        expect(checkbox).not_to_be_checked()

    started = dagster_dev.api.query(
        "mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename } }",
        {"s": selector},
    )
    assert started["startSensor"]["__typename"] == "Sensor", started
    try:
        page.reload()
        _, checkbox = _running_switch(page)
        expect(checkbox).to_be_checked()
        assert state()["status"] == "RUNNING"
    finally:
        stopped = dagster_dev.api.query(
            "mutation($id: String!) { stopSensor(id: $id) { __typename } }", {"id": state()["id"]}
        )
        assert stopped["stopSensor"]["__typename"] == "StopSensorMutationResult", stopped
    page.reload()
    _, checkbox = _running_switch(page)
    expect(checkbox).not_to_be_checked()


# --- inline plots and the reports --------------------------------------------------------------


def _record_materialization(
    dagster_dev: DagsterDev, asset: str, partition: str, metadata: dict[str, Any]
) -> None:
    """A materialization of ``asset`` with ``metadata`` in dagster dev's instance (what a run of the
    asset records; its metadata is built by the asset's own code on small real inputs)."""
    from dagster import AssetMaterialization, DagsterInstance

    with DagsterInstance.from_config(str(dagster_dev.data_dir.parent / "dagster_home")) as instance:
        instance.report_runless_asset_event(
            AssetMaterialization(asset, partition=partition, metadata=metadata)
        )


def _drift_metadata(dagster_dev: DagsterDev, days: list[str]) -> dict[str, Any]:
    """The drift_report metadata of ``days[1]`` against ``days[0]`` (a new device in 40 % of its
    traffic): the real Evidently report written under the served reports folder."""
    from assets.monitoring import drift_metadata
    from clickloop.contract_file import load_contract
    from clickloop.drift import DriftColumns, DriftParams, drift_of_day
    from clickloop.features import FeatureSpec
    from clickloop.storage import Warehouse
    from resources.reports import ReportsSite
    from tests.core.synthetic import monitoring_frame, write_monitoring_day

    contract = load_contract()
    columns = DriftColumns.of(FeatureSpec.from_contract(contract), contract.has_served_predictions)
    warehouse = Warehouse(dagster_dev.data_dir)
    for i, day in enumerate(days):
        write_monitoring_day(warehouse, day, monitoring_frame(day, 1_000, seed=i, smart_tv=0.4 * i))
    outcome = drift_of_day(warehouse, days[1], days, columns, DriftParams(sample_rows=1_000))
    reports = ReportsSite(root=str(dagster_dev.data_dir / REPORTS_FOLDER), base_url=dagster_dev.reports_url)
    return drift_metadata(outcome, reports.link(str(outcome.path)))


def _reliability_metadata() -> dict[str, Any]:
    """model_evaluation's reliability plot of a slightly over-confident model."""
    import numpy as np
    from dagster import MetadataValue

    from clickloop.evaluation import reliability_png
    from clickloop.metrics import reliability_curve
    from clickloop.presentation import png_markdown

    rng = np.random.default_rng(0)
    predicted = rng.beta(2, 50, 20_000)
    clicked = (rng.random(predicted.size) < predicted * 0.8).astype(int)
    png = reliability_png({"model": reliability_curve(clicked, predicted)}, "Reliability")
    return {"reliability": MetadataValue.md(png_markdown(png, "reliability curve"))}


def _expect_drawn(page: Page, label: str, alt: str) -> None:
    """The image ``alt`` of the metadata entry ``label`` is drawn (loaded, with a non-zero natural
    width). The UI shows a long Markdown entry (an inline PNG is one) behind "[Show Markdown]": a
    person clicks it and the Markdown opens in a dialog."""
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=label, exact=True)).first
    expect(row).to_be_visible()
    row.get_by_text("[Show Markdown]").click()
    image = page.get_by_role("dialog").locator(f"img[alt='{alt}']")
    expect(image).to_be_visible()
    wait_until(
        lambda: image.evaluate("i => i.complete && i.naturalWidth > 0"), 30, f"the image {alt!r} to be drawn"
    )
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)


def test_plots_are_drawn_and_the_drift_report_opens(
    page: Page, dagster_dev: DagsterDev, clickloop_defs: Any
) -> None:
    """The drift plot and the reliability plot of the assets' metadata are drawn on their asset
    pages (inline PNGs, no file to fetch), and the drift report's link opens the Evidently HTML
    from the reports server."""
    partitions = clickloop_defs.get_repository_def().asset_graph.get(_key("drift_report")).partitions_def
    days = partitions.get_partition_keys()[:2]
    drift = _drift_metadata(dagster_dev, days)
    _record_materialization(dagster_dev, "drift_report", days[1], drift)
    _record_materialization(dagster_dev, "model_evaluation", days[1], _reliability_metadata())
    report_url = drift["report"].value
    assert report_url.startswith(dagster_dev.reports_url + "/drift/"), report_url

    page.goto(f"{dagster_dev.url}/assets/drift_report?view=events&partition={days[1]}")
    _expect_drawn(page, "drift_per_column", "drift score per column")
    link = page.get_by_role("link", name=report_url).first
    expect(link).to_be_visible()
    with page.context.expect_page() as opened:
        link.click()
    report = opened.value
    # the report server hands out the HTML drift_of_day wrote, and Evidently's page draws it
    response = page.request.get(report_url)
    written = dagster_dev.data_dir / REPORTS_FOLDER / report_url.removeprefix(dagster_dev.reports_url + "/")
    assert response.status == 200 and response.body() == written.read_bytes()
    expect(report).to_have_url(report_url)
    expect(report.get_by_text("Count of Drifted Columns").first).to_be_visible()
    expect(report.get_by_text("Drift in column").first).to_be_visible()
    report.close()

    page.goto(f"{dagster_dev.url}/assets/model_evaluation?view=events&partition={days[1]}")
    _expect_drawn(page, "reliability", "reliability curve")
