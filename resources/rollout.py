"""How a challenger earns its traffic, as a resource: read by the gate, the ad server and the rollout.

With ``enabled`` off (the default) a model that passes the offline gate becomes the champion at
once, as before. With it on, it becomes the registry's ``challenger``: shadow, then canary on
``canary_share`` of the requests, then promoted or rolled back by ``rollout_decision``
(:mod:`clickloop.rollout`).
"""

from dagster import ConfigurableResource
from pydantic import Field

from clickloop.rollout import RolloutPolicy
from resources.tracking import ModelRegistry

_DEFAULTS = RolloutPolicy()


class RolloutResource(ConfigurableResource):
    """The rollout's switch and its policy."""

    enabled: bool = Field(default=False, description="A model that passes the gate becomes the challenger.")
    canary_share: float = Field(default=_DEFAULTS.canary_share, gt=0.0, lt=1.0)
    shadow_days: int = Field(default=_DEFAULTS.shadow_days, ge=0)
    min_canary_days: int = Field(default=_DEFAULTS.min_canary_days, ge=1)
    max_canary_days: int = Field(default=_DEFAULTS.max_canary_days, ge=1)
    confidence: float = Field(default=_DEFAULTS.confidence, gt=0.0, lt=1.0)
    #: the newest days of exploration logs the counterfactual estimate reads
    offpolicy_days: int = Field(default=7, ge=1)

    def policy(self) -> RolloutPolicy:
        return RolloutPolicy(
            canary_share=self.canary_share,
            shadow_days=self.shadow_days,
            min_canary_days=self.min_canary_days,
            max_canary_days=self.max_canary_days,
            confidence=self.confidence,
        )


def training_days(registry: ModelRegistry, version: str) -> set[str]:
    """The days a registered version was trained and early-stopped on (its MLflow run's params):
    an off-policy estimate on them would reward memorised clicks, so it leaves them out."""
    client = registry.client()
    run_id = client.get_model_version(registry.registered_model_name, str(version)).run_id
    params = client.get_run(run_id).data.params
    days = {*params.get("train_days", "").split(","), params.get("validation_day", "")}
    return {d for d in days if d}
