"""The reports folder as the UI links it: a URL when it is served, else the file's path."""

from pathlib import Path

from dagster import MetadataValue

from clickloop.presentation import REPORTS_FOLDER
from pipelines.definitions import build_resources
from pipelines.settings import Settings
from resources.reports import ReportsSite


def test_a_report_is_a_link_when_the_folder_is_served(tmp_path: Path) -> None:
    root = tmp_path / REPORTS_FOLDER
    report = root / "data_docs" / "local_site" / "index.html"
    served = ReportsSite(root=str(root), base_url="http://127.0.0.1:3001")
    assert served.link(report) == MetadataValue.url("http://127.0.0.1:3001/data_docs/local_site/index.html")
    assert served.link(tmp_path / "elsewhere.html") == MetadataValue.path(str(tmp_path / "elsewhere.html"))
    assert ReportsSite(root=str(root)).link(report) == MetadataValue.path(str(report))


def test_the_reports_resource_reads_the_environment(tmp_path: Path) -> None:
    env = {"CLICKLOOP_DATA_DIR": str(tmp_path), "CLICKLOOP_REPORTS_URL": "http://127.0.0.1:3001"}
    reports = build_resources(Settings.from_env(env))["reports"]
    assert reports.root == str(tmp_path.resolve() / REPORTS_FOLDER)
    assert reports.base_url.env_var_name == "CLICKLOOP_REPORTS_URL"  # read when Dagster resolves it
    assert build_resources(Settings.from_env({"CLICKLOOP_DATA_DIR": str(tmp_path)}))["reports"].base_url == ""
