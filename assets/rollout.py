"""The rollout: a challenger's counterfactual estimate, its shadow and canary evidence, the decision.

``rollout_decision`` is materialized by ``rollout_sensor`` once a day has new online evidence
while a challenger is on. Each materialization is one decision with all its numbers as metadata:
the off-policy estimate of challenger and champion from the exploration logs, the canary's online
metrics next to the champion's on the same days with the interval of the difference, and the
action taken on the registry (canary, promotion, rollback, or wait).
"""

from typing import Any

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.evaluation import CHAMPION_MODEL
from assets.monitoring import ONLINE_METRICS
from clickloop.contract import LogContract
from clickloop.landing import exploration_path
from clickloop.model import served_version
from clickloop.offpolicy import ExplorationDay, OffPolicyEstimate, estimate_over_days
from clickloop.presentation import significant
from clickloop.ranking import STATS_TABLE, ChampionPolicy, serving_stats_key
from clickloop.rollout import (
    Decision,
    compare_versions,
    decide,
    read_request_stats,
    rollout_markdown,
    shadow_metrics,
    stage_days,
)
from clickloop.split import FEATURES
from clickloop.storage import Warehouse
from resources.contract import LogContractResource
from resources.landing import LogSource
from resources.rollout import RolloutResource, training_days
from resources.tracking import ModelRegistry
from resources.warehouse import WarehouseResource

ROLLOUT_DECISION = "rollout_decision"


def counterfactual(
    warehouse: Warehouse,
    registry: ModelRegistry,
    contract: LogContractResource,
    landing_dir: str,
    version: str,
    days: int,
) -> OffPolicyEstimate | None:
    """The off-policy estimate of registered ``version`` from the newest ``days`` days that have
    both an exploration log and their events, and that the version was not trained on; None
    without any."""
    seen = training_days(registry, version)
    keys = [
        k
        for k in warehouse.partition_keys(FEATURES)
        if k not in seen and exploration_path(landing_dir, k).exists()
    ][-days:]
    if not keys:
        return None
    booster = registry.load_version(version)
    spec, pseudonymiser = contract.features(), contract.pseudonymiser()
    stats = warehouse.partition_keys(STATS_TABLE)

    def policy_for(day: str) -> ChampionPolicy:
        key = serving_stats_key(day, stats)
        if key is None:
            raise FileNotFoundError(
                f"no {STATS_TABLE} partition on or before {day} to score its exploration log"
            )
        path = warehouse.partition_path(STATS_TABLE, key)
        return ChampionPolicy(version, booster, path, spec, pseudonymiser=pseudonymiser)

    evidence = [
        ExplorationDay(k, warehouse.partition_path(FEATURES, k), exploration_path(landing_dir, k))
        for k in keys
    ]
    slots = len(contract.get().positions or (1,))
    return estimate_over_days(evidence, policy_for, served_version(version), slots=slots)


def _act(decision: Decision, registry: ModelRegistry, version: str, context: AssetExecutionContext) -> str:
    """Apply the decision to the registry; what now serves."""
    if decision.action == "to_canary":
        registry.set_challenger(version, "canary", _now())
    elif decision.action == "promote":
        registry.promote(version, reason=decision.reason)
        registry.end_challenger("promoted", decision.reason)
    elif decision.action == "rollback":
        registry.end_challenger("rolled_back", decision.reason)
    context.log.info(f"rollout of v{version}: {decision.action}: {decision.reason}")
    return registry.champion_version() or "none"


def _now() -> str:
    return pd.Timestamp.now(tz="UTC").isoformat()


def rollout_decision_asset(contract: LogContract) -> Any:
    @asset(
        name=ROLLOUT_DECISION,
        deps=[CHAMPION_MODEL, ONLINE_METRICS],
        group_name="rollout",
        kinds={"mlflow", "duckdb"},
    )
    def _rollout_decision(
        context: AssetExecutionContext,
        warehouse: WarehouseResource,
        model_registry: ModelRegistry,
        log_source: LogSource,
        log_contract: LogContractResource,
        rollout: RolloutResource,
    ) -> MaterializeResult:
        """The challenger's next step — canary, promotion, rollback or wait — from its
        counterfactual estimate and its shadow and canary evidence, with every number."""
        state = model_registry.challenger()
        if state is None:
            return MaterializeResult(metadata={"action": "none", "reason": "no challenger"})
        policy = rollout.policy()
        version, stage = state["version"], state["stage"]
        champion = model_registry.champion_version()
        store = warehouse.get()
        served = {k: store.partition_path(FEATURES, k) for k in store.partition_keys(FEATURES)}
        challenger_name = served_version(version)
        champion_name = served_version(champion) if champion else ""
        shadow, canary = stage_days(served, challenger_name)
        stats = read_request_stats(
            [served[d] for d in canary], [champion_name, challenger_name], contract.has_bid
        )
        report = compare_versions(stats.get(champion_name), stats.get(challenger_name), policy)
        decision = decide(stage, len(shadow), len(canary), report, policy)
        # the counterfactual estimate is what is known before the challenger takes any traffic
        estimates = {
            name: counterfactual(
                store, model_registry, log_contract, log_source.landing_dir, v, rollout.offpolicy_days
            )
            for name, v in (("challenger", version), ("champion", champion))
            if v and stage == "shadow"
        }
        now_serving = _act(decision, model_registry, version, context)
        metadata: dict[str, Any] = {
            "action": decision.action,
            "reason": MetadataValue.text(decision.reason),
            "challenger_version": version,
            "champion_version": now_serving,
            "stage": stage,
            "shadow_days": MetadataValue.text(", ".join(shadow) or "none"),
            "canary_days": MetadataValue.text(", ".join(canary) or "none"),
            "canary_share": policy.canary_share,
            **report.metadata(),
            **{
                k: significant(float(v))
                for k, v in shadow_metrics([served[d] for d in shadow], challenger_name).items()
            },
        }
        for name, estimate in estimates.items():
            if estimate is not None:
                metadata.update(
                    {f"offpolicy_{name}_{k}": v for k, v in estimate.metadata().items() if k != "policy"}
                )
        metadata["rollout"] = MetadataValue.md(rollout_markdown(decision, report, estimates))
        return MaterializeResult(metadata=metadata)

    return _rollout_decision
