"""``make run``: the loop driven through the repository's own jobs (``run_loop`` built the session's
history, ``tests/assets/history.py``) and the summary it prints."""

from pathlib import Path

import pytest
from dagster import DagsterInstance

from clickloop.online import calibration_text
from pipelines.cli.run import (
    CALIBRATION_HEAD,
    accounting_table,
    model_summary,
    open_instance,
    run_loop,
    serving_table,
)
from pipelines.cli.runner import LoopRunner
from pipelines.definitions import build_defs
from pipelines.settings import Settings, ensure_dagster_home
from tests.assets.history import WARMUP_DAYS, History


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_run_loop_reports_every_day_the_training_and_the_serving(history: History) -> None:
    days, training = history.days, history.training
    assert [d.day for d in days] == history.keys[:-1]  # the last day's clicks close the one before
    assert all(not d.failures for d in days) and training.failures == []

    accounting = accounting_table(days).splitlines()
    assert len(accounting) == 2 + len(days)
    for line, report in zip(accounting[2:], days, strict=True):
        assert line.startswith(report.day) and line.endswith(" ok"), line
        lines, valid, quarantined, events, duplicates = (number(c) for c in line.split()[1:6])
        assert lines == valid + quarantined and valid == events + duplicates

    assert set(training.metadata) == {
        "training_set",
        "test_set",
        "ctr_model",
        "model_evaluation",
        "champion_model",
        "validation_suite",
    }
    summary = model_summary(training)
    assert summary.startswith(f"model v1 on test day {history.keys[9]}")
    assert "| ground truth (oracle) |" in summary and "| base rate (training CTR) |" in summary
    assert summary.rstrip().endswith("promotion: promoted (champion now v1)")

    serving = serving_table(days).splitlines()
    assert CALIBRATION_HEAD in serving[0]
    served_by = [line.split()[1] for line in serving[2:]]
    assert served_by == ["random-v0"] * (WARMUP_DAYS + 1) + ["ctr_model-v1"] * (len(days) - WARMUP_DAYS - 1)
    # each champion day's calibration with the interval its clicks leave it
    for line, report in zip(serving[2 + WARMUP_DAYS + 1 :], days[WARMUP_DAYS + 1 :], strict=True):
        m = report.metadata["online_metrics"]
        assert m["calibration_low"] < m["calibration"] < m["calibration_high"], m
        assert f" {calibration_text(m['calibration'], m['calibration_low'], m['calibration_high'])} " in line


def test_run_loop_needs_the_days_it_runs(tmp_path: Path) -> None:
    defs = build_defs(Settings(data_dir=tmp_path))
    keys = defs.get_repository_def().get_job("ingest_job").partitions_def.get_partition_keys()
    with DagsterInstance.ephemeral() as instance:
        with pytest.raises(SystemExit, match="only 5 daily partitions exist"):
            run_loop(LoopRunner(defs, instance), keys[:5], warmup_days=10, served_days=3)


def test_dagster_home_gets_a_minimal_config_and_keeps_its_own(tmp_path: Path) -> None:
    fresh = ensure_dagster_home(tmp_path / "fresh")
    assert "enabled: false" in (fresh / "dagster.yaml").read_text()
    own = tmp_path / "own"
    own.mkdir()
    (own / "dagster.yaml").write_text("# the deployment's own\n")
    assert ensure_dagster_home(own) == own
    assert (own / "dagster.yaml").read_text() == "# the deployment's own\n"


def test_make_run_keeps_its_runs_under_the_data_dir(tmp_path: Path) -> None:
    instance = open_instance(Settings(data_dir=tmp_path))
    assert Path(instance.root_directory) == tmp_path.resolve() / "dagster_home"
    assert instance.is_persistent
    # DAGSTER_HOME, when the environment sets it, is a setting like the others
    home = tmp_path / "elsewhere"
    settings = Settings.from_env({"CLICKLOOP_DATA_DIR": str(tmp_path), "DAGSTER_HOME": str(home)})
    assert Path(open_instance(settings).root_directory) == home.resolve()
