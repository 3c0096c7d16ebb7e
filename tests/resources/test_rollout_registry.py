"""The challenger of a rollout in the real MLflow registry: shadow, canary, promotion, rollback."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from resources.tracking import CHALLENGER_ALIAS, ModelRegistry
from tests.resources.test_tracking import log_and_register, registry


def aliases(reg: ModelRegistry) -> dict[str, str]:
    client = MlflowClient(tracking_uri=reg.resolved_tracking_uri())
    return dict(client.get_registered_model(reg.registered_model_name).aliases)


def test_a_challenger_goes_shadow_canary_and_is_promoted(mlflow_data_dir: Path) -> None:
    reg = registry(mlflow_data_dir, "rollout_promoted")
    v1, *_ = log_and_register(reg, seed=1)
    v2, *_ = log_and_register(reg, seed=2)
    reg.promote(v1)
    assert reg.challenger() is None
    assert reg.set_challenger(v2, "shadow", "2026-10-13") == {
        "version": v2,
        "stage": "shadow",
        "since": {"shadow": "2026-10-13"},
    }
    assert str(aliases(reg)[CHALLENGER_ALIAS]) == v2 and reg.champion_version() == v1
    state = reg.set_challenger(v2, "canary", "2026-10-15")
    assert state == {
        "version": v2,
        "stage": "canary",
        "since": {"shadow": "2026-10-13", "canary": "2026-10-15"},
    }
    assert reg.challenger() == state
    assert reg.version_tags(v2)["rollout_stage"] == "canary"
    reg.promote(v2, reason="better beyond the interval")
    assert reg.end_challenger("promoted", "better beyond the interval") == v2
    assert reg.challenger() is None and CHALLENGER_ALIAS not in aliases(reg)
    assert reg.champion_version() == v2 and reg.previous_champion_version() == v1
    assert reg.version_tags(v2)["rollout_stage"] == "promoted"


def test_a_rolled_back_challenger_leaves_the_champion_unchanged(mlflow_data_dir: Path) -> None:
    reg = registry(mlflow_data_dir, "rollout_rolled_back")
    v1, *_ = log_and_register(reg, seed=1)
    v2, *_ = log_and_register(reg, seed=3)
    reg.promote(v1)
    reg.set_challenger(v2, "canary", "2026-10-15")
    assert reg.end_challenger("rolled_back", "worse beyond the interval") == v2
    assert reg.challenger() is None and reg.champion_version() == v1
    tags = reg.version_tags(v2)
    assert tags["rollout_stage"] == "rolled_back" and tags["rollout_reason"] == "worse beyond the interval"
    assert reg.end_challenger("rolled_back") is None
    with pytest.raises(Exception, match="(?i)not found|does not exist"):
        reg.set_challenger("99", "shadow", "2026-10-15")
