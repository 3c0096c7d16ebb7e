"""The models a service serves: registered versions found by alias, reloaded when an alias moves. Each version's newest calibration is read from its tags at the same
moments, so a new day's calibration reaches the service too.

The registry is anything with ``alias_version(alias)`` and ``load_version(version)`` (the MLflow
registry of ``resources.tracking`` has both). An alias is looked up again at most every ``ttl_s``
seconds (one cheap registry read); when it names another version, that version is loaded and
replaces the old one for the requests that follow: a promotion or a rollback reaches the service
without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Protocol

import numpy as np
import pandas as pd
import xgboost as xgb

from clickloop.calibration import Calibration, newest_from_tags
from clickloop.model import (
    correct_downsampled,
    downsampling_rate_of,
    model_categories,
    model_features,
    model_frame_for,
    predict_frame,
    served_version,
)

DEFAULT_MODEL_TTL_S = 2.0
#: XGBoost threads per prediction: a request's few candidates cost more to split than to score
PREDICT_THREADS = 1


class ModelSource(Protocol):
    def alias_version(self, alias: str) -> str | None:
        """The version an alias points at; None when the alias is not set."""
        ...

    def load_version(self, version: str) -> xgb.Booster:
        """The booster of a registered version."""
        ...

    def version_tags(self, version: str) -> dict[str, str]:
        """A registered version's tags (its calibration among them)."""
        ...


@dataclass(frozen=True)
class Explanation:
    """Per-feature contributions of one row, in log-odds (XGBoost's ``pred_contribs``): they and the
    bias add up to the margin; the probability is the sigmoid of the margin, corrected for the
    model's negative downsampling."""

    contributions: dict[str, float]
    bias: float
    margin: float
    predicted_ctr: float


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, ready to score."""

    alias: str
    version: str
    booster: xgb.Booster = field(repr=False)
    #: the version's newest calibration (:mod:`clickloop.calibration`)
    calibration: Calibration | None = None

    @property
    def served_version(self) -> str:
        return served_version(self.version)

    @cached_property
    def categories(self) -> dict[str, list[str]]:
        return model_categories(self.booster)

    def frame(self, features: dict[str, np.ndarray | pd.Series]) -> pd.DataFrame:
        return model_frame_for(self.booster, features, self.categories)

    @cached_property
    def _layout(self) -> tuple[list[str], dict[str, pd.Index]] | None:
        """The model's features and, per categorical one, its training categories as an index;
        None when the model carries no categories (then only the frame path applies)."""
        names, categorical = model_features(self.booster)
        if any(name not in self.categories for name in categorical):
            return None
        return names, {name: pd.Index(self.categories[name], dtype=object) for name in categorical}

    def matrix(self, features: dict[str, np.ndarray | pd.Series]) -> np.ndarray | None:
        """The model's input as a float32 matrix, categories as their codes in the training
        categories (unseen ones missing): the numbers :func:`model_frame_for` hands XGBoost, without
        pandas' per-call cost (a test checks both predict the same)."""
        layout = self._layout
        if layout is None:
            return None
        names, indexes = layout
        rows = len(next(iter(features.values())))
        matrix = np.empty((rows, len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            values = features[name]
            if name in indexes:
                codes = (
                    indexes[name].get_indexer(pd.Index(np.asarray(values, dtype=object))).astype(np.float32)
                )
                codes[codes < 0] = np.nan
                matrix[:, j] = codes
            else:
                matrix[:, j] = np.asarray(values, dtype=np.float32)
        return matrix

    def predict(self, features: dict[str, np.ndarray | pd.Series]) -> np.ndarray:
        """Click probabilities on real traffic (as :class:`clickloop.ranking.ChampionPolicy`)."""
        matrix = self.matrix(features)
        if matrix is None:
            return self.calibrated(predict_frame(self.booster, self.frame(features)))
        raw = np.asarray(self.booster.inplace_predict(matrix), dtype=np.float64)
        return self.calibrated(correct_downsampled(raw, downsampling_rate_of(self.booster)))

    def calibrated(self, scores: np.ndarray) -> np.ndarray:
        return scores if self.calibration is None else self.calibration.apply(scores)

    def explain(self, features: dict[str, np.ndarray | pd.Series]) -> list[Explanation]:
        """Each row's contributions from the trees (``pred_contribs=True``)."""
        frame = self.frame(features)
        matrix = xgb.DMatrix(frame, enable_categorical=True)
        contributions = np.asarray(self.booster.predict(matrix, pred_contribs=True), dtype=np.float64)
        margins = np.asarray(self.booster.predict(matrix, output_margin=True), dtype=np.float64)
        probabilities = self.calibrated(
            correct_downsampled(1.0 / (1.0 + np.exp(-margins)), downsampling_rate_of(self.booster))
        )
        names, _ = model_features(self.booster)
        return [
            Explanation(
                contributions={n: float(v) for n, v in zip(names, row[:-1], strict=True)},
                bias=float(row[-1]),
                margin=float(margin),
                predicted_ctr=float(p),
            )
            for row, margin, p in zip(contributions, margins, probabilities, strict=True)
        ]


class ModelCache:
    """The versions some aliases point at, kept loaded and refreshed."""

    def __init__(
        self, source: ModelSource, aliases: Sequence[str], ttl_s: float = DEFAULT_MODEL_TTL_S
    ) -> None:
        if not aliases:
            raise ValueError("a model cache needs at least one alias")
        self.source, self.aliases, self.ttl_s = source, tuple(aliases), ttl_s
        self._lock = threading.Lock()
        self._loaded: dict[str, LoadedModel | None] = {}
        self._checked: dict[str, float] = {}
        self._boosters: dict[str, xgb.Booster] = {}  # by version: an alias moving back reloads nothing

    def get(self, alias: str) -> LoadedModel | None:
        """The model ``alias`` names now (None while it names none); KeyError for an alias the
        service does not serve."""
        if alias not in self.aliases:
            raise KeyError(f"alias {alias!r} is not served (served: {', '.join(self.aliases)})")
        now = time.monotonic()
        if now - self._checked.get(alias, -np.inf) >= self.ttl_s:
            with self._lock:
                if now - self._checked.get(alias, -np.inf) >= self.ttl_s:
                    self._refresh(alias)
                    self._checked[alias] = now
        return self._loaded.get(alias)

    def _refresh(self, alias: str) -> None:
        version = self.source.alias_version(alias)
        current = self._loaded.get(alias)
        if version is None:
            self._loaded[alias] = None
            return
        calibration = newest_from_tags(version, self.source.version_tags(version))
        if current is None or current.version != version:
            if version not in self._boosters:
                booster = self.source.load_version(version)
                booster.set_param({"nthread": PREDICT_THREADS})
                self._boosters[version] = booster
            self._loaded[alias] = LoadedModel(alias, version, self._boosters[version], calibration)
            kept = {m.version for m in self._loaded.values() if m is not None}
            self._boosters = {v: b for v, b in self._boosters.items() if v in kept}
        elif current.calibration != calibration:  # a new day's calibration of the same version
            self._loaded[alias] = replace(current, calibration=calibration)

    def versions(self) -> dict[str, str | None]:
        """Every served alias and the version it names now."""
        return {alias: (m.version if (m := self.get(alias)) else None) for alias in self.aliases}
