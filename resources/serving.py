"""The champion serving: the registered champion as the ad server's ranking policy.

Ranking happens before an ad's slot is known, so every candidate is scored at the reference position
(``REFERENCE_POSITION``) whatever column a caller passes; the logged ``position`` of an impression
never reaches the ranking. Candidate features come from the same SQL as the training rows
(``assets.features.candidate_features``) over the ``feature_stats`` partition of the served day, so
there is no train/serve skew; all candidates of a chunk of requests are scored in one in-place
prediction.
"""

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
from dagster import ConfigurableResource

from assets.partitions import daily_partitions
from resources.tracking import ModelRegistry
from resources.warehouse import Warehouse

if TYPE_CHECKING:  # the model stack is imported when a champion serves, not with the simulator
    import xgboost as xgb


def serving_columns() -> tuple[str, ...]:
    """What a candidate row needs for its features (its position is never among them)."""
    from assets.features import INPUT_COLUMNS

    return tuple(c for c in INPUT_COLUMNS if c != "position")


def candidates_table(candidates: pd.DataFrame) -> pa.Table:
    """The serving inputs of a candidate frame as plain Arrow columns (categoricals as strings)."""
    columns_needed = serving_columns()
    missing = [c for c in columns_needed if c not in candidates.columns]
    if missing:
        raise ValueError(f"candidate frame lacks the serving columns {missing}")
    columns = {}
    for name in columns_needed:
        array = pa.array(candidates[name], from_pandas=True)
        if pa.types.is_dictionary(array.type):
            array = array.cast(array.type.value_type)
        columns[name] = array
    return pa.table(columns)


@dataclass(frozen=True)
class ChampionPolicy:
    """A registered model version ranking the candidates of one day."""

    model_version: str
    booster: "xgb.Booster"
    stats_path: Path

    @property
    def version(self) -> str:
        return f"ctr_model-v{self.model_version}"

    def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
        """Calibrated click probability of each candidate at the reference position."""
        import duckdb

        from assets.features import candidate_features
        from assets.model import predict_ctr

        with duckdb.connect() as con:
            features = candidate_features(con, candidates_table(candidates), self.stats_path)
        return predict_ctr(self.booster, features)


class ChampionServing(ConfigurableResource):
    """Finds the champion and the statistics the ad server may use on a day."""

    registry: ModelRegistry
    warehouse: Warehouse

    def policy_for(self, day: date | str) -> ChampionPolicy | None:
        """The champion's policy for ``day``, or None while no model has been promoted.

        The statistics are ``feature_stats`` of ``day`` when materialized (the loop builds them
        before serving a day), else the newest earlier partition: an ad server serves with the
        freshest snapshot it has.
        """
        champion = self.registry.champion()
        if champion is None:
            return None
        key = day if isinstance(day, str) else day.isoformat()
        stats_key = next(
            (
                k
                for k in reversed(daily_partitions.get_partition_keys())
                if k <= key and self.warehouse.has_partition("feature_stats", k)
            ),
            None,
        )
        if stats_key is None:
            raise FileNotFoundError(
                f"the champion cannot serve {key}: no feature_stats partition on or before it"
            )
        version, booster = champion
        return ChampionPolicy(version, booster, self.warehouse.partition_path("feature_stats", stats_key))
