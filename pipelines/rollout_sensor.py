"""The rollout sensor: while a challenger is on, each newly monitored day asks for a decision.

The decision itself is the asset ``rollout_decision`` (the counterfactual estimate, the canary's
online evidence and the action, as metadata); the sensor requests one ``rollout_job`` run per
(challenger, stage, newest monitored day), so a person sees every step in the UI: the sensor's
ticks, the run it launched, the materialization with its numbers.
"""

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from resources.monitoring_store import MonitoringStore
from resources.tracking import ModelRegistry

ROLLOUT_SENSOR = "rollout_sensor"


def evaluate_rollout(registry: ModelRegistry, store: MonitoringStore) -> RunRequest | SkipReason:
    """A decision run for the challenger's stage on the newest monitored day, if there is one."""
    state = registry.challenger()
    if state is None:
        return SkipReason("no challenger: nothing to roll out")
    latest = store.latest_online_metrics(limit=1)
    if not latest:
        return SkipReason("no online metrics yet")
    day = latest[0]["day"]
    version, stage = state["version"], state["stage"]
    return RunRequest(
        run_key=f"rollout-v{version}-{stage}-{day}",
        tags={"clickloop/challenger": str(version), "clickloop/stage": stage, "clickloop/day": day},
    )


def rollout_sensor(rollout_job: UnresolvedAssetJobDefinition) -> SensorDefinition:
    @sensor(
        name=ROLLOUT_SENSOR,
        job=rollout_job,
        minimum_interval_seconds=300,
        default_status=DefaultSensorStatus.STOPPED,
        description="While a challenger is on: once a day has new online metrics, decide its next step "
        "(shadow → canary → promote, or roll back) in rollout_job.",
    )
    def _sensor(
        context: SensorEvaluationContext, model_registry: ModelRegistry, monitoring_store: MonitoringStore
    ) -> RunRequest | SkipReason:
        return evaluate_rollout(model_registry, monitoring_store)

    return _sensor
