"""The champion as the ad server's ranking policy: candidates scored with the training features.

Ranking happens before an ad's slot is known, so every candidate is scored at the contract's
reference position whatever column a caller passes; the logged position of an impression never
reaches the ranking. Candidate features come from the same SQL as the training rows
(:func:`clickloop.features.candidate_features`) over the statistics of the served day, so there is
no train/serve skew; all candidates of a chunk of requests are scored in one in-place prediction.
The server ranks by predicted CTR × bid (expected revenue), or by predicted CTR where logs have no
price.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import xgboost as xgb

from clickloop.contract import require_columns
from clickloop.features import FeatureSpec, candidate_features
from clickloop.model import predict_ctr, served_version
from clickloop.storage import connect

#: The statistics a policy serving day D uses: the newest ``feature_stats`` partition on or before D.
STATS_TABLE = "feature_stats"


def candidates_table(candidates: pd.DataFrame, columns: tuple[str, ...]) -> pa.Table:
    """The serving inputs of a candidate frame as plain Arrow columns (categoricals as strings)."""
    require_columns(list(candidates.columns), columns, "the candidate frame")
    arrays = {}
    for name in columns:
        array = pa.array(candidates[name], from_pandas=True)
        if pa.types.is_dictionary(array.type):
            array = array.cast(array.type.value_type)
        arrays[name] = array
    return pa.table(arrays)


@dataclass(frozen=True)
class ChampionPolicy:
    """A registered model version ranking the candidates of one day."""

    model_version: str
    booster: xgb.Booster
    stats_path: Path
    spec: FeatureSpec

    @property
    def version(self) -> str:
        return served_version(self.model_version)

    def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
        """Calibrated click probability of each candidate at the reference position."""
        with connect() as con:
            table = candidates_table(candidates, self.spec.input_columns)
            features = candidate_features(con, self.spec, table, self.stats_path)
        return predict_ctr(self.booster, features)


def serving_stats_key(day: str, available: list[str]) -> str | None:
    """The statistics an ad server serving ``day`` has: its own partition when built (the loop
    builds it before serving the day), else the newest earlier one."""
    earlier = [k for k in available if k <= day]
    return max(earlier) if earlier else None
