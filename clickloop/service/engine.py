"""What the service does with a request: candidates -> features -> predictions -> ranking.

The features are those of training (:class:`clickloop.lookup.StatsLookup` or the online store,
both tested against the training SQL) at the contract's reference position, and the prediction is
:func:`clickloop.model.predict_frame`, as in the in-process :class:`clickloop.ranking.ChampionPolicy`:
the service and the simulator score a candidate alike. Ranking is by predicted CTR x bid (expected
revenue per impression), or predicted CTR where the contract has no price; ties keep the request's
order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from clickloop.contract import AD_ID, BID, TIME, LogContract
from clickloop.features import FeatureSpec
from clickloop.privacy import Pseudonymiser
from clickloop.service.catalog import catalog_columns
from clickloop.service.features import FeatureSnapshot
from clickloop.service.models import Explanation, LoadedModel, ModelCache


class RequestError(Exception):
    """A request the service cannot serve: ``status`` (4xx), where (``loc``) and why."""

    def __init__(self, status: int, loc: Sequence[str | int], message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.loc, self.message, self.kind = status, list(loc), message, kind

    def detail(self) -> list[dict[str, Any]]:
        return [{"loc": self.loc, "msg": self.message, "type": self.kind}]


class FeatureSource(Protocol):
    def snapshot(self) -> FeatureSnapshot: ...


@dataclass(frozen=True)
class Ranked:
    model: LoadedModel
    features_version: str
    ad_ids: list[str]
    predicted_ctr: np.ndarray
    bids: np.ndarray | None
    order: np.ndarray

    def scores(self) -> np.ndarray:
        return self.predicted_ctr if self.bids is None else self.predicted_ctr * self.bids


class RankingEngine:
    """Ranks and explains candidates with the models of a :class:`ModelCache` and the features of a
    source (the warehouse's Parquet or the online store)."""

    def __init__(
        self,
        contract: LogContract,
        models: ModelCache,
        features: FeatureSource,
        pseudonymiser: Pseudonymiser | None = None,
    ) -> None:
        self.contract, self.models, self.features = contract, models, features
        #: the requests' raw personal ids become the pseudonyms the statistics are keyed by
        self.pseudonymiser = pseudonymiser
        self.spec = FeatureSpec.from_contract(contract)
        self.ad_columns = catalog_columns(contract)
        #: an ad the catalog lacks needs these from the request
        self.required_ad_columns = tuple(
            c for c in self.ad_columns if c == BID or contract.impressions.field(c).required
        )

    # --- inputs ----------------------------------------------------------------------------

    def model(self, alias: str) -> LoadedModel:
        try:
            model = self.models.get(alias)
        except KeyError as exc:
            raise RequestError(422, ["body", "model_alias"], str(exc.args[0]), "unknown_alias") from None
        if model is None:
            raise RequestError(503, ["model_alias"], f"no model has the alias {alias!r} yet", "no_model")
        return model

    def snapshot(self) -> FeatureSnapshot:
        try:
            return self.features.snapshot()
        except LookupError as exc:
            raise RequestError(503, ["features"], str(exc), "no_features") from None

    def candidate_frame(
        self,
        context: Mapping[str, Any],
        candidates: Sequence[Mapping[str, Any]],
        snapshot: FeatureSnapshot,
        loc: Sequence[str | int] = ("body", "candidates"),
    ) -> pd.DataFrame:
        """One row per candidate: the context, the ad's catalog columns and the candidate's own."""
        catalog = snapshot.ad_attributes([str(c[AD_ID]) for c in candidates])
        rows = []
        for i, (candidate, known) in enumerate(zip(candidates, catalog, strict=True)):
            own = {k: v for k, v in candidate.items() if v is not None}
            if known is None:
                missing = [c for c in self.required_ad_columns if c not in own]
                if missing:
                    where = [*loc, i, AD_ID] if len(loc) > 1 else [*loc, AD_ID]
                    raise RequestError(
                        422,
                        where,
                        f"unknown ad {candidate[AD_ID]!r}: not in the ad catalog of statistics "
                        f"{snapshot.version}; send its {', '.join(missing)} with it",
                        "unknown_ad",
                    )
            rows.append({**{c: None for c in self.ad_columns}, **(known or {}), **own})
        n = len(rows)
        columns: dict[str, Any] = {
            name: [row.get(name) for row in rows] for name in (AD_ID, *self.ad_columns)
        }
        for name, value in context.items():
            columns[name] = [value] * n if name != TIME else pd.DatetimeIndex([pd.Timestamp(value)] * n)
        frame = pd.DataFrame(columns)
        frame[TIME] = pd.to_datetime(frame[TIME], utc=True)
        return frame

    def _features(self, snapshot: FeatureSnapshot, frame: pd.DataFrame) -> dict[str, Any]:
        """The model's features of candidate rows (their personal ids as pseudonyms)."""
        if self.pseudonymiser is not None:
            frame = self.pseudonymiser.frame(frame)
        return snapshot.features(frame, self.spec.reference_position)

    # --- what the endpoints do ---------------------------------------------------------------

    def rank(
        self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]], k: int, alias: str
    ) -> Ranked:
        model, snapshot = self.model(alias), self.snapshot()
        frame = self.candidate_frame(context, candidates, snapshot)
        predicted = model.predict(self._features(snapshot, frame))
        bids = frame[BID].to_numpy(np.float64) if self.contract.has_bid else None
        scores = predicted if bids is None else predicted * bids
        order = np.argsort(-scores, kind="stable")[:k]
        return Ranked(model, snapshot.version, frame[AD_ID].astype(str).tolist(), predicted, bids, order)

    def explain(
        self, context: Mapping[str, Any], candidate: Mapping[str, Any], alias: str
    ) -> tuple[LoadedModel, str, dict[str, Any], Explanation]:
        model, snapshot = self.model(alias), self.snapshot()
        frame = self.candidate_frame(context, [candidate], snapshot, loc=("body", "candidate"))
        features = self._features(snapshot, frame)
        (explanation,) = model.explain(features)
        frame = model.frame(features)
        values = {name: _plain(frame[name].iloc[0]) for name in frame.columns}
        return model, snapshot.version, values, explanation

    def score(
        self, columns: Mapping[str, Sequence[Any]], alias: str, expect_version: str | None
    ) -> tuple[LoadedModel, str, np.ndarray]:
        """Predicted CTR of a batch of candidate rows given column by column."""
        model, snapshot = self.model(alias), self.snapshot()
        if expect_version is not None and model.served_version != expect_version:
            raise RequestError(
                409,
                ["body", "expect_version"],
                f"alias {alias!r} now names {model.served_version}, not {expect_version}",
                "version_moved",
            )
        missing = [c for c in self.contract.candidate_columns if c not in columns]
        if missing:
            raise RequestError(422, ["body", "columns", missing[0]], f"missing columns {missing}", "missing")
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise RequestError(422, ["body", "columns"], f"columns of different lengths: {lengths}", "length")
        frame = pd.DataFrame({c: columns[c] for c in self.contract.candidate_columns})
        ts = frame[TIME]
        frame[TIME] = (
            pd.to_datetime(ts, unit="ms", utc=True)
            if pd.api.types.is_numeric_dtype(ts)
            else pd.to_datetime(ts, utc=True)
        )
        return model, snapshot.version, model.predict(self._features(snapshot, frame))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return None if pd.isna(value) else value
