"""The rollout sensor on a real registry (MLflow, SQLite) and a real monitoring store (SQLite)."""

from pathlib import Path

import pytest
from dagster import RunRequest, SkipReason

from clickloop.online import OnlineMetricsRow
from pipelines.definitions import build_resources
from pipelines.rollout_sensor import evaluate_rollout
from pipelines.settings import Settings
from resources.monitoring_store import MonitoringStore
from resources.tracking import ModelRegistry
from tests.resources.test_tracking import log_and_register


def row(version: str) -> OnlineMetricsRow:
    return OnlineMetricsRow(version, 1000, 2000, 60, 0.03, 0.03, 1.0, 0.9, 60.0, 60.0, None)


def test_a_decision_per_challenger_stage_and_newest_monitored_day(tmp_path: Path) -> None:
    registry = ModelRegistry(data_dir=str(tmp_path), registered_model_name="rollout_sensor")
    store = MonitoringStore(data_dir=str(tmp_path))
    assert "no challenger" in str(evaluate_rollout(registry, store).skip_message)  # type: ignore[union-attr]
    v1, *_ = log_and_register(registry, seed=1)
    v2, *_ = log_and_register(registry, seed=2)
    registry.promote(v1)
    registry.set_challenger(v2, "shadow", "2026-10-13")
    waiting = evaluate_rollout(registry, store)
    assert isinstance(waiting, SkipReason) and "no online metrics" in str(waiting.skip_message)
    store.write_online_metrics("2026-10-13", [row("ctr_model-v1")])
    request = evaluate_rollout(registry, store)
    assert isinstance(request, RunRequest)
    assert request.run_key == f"rollout-v{v2}-shadow-2026-10-13"
    assert request.tags == {
        "clickloop/challenger": v2,
        "clickloop/stage": "shadow",
        "clickloop/day": "2026-10-13",
    }
    registry.set_challenger(v2, "canary", "2026-10-15")
    store.write_online_metrics("2026-10-14", [row("ctr_model-v1")])
    assert evaluate_rollout(registry, store).run_key == f"rollout-v{v2}-canary-2026-10-14"  # type: ignore[union-attr]
    registry.end_challenger("rolled_back")
    assert isinstance(evaluate_rollout(registry, store), SkipReason)


def test_the_rollout_settings_come_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "CLICKLOOP_DATA_DIR": str(tmp_path),
            "CLICKLOOP_ROLLOUT": "true",
            "CLICKLOOP_CANARY_SHARE": "0.3",
            "CLICKLOOP_EXPLORATION_SHARE": "0.05",
        }
    )
    assert settings.resource("rollout") == {"enabled": True, "canary_share": 0.3}
    assert settings.resource("simulator") == {"exploration_share": 0.05}
    resources = build_resources(settings)
    assert resources["rollout"].enabled and resources["log_source"].exploration_share == 0.05
    assert resources["log_source"].serving.rollout.canary_share == 0.3
    assert not build_resources(Settings(data_dir=tmp_path))["rollout"].enabled
    with pytest.raises(ValueError, match="CLICKLOOP_ROLLOUT must be true or false"):
        Settings.from_env({"CLICKLOOP_ROLLOUT": "maybe"})
