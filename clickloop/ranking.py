"""The champion as the ad server's ranking policy: candidates scored with the training features.

Ranking happens before an ad's slot is known, so every candidate is scored at the contract's
reference position whatever column a caller passes; the logged position of an impression never
reaches the ranking. Candidate features are the training features over the statistics of the served
day, read once per policy into per-entity lookups (:class:`clickloop.lookup.StatsLookup`, tested to
give the same numbers as the training SQL, :func:`clickloop.features.candidate_features`), so there
is no train/serve skew and no query per request; all candidates of a chunk of requests are scored in
one in-place prediction.
The ad server sends raw user ids; a policy turns them into the pseudonyms ingest stored (the
statistics are keyed by them) with the same key before the lookup.
The server ranks by predicted CTR × bid (expected revenue), or by predicted CTR where logs have no
price.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from clickloop.calibration import Calibration
from clickloop.features import FeatureSpec
from clickloop.lookup import StatsLookup
from clickloop.model import model_categories, model_frame_for, predict_frame, served_version
from clickloop.privacy import Pseudonymiser

#: The statistics a policy serving day D uses: the newest ``feature_stats`` partition on or before D.
STATS_TABLE = "feature_stats"


@dataclass(frozen=True)
class ChampionPolicy:
    """A registered model version ranking the candidates of one day."""

    model_version: str
    booster: xgb.Booster
    stats_path: Path
    spec: FeatureSpec
    #: the version's Platt calibration for the day (:mod:`clickloop.calibration`); None: raw scores
    calibration: Calibration | None = None
    #: ingest's pseudonymiser: raw personal ids of candidates become the stored pseudonyms (None:
    #: the contract has no personal field, or the candidates already carry pseudonyms)
    pseudonymiser: Pseudonymiser | None = None

    @property
    def version(self) -> str:
        return served_version(self.model_version)

    @cached_property
    def lookup(self) -> StatsLookup:
        """The served day's statistics, read once."""
        return StatsLookup(self.stats_path, self.spec)

    @cached_property
    def categories(self) -> dict[str, list[str]]:
        return model_categories(self.booster)

    def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
        """Calibrated click probability of each candidate at the reference position."""
        if self.pseudonymiser is not None:
            candidates = self.pseudonymiser.frame(candidates)
        features = self.lookup.features(candidates, self.spec.reference_position)
        scores = predict_frame(self.booster, model_frame_for(self.booster, features, self.categories))
        return scores if self.calibration is None else self.calibration.apply(scores)


def serving_stats_key(day: str, available: list[str]) -> str | None:
    """The statistics an ad server serving ``day`` has: its own partition when built (the loop
    builds it before serving the day), else the newest earlier one."""
    earlier = [k for k in available if k <= day]
    return max(earlier) if earlier else None
