"""The champion serving: the registered champion as the ad server's ranking policy.

Finds the champion in the registry and the statistics the ad server may use on a day in the
warehouse, and hands the simulator (or any in-process ad server) a
:class:`clickloop.ranking.ChampionPolicy`.
"""

from datetime import date

from dagster import ConfigurableResource

from clickloop.calibration import Calibration, calibration_served
from clickloop.ranking import STATS_TABLE, ChampionPolicy, serving_stats_key
from clickloop.service.client import HttpRankingPolicy
from clickloop.simulator.allocation import ServingPlan
from clickloop.storage import Warehouse
from resources.contract import LogContractResource
from resources.rollout import RolloutResource
from resources.tracking import ModelRegistry
from resources.warehouse import WarehouseResource


class ChampionServing(ConfigurableResource):
    """Finds the champion and the statistics the ad server may use on a day."""

    registry: ModelRegistry
    warehouse: WarehouseResource
    log_contract: LogContractResource
    #: the canary's share of the requests when a challenger is on (None: the rollout's default)
    rollout: RolloutResource | None = None
    #: the ranking service's base URL (``CLICKLOOP_RANKER_URL``); empty: the champion ranks in-process
    ranker_url: str = ""

    def calibration(self, warehouse: Warehouse, day: str, version: str) -> Calibration:
        """The calibration a version is served with on ``day`` (:func:`calibration_served`)."""
        return calibration_served(warehouse, day, version, self.registry.version_tags(version))

    def policy_for(self, day: date | str) -> ChampionPolicy | HttpRankingPolicy | ServingPlan | None:
        """The champion's policy for ``day``, or None while no model has been promoted; with a
        challenger in the registry, a :class:`ServingPlan` of both (shadow or canary); with a
        ranking service configured, the champion ranks through it.

        The statistics are ``feature_stats`` of ``day`` when materialized (the loop builds them
        before serving a day), else the newest earlier partition: an ad server serves with the
        freshest snapshot it has. With ``ranker_url`` set, the ranking service scores the
        candidates over HTTP with its own champion and statistics.
        """
        if self.ranker_url:
            if self.registry.champion_version() is None:
                return None
            return HttpRankingPolicy(self.ranker_url, self.log_contract.get().candidate_columns)
        champion = self.registry.champion()
        if champion is None:
            return None
        key = day if isinstance(day, str) else day.isoformat()
        warehouse = self.warehouse.get()
        stats_key = serving_stats_key(key, warehouse.partition_keys(STATS_TABLE))
        if stats_key is None:
            raise FileNotFoundError(
                f"the champion cannot serve {key}: no {STATS_TABLE} partition on or before it"
            )
        stats_path = warehouse.partition_path(STATS_TABLE, stats_key)
        spec, pseudonymiser = self.log_contract.features(), self.log_contract.pseudonymiser()
        version, booster = champion
        policy = ChampionPolicy(
            version, booster, stats_path, spec, self.calibration(warehouse, key, version), pseudonymiser
        )
        challenger = self.registry.challenger()
        if challenger is None:
            return policy
        rival_version = challenger["version"]
        rival = ChampionPolicy(
            rival_version,
            self.registry.load_version(rival_version),
            stats_path,
            spec,
            self.calibration(warehouse, key, rival_version),
            pseudonymiser,
        )
        share = (self.rollout or RolloutResource()).canary_share
        return ServingPlan(champion=policy, challenger=rival, stage=challenger["stage"], canary_share=share)
