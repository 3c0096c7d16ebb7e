"""Who serves a request: the champion, a challenger on its canary share, or uniform exploration.

A :class:`ServingPlan` is what the ad server serves a day with. Per request:

- **exploration**: with probability ``exploration_share`` (an independent random draw) the request's
  two ads are a uniformly random ordered pair of its candidates, so every candidate had the logged
  propensity ``1 / candidates`` of each slot. Those requests are logged with
  :data:`EXPLORE_VERSION` (their ``predicted_ctr`` is the champion's score of the shown ad), and
  their whole candidate sets go to the exploration log, from which an off-policy estimate of any
  other policy follows (:mod:`clickloop.offpolicy`). A policy that itself ranks uniformly (the
  random policy before any model) explores every request under its own version.
- **canary**: a request whose id hashes below ``canary_share`` (:func:`request_share`, exact and
  the same in every process) and that does not explore is ranked by the challenger.
- **shadow**: the challenger scores the candidates of every request; its score of each shown ad is
  logged (``shadow_version``, ``shadow_ctr``), nothing it ranks is shown.

The rest is ranked by the champion by predicted CTR × bid, as before; deterministic rankings log
propensity 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

import numpy as np
import pandas as pd

from clickloop.simulator.world import World

#: The version logged on requests the ad server explored (ranked uniformly at random).
EXPLORE_VERSION = "explore-uniform"
#: The stages a challenger goes through before it may be promoted.
Stage = Literal["shadow", "canary"]
STAGES: tuple[str, ...] = ("shadow", "canary")
#: A fixed salt so the canary split is a property of the request id alone.
_SPLIT_SALT = b"clickloop-canary"
#: Scores candidate rows: ``predict(policy, request_rows, ad_codes)`` -> one CTR per row.
Predict = Callable[[object, np.ndarray, np.ndarray], np.ndarray]


def request_share(request_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """A number in [0, 1) per request id from a cryptographic hash (blake2b, 8 bytes), so the
    split of requests between champion and canary is exact, reproducible and independent of
    everything a request holds."""
    out = np.empty(len(request_ids), dtype=np.float64)
    for i, rid in enumerate(request_ids):
        digest = hashlib.blake2b(str(rid).encode(), digest_size=8, key=_SPLIT_SALT).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def in_canary(request_ids: Sequence[str] | np.ndarray, canary_share: float) -> np.ndarray:
    """Whether each request falls in the canary share (exploration aside)."""
    return request_share(request_ids) < canary_share


@dataclass(frozen=True)
class ServingPlan:
    """The policies serving a day, and how the requests are split between them.

    It is itself a ranking policy (the champion's ``version`` and ``predict_ctr``) so code that
    only knows one policy keeps working.
    """

    champion: object
    challenger: object | None = None
    stage: Stage | None = None
    canary_share: float = 0.0
    exploration_share: float = 0.0

    def __post_init__(self) -> None:
        for name in ("canary_share", "exploration_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must lie in [0, 1]")
        if self.stage is not None and self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r}: expected one of {STAGES}")
        if (self.stage is None) != (self.challenger is None):
            raise ValueError("a challenger needs a stage (shadow or canary) and a stage a challenger")

    @property
    def version(self) -> str:
        return self.champion.version  # type: ignore[attr-defined]

    def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
        return self.champion.predict_ctr(candidates)  # type: ignore[attr-defined]

    @property
    def plain(self) -> bool:
        """Only the champion serves: no exploration and no challenger."""
        return self.challenger is None and self.exploration_share == 0.0


@dataclass(frozen=True)
class Served:
    """The outcome of ranking a day's requests (``n`` requests, two slots each)."""

    winners: np.ndarray
    #: the serving policy's predicted CTR of each shown ad, ``(n, 2)``
    predictions: np.ndarray
    #: the version that ranked each request, ``(n,)``
    versions: np.ndarray
    #: the probability of each shown ad in its slot under the serving policy, ``(n, 2)``
    propensity: np.ndarray
    #: requests ranked uniformly at random (their candidates go to the exploration log)
    explored: np.ndarray
    shadow_version: str | None = None
    shadow_ctr: np.ndarray | None = None


def exploration_stream(seed: int, day: date) -> np.random.Generator:
    """The day's exploration draws, apart from the traffic stream (so the clean traffic of a day
    does not depend on whether it explores)."""
    return np.random.default_rng(np.random.SeedSequence([seed, day.toordinal(), 0x5E1EC7]))


def score_candidates(
    candidates: np.ndarray, policy: object, rows: np.ndarray, predict: Predict, chunk_requests: int = 32_768
) -> np.ndarray:
    """The policy's predicted CTR of every candidate of requests ``rows``, ``(len(rows), k)``."""
    k = candidates.shape[1]
    out = np.empty((len(rows), k))
    for start in range(0, len(rows), chunk_requests):
        chunk = rows[start : start + chunk_requests]
        request_rows = np.repeat(chunk, k)
        out[start : start + len(chunk)] = predict(policy, request_rows, candidates[chunk].ravel()).reshape(
            len(chunk), k
        )
    return out


def _top_two(scores: np.ndarray, tie_break: np.ndarray) -> np.ndarray:
    """Column indices of each row's two best scores (ties broken by the largest ``tie_break``)."""
    scores = scores.copy()
    rows = np.arange(len(scores))
    first = np.where(scores == scores.max(axis=1, keepdims=True), tie_break, -1.0).argmax(axis=1)
    scores[rows, first] = -np.inf
    second = np.where(scores == scores.max(axis=1, keepdims=True), tie_break, -1.0).argmax(axis=1)
    return np.stack([first, second], axis=1)


def serve_plan(
    world: World,
    candidates: np.ndarray,
    plan: ServingPlan,
    request_ids: np.ndarray,
    rng: np.random.Generator,
    explore_rng: np.random.Generator,
    predict: Predict,
    chunk_requests: int = 32_768,
) -> Served:
    """Rank every request by the plan (see the module docstring); ``predict(policy, rows, ads)``
    scores candidate rows (the traffic module's checked call)."""
    n, k = candidates.shape
    all_rows = np.arange(n)
    champion_uniform = bool(getattr(plan.champion, "rank_uniformly", False))
    explored = np.ones(n, dtype=bool) if champion_uniform else explore_rng.random(n) < plan.exploration_share
    canary = (
        in_canary(request_ids, plan.canary_share) & ~explored
        if plan.stage == "canary"
        else np.zeros(n, dtype=bool)
    )
    champion_scores = score_candidates(candidates, plan.champion, all_rows, predict, chunk_requests)
    challenger_rows = all_rows if plan.stage == "shadow" else np.flatnonzero(canary)
    challenger_scores = np.zeros((n, k))
    if plan.challenger is not None and len(challenger_rows):
        challenger_scores[challenger_rows] = score_candidates(
            candidates, plan.challenger, challenger_rows, predict, chunk_requests
        )
    bids = world.ad_bid_cpc[candidates]
    predicted = np.where(canary[:, None], challenger_scores, champion_scores)
    ranking = np.where(explored[:, None], 0.0, predicted * bids)
    chosen = _top_two(ranking, rng.random((n, k)))
    versions = np.full(n, plan.champion.version, dtype=object)  # type: ignore[attr-defined]
    if not champion_uniform:
        versions[explored] = EXPLORE_VERSION
    if plan.challenger is not None:
        versions[canary] = plan.challenger.version  # type: ignore[attr-defined]
    propensity = np.where(explored[:, None], 1.0 / k, 1.0) * np.ones((1, 2))
    shadow = plan.challenger.version if plan.stage == "shadow" else None  # type: ignore[union-attr]
    return Served(
        winners=np.take_along_axis(candidates, chosen, axis=1),
        predictions=np.take_along_axis(predicted, chosen, axis=1),
        versions=versions,
        propensity=propensity,
        explored=explored,
        shadow_version=shadow,
        shadow_ctr=np.take_along_axis(challenger_scores, chosen, axis=1) if shadow else None,
    )
