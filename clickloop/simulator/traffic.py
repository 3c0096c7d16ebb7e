"""A day of ad-server traffic: requests, candidates, ranking, impressions and clicks (clean).

The ad server ranks each request's candidate ads by ``predicted_ctr * bid_cpc`` (expected revenue)
using a replaceable :class:`RankingPolicy`; :class:`RandomPolicy` is the default until a model
exists. Everything is vectorised: the policy scores all candidates of a chunk of requests in one
call. A day depends only on (seed, world and scenario, day, policy): its random streams are
spawned from ``np.random.SeedSequence([seed, day.toordinal()])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from clickloop.contract import ContractError
from clickloop.contract_file import load_contract
from clickloop.simulator.allocation import Served, ServingPlan, exploration_stream, serve_plan
from clickloop.simulator.clock import to_datetime
from clickloop.simulator.vocabulary import (
    LONG_DELAY_PROB,
    LONG_DELAY_RANGE_S,
    MIN_DELAY_MS,
    PRICE_UNIT_FACTOR,
    SHORT_DELAY_LOG_SD,
    SHORT_DELAY_MEDIAN_S,
    TARGET_CTR,
)
from clickloop.simulator.world import (
    RequestContext,
    Scenario,
    World,
    categorical,
    draw_context,
    id_strings,
    position_factor,
)

#: The fields of the logs, in the order they are written: the log contract's, defined once there.
IMPRESSION_FIELDS: tuple[str, ...] = load_contract().impressions.sources
CLICK_FIELDS: tuple[str, ...] = load_contract().log("clicks").sources
#: The columns a :class:`RankingPolicy` receives, one row per (request, candidate ad).
CANDIDATE_FIELDS = (
    "ad_id",
    "campaign_id",
    "advertiser_id",
    "ad_category",
    "bid_cpc",
    "site_id",
    "site_category",
    "device_type",
    "os",
    "country",
    "user_id",
    "user_segment",
    "hour",
    "weekday",
    "ts",
)


def require_fields(frame: pd.DataFrame, fields: tuple[str, ...], what: str) -> None:
    """Insist that ``frame`` has exactly the log contract's ``fields``, in that order."""
    if tuple(frame.columns) != fields:
        raise ContractError(
            f"the simulator's {what} frame has columns {list(frame.columns)}, but the log contract "
            f"({load_contract().path}) lists {list(fields)}: they must be the same, in the same order"
        )


# --------------------------------------------------------------------------------------------
# Ranking policies
# --------------------------------------------------------------------------------------------


@runtime_checkable
class RankingPolicy(Protocol):
    """What ranks the candidates inside the ad server.

    ``predict_ctr`` receives one row per (request, candidate ad) with the columns of
    ``CANDIDATE_FIELDS`` (string-valued columns are pandas Categoricals; ``bid_cpc`` is the true
    price; ``ts`` is tz-aware UTC) and returns one predicted click probability per row, in
    [0, 1]. It is called once per large chunk of requests, never per request. The server ranks by
    ``predicted_ctr * bid_cpc``, ties broken uniformly at random. A policy may also set an
    attribute ``rank_uniformly = True`` to have the server ignore the scores and rank uniformly at
    random (exploration traffic).
    """

    version: str

    def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
        """One predicted click probability per candidate row."""
        ...


@dataclass(frozen=True)
class RandomPolicy:
    """The default before any model exists: a constant prior CTR and uniformly random ranking."""

    prior_ctr: float = TARGET_CTR
    version: str = "random-v0"
    rank_uniformly: bool = True

    def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
        """The prior CTR for every candidate."""
        return np.full(len(candidates), self.prior_ctr)


# --------------------------------------------------------------------------------------------
# A day of traffic
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayTraffic:
    """One simulated day, clean (before any fault is injected).

    ``impressions`` and ``clicks`` hold the logged columns (string columns as Categoricals or
    objects, ``ts`` tz-aware UTC at millisecond resolution; ``bid_cpc`` as logged, so in cents
    under an active ``price_unit_bug``). The other arrays are the hidden truth per impression.
    """

    day: date
    seed: int
    scenario: Scenario
    policy_version: str
    n_requests: int
    impressions: pd.DataFrame
    clicks: pd.DataFrame
    true_ctr: np.ndarray
    true_bid_cpc: np.ndarray
    clicked: np.ndarray
    click_impression_row: np.ndarray = field(repr=False)
    #: expected revenue of the oracle policy on the same requests and candidates (see
    #: :func:`oracle_expected_revenue`); None for traffic built without it
    oracle_expected_revenue: float | None = None
    #: the candidate sets of the requests ranked uniformly at random, one row per (request,
    #: candidate) with ``request_id`` and ``CANDIDATE_FIELDS``; None when the day did not explore
    exploration: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def scenario_active(self) -> bool:
        """Whether the scenario is active on this day."""
        return self.scenario.active(self.day)


def day_streams(seed: int, day: date) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent per-day random streams (traffic, clicks, faults) from ``[seed, ordinal]``.

    Faults have their own stream so the clean logs are identical whatever the fault rates.
    """
    traffic, clicks, faults = np.random.SeedSequence([seed, day.toordinal()]).spawn(3)
    return np.random.default_rng(traffic), np.random.default_rng(clicks), np.random.default_rng(faults)


def _draw_slots(
    rng: np.random.Generator, size: int, base: np.ndarray, wave: np.ndarray, wave_share: float
) -> np.ndarray:
    """``size`` ads from the live pools: from the wave with probability ``wave_share``."""
    ads = base[rng.integers(0, len(base), size)]
    if wave_share > 0:
        from_wave = rng.random(size) < wave_share
        ads[from_wave] = wave[rng.integers(0, len(wave), int(from_wave.sum()))]
    return ads


def draw_candidates(world: World, day: date, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct candidate ads per request, as an ``(n, k)`` matrix of ad codes."""
    base, wave, share = world.candidate_pools(day)
    if k > len(base):
        raise ValueError(f"candidates_per_request={k} exceeds the ad pool ({len(base)} ads)")
    candidates = _draw_slots(rng, n * k, base, wave, share).reshape(n, k)
    rows = np.arange(n)
    while rows.size:
        sub = candidates[rows]
        order = np.argsort(sub, axis=1, kind="stable")
        ranked = np.take_along_axis(sub, order, axis=1)
        repeat_sorted = np.zeros(sub.shape, dtype=bool)
        repeat_sorted[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
        repeat = np.zeros(sub.shape, dtype=bool)
        np.put_along_axis(repeat, order, repeat_sorted, axis=1)
        has_repeat = repeat.any(axis=1)
        sub[repeat] = _draw_slots(rng, int(repeat.sum()), base, wave, share)
        candidates[rows] = sub
        rows = rows[has_repeat]
    return candidates


def candidate_frame(
    world: World, day: date, context: RequestContext, rows: np.ndarray, ads: np.ndarray
) -> pd.DataFrame:
    """The policy's input: one row per (request ``rows[i]``, candidate ad ``ads[i]``)."""
    user = context.user[rows]
    site = context.site[rows]
    device = context.device[rows]
    dt = world.dtypes
    return pd.DataFrame(
        {
            "ad_id": categorical(ads, dt["ad_id"]),
            "campaign_id": categorical(world.ad_campaign[ads], dt["campaign_id"]),
            "advertiser_id": categorical(world.ad_advertiser[ads], dt["advertiser_id"]),
            "ad_category": categorical(world.ad_category[ads], dt["ad_category"]),
            "bid_cpc": world.ad_bid_cpc[ads],
            "site_id": categorical(site, dt["site_id"]),
            "site_category": categorical(world.site_category[site], dt["site_category"]),
            "device_type": categorical(device, dt["device_type"]),
            "os": categorical(context.os[rows], dt["os"]),
            "country": categorical(world.user_country[user], dt["country"]),
            "user_id": categorical(user, dt["user_id"]),
            "user_segment": categorical(world.user_segment[user], dt["user_segment"]),
            "hour": context.hour[rows],
            "weekday": np.full(len(rows), day.weekday(), dtype=np.int8),
            "ts": to_datetime(context.ts_ms[rows]),
        }
    )


def _checked_predictions(policy: RankingPolicy, candidates: pd.DataFrame) -> np.ndarray:
    """Call the policy and insist on one finite probability per candidate."""
    predicted = np.asarray(policy.predict_ctr(candidates), dtype=np.float64).reshape(-1)
    if predicted.shape[0] != len(candidates):
        raise ValueError(
            f"policy {policy.version!r} returned {predicted.shape[0]} predictions "
            f"for {len(candidates)} candidates"
        )
    if not np.isfinite(predicted).all() or (predicted < 0).any() or (predicted > 1).any():
        raise ValueError(f"policy {policy.version!r} returned predictions outside [0, 1]")
    return predicted


def _argmax_random_ties(scores: np.ndarray, tie_break: np.ndarray) -> np.ndarray:
    """Column of each row's maximum score, ties broken by the largest ``tie_break``."""
    best = scores.max(axis=1, keepdims=True)
    return np.where(scores == best, tie_break, -1.0).argmax(axis=1)


def rank_top_two(
    world: World,
    day: date,
    context: RequestContext,
    candidates: np.ndarray,
    policy: RankingPolicy,
    rng: np.random.Generator,
    chunk_requests: int = 32_768,
) -> tuple[np.ndarray, np.ndarray]:
    """Winning ads (``(n, 2)``: positions 1 and 2) and the policy's predictions for them."""
    n, k = candidates.shape
    winners = np.empty((n, 2), dtype=candidates.dtype)
    predictions = np.empty((n, 2))
    uniform = bool(getattr(policy, "rank_uniformly", False))
    for start in range(0, n, chunk_requests):
        stop = min(start + chunk_requests, n)
        ads = candidates[start:stop]
        rows = np.repeat(np.arange(start, stop), k)
        predicted = _checked_predictions(policy, candidate_frame(world, day, context, rows, ads.ravel()))
        predicted = predicted.reshape(stop - start, k)
        scores = np.zeros(ads.shape) if uniform else predicted * world.ad_bid_cpc[ads]
        tie_break = rng.random(ads.shape)
        first = _argmax_random_ties(scores, tie_break)
        row_index = np.arange(stop - start)
        scores[row_index, first] = -np.inf
        second = _argmax_random_ties(scores, tie_break)
        chosen = np.stack([first, second], axis=1)
        winners[start:stop] = np.take_along_axis(ads, chosen, axis=1)
        predictions[start:stop] = np.take_along_axis(predicted, chosen, axis=1)
    return winners, predictions


def oracle_expected_revenue(
    world: World, context: RequestContext, candidates: np.ndarray, chunk_requests: int = 32_768
) -> float:
    """Expected revenue of the oracle policy on these requests and candidate sets.

    The oracle knows the ground-truth CTR and the true bid: it shows each request's two candidates
    of highest ``true CTR at position 1 x true bid``, the best at position 1. Under the examination
    model (click = position factor x relevance) that maximises the request's expected revenue
    ``factor(1) * v1 + factor(2) * v2``; the same sum over served impressions is the manifest's
    ``expected_revenue``, so the two compare like for like. Consumes no random numbers.
    """
    n, k = candidates.shape
    if k < 2:
        raise ValueError("the oracle needs at least 2 candidates per request")
    top, second = position_factor(1), position_factor(2)
    total = 0.0
    for start in range(0, n, chunk_requests):
        rows = slice(start, min(start + chunk_requests, n))
        ads = candidates[rows]
        relevance = world.true_ctr_codes(
            world.user_segment[context.user[rows]][:, None],
            world.ad_category[ads],
            context.site[rows][:, None],
            context.device[rows][:, None],
            context.hour[rows][:, None],
            ads,
            world.scenario_offset(context.ts_ms[rows])[:, None],
            np.ones(1),
            world.drift_progress(context.ts_ms[rows])[:, None],
        )
        best_two = np.partition(relevance * world.ad_bid_cpc[ads], k - 2, axis=1)[:, -2:]
        total += float((top * best_two.max(axis=1) + second * best_two.min(axis=1)).sum())
    return total


def _click_delays_ms(rng: np.random.Generator, n: int) -> np.ndarray:
    """Click delays: mostly minutes (lognormal), a few percent hours (up to 20 h)."""
    short = rng.lognormal(np.log(SHORT_DELAY_MEDIAN_S), SHORT_DELAY_LOG_SD, n)
    long = np.exp(rng.uniform(np.log(LONG_DELAY_RANGE_S[0]), np.log(LONG_DELAY_RANGE_S[1]), n))
    seconds = np.where(rng.random(n) < LONG_DELAY_PROB, long, short)
    return np.maximum(np.round(seconds * 1000).astype(np.int64), MIN_DELAY_MS)


def _impression_frame(
    world: World,
    traffic_day: date,
    context: RequestContext,
    served: Served,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Logged impressions (2 per request, position 1 first) and their hidden true prices."""
    n = len(context.ts_ms)
    winners, predictions = served.winners, served.predictions
    rows = np.repeat(np.arange(n), 2)
    ads = winners.ravel()
    user, site, device = context.user[rows], context.site[rows], context.device[rows]
    true_bid = world.ad_bid_cpc[ads]
    logged_bid = (
        true_bid * PRICE_UNIT_FACTOR if world.scenario.is_on("price_unit_bug", traffic_day) else true_bid
    )
    stamp = traffic_day.strftime("%Y%m%d")
    dt = world.dtypes
    frame = pd.DataFrame(
        {
            "impression_id": id_strings(f"i-{stamp}-", 1, 2 * n, 7),
            "ts": to_datetime(context.ts_ms[rows]),
            "request_id": request_id_strings(traffic_day, n)[rows],
            "user_id": categorical(user, dt["user_id"]),
            "user_segment": categorical(world.user_segment[user], dt["user_segment"]),
            "ad_id": categorical(ads, dt["ad_id"]),
            "campaign_id": categorical(world.ad_campaign[ads], dt["campaign_id"]),
            "advertiser_id": categorical(world.ad_advertiser[ads], dt["advertiser_id"]),
            "ad_category": categorical(world.ad_category[ads], dt["ad_category"]),
            "site_id": categorical(site, dt["site_id"]),
            "site_category": categorical(world.site_category[site], dt["site_category"]),
            "device_type": categorical(device, dt["device_type"]),
            "os": categorical(context.os[rows], dt["os"]),
            "country": categorical(world.user_country[user], dt["country"]),
            "position": np.tile(np.array([1, 2], dtype=np.int8), n),
            "bid_cpc": np.round(logged_bid, 2),
            "model_version": pd.Categorical(served.versions[rows]),
            "predicted_ctr": predictions.ravel(),
            "propensity": served.propensity.ravel(),
            "shadow_version": pd.Categorical(
                np.full(2 * n, served.shadow_version, dtype=object)
                if served.shadow_version
                else np.full(2 * n, None, dtype=object)
            ),
            "shadow_ctr": served.shadow_ctr.ravel()
            if served.shadow_ctr is not None
            else np.full(2 * n, np.nan),
        }
    )
    require_fields(frame, IMPRESSION_FIELDS, "impression")
    return frame, true_bid


def request_id_strings(day: date, n: int) -> np.ndarray:
    """The ids of a day's ``n`` requests, in time order."""
    return id_strings(f"r-{day:%Y%m%d}-", 1, n, 7)


def _serve(
    world: World,
    day: date,
    context: RequestContext,
    candidates: np.ndarray,
    policy: RankingPolicy,
    rng: np.random.Generator,
    chunk_requests: int,
) -> Served:
    """Rank the day's requests: one policy as always, or a :class:`ServingPlan` that explores,
    shadows or splits the traffic with a challenger."""
    n, k = candidates.shape
    if isinstance(policy, ServingPlan) and not policy.plain:

        def predict(scorer: object, rows: np.ndarray, ads: np.ndarray) -> np.ndarray:
            return _checked_predictions(scorer, candidate_frame(world, day, context, rows, ads))  # type: ignore[arg-type]

        return serve_plan(
            world,
            candidates,
            policy,
            request_id_strings(day, n),
            rng,
            exploration_stream(world.seed, day),
            predict,
            chunk_requests,
        )
    if isinstance(policy, ServingPlan):
        policy = policy.champion  # type: ignore[assignment]
    winners, predictions = rank_top_two(world, day, context, candidates, policy, rng, chunk_requests)
    uniform = bool(getattr(policy, "rank_uniformly", False))
    return Served(
        winners=winners,
        predictions=predictions,
        versions=np.full(n, policy.version, dtype=object),
        propensity=np.full((n, 2), 1.0 / k if uniform else 1.0),
        explored=np.full(n, uniform),
    )


def exploration_candidates(
    world: World, day: date, context: RequestContext, candidates: np.ndarray, explored: np.ndarray
) -> pd.DataFrame:
    """The exploration log: every candidate of every explored request, with its request id."""
    rows = np.repeat(np.flatnonzero(explored), candidates.shape[1])
    frame = candidate_frame(world, day, context, rows, candidates[explored].ravel())
    frame.insert(0, "request_id", request_id_strings(day, len(context.ts_ms))[rows])
    return frame


def simulate_day(
    world: World,
    day: date,
    *,
    requests_per_day: int = 50_000,
    candidates_per_request: int = 32,
    policy: RankingPolicy | None = None,
    chunk_requests: int = 32_768,
) -> DayTraffic:
    """Simulate day ``day`` of the ad server: requests, ranking, impressions and clicks (clean)."""
    if requests_per_day < 1 or candidates_per_request < 2:
        raise ValueError("need requests_per_day >= 1 and candidates_per_request >= 2")
    policy = policy if policy is not None else RandomPolicy(prior_ctr=world.average_ctr)
    traffic_rng, click_rng, _ = day_streams(world.seed, day)
    context = draw_context(world, world.scenario, day, requests_per_day, traffic_rng)
    candidates = draw_candidates(world, day, requests_per_day, candidates_per_request, traffic_rng)
    served = _serve(world, day, context, candidates, policy, traffic_rng, chunk_requests)
    winners = served.winners
    impressions, true_bid = _impression_frame(world, day, context, served)
    explores = isinstance(policy, ServingPlan) and policy.exploration_share > 0

    rows = np.repeat(np.arange(requests_per_day), 2)
    ads = winners.ravel()
    ts_ms = context.ts_ms[rows]
    true_ctr = world.true_ctr_codes(
        world.user_segment[context.user[rows]],
        world.ad_category[ads],
        context.site[rows],
        context.device[rows],
        context.hour[rows],
        ads,
        world.scenario_offset(ts_ms),
        position_factor(impressions["position"].to_numpy()),
        world.drift_progress(ts_ms),
    )
    oracle = oracle_expected_revenue(world, context, candidates, chunk_requests)
    clicked = click_rng.random(len(true_ctr)) < true_ctr
    clicked_rows = np.flatnonzero(clicked)
    click_ts = ts_ms[clicked_rows] + _click_delays_ms(click_rng, len(clicked_rows))
    order = np.argsort(click_ts, kind="stable")
    clicked_rows, click_ts = clicked_rows[order], click_ts[order]
    clicks = pd.DataFrame(
        {
            "click_id": id_strings(f"k-{day:%Y%m%d}-", 1, len(clicked_rows), 7),
            "impression_id": impressions["impression_id"].to_numpy()[clicked_rows],
            "ts": to_datetime(click_ts),
        }
    )
    require_fields(clicks, CLICK_FIELDS, "click")
    return DayTraffic(
        day=day,
        seed=world.seed,
        scenario=world.scenario,
        policy_version=policy.version,
        n_requests=requests_per_day,
        impressions=impressions,
        clicks=clicks,
        true_ctr=true_ctr,
        true_bid_cpc=true_bid,
        clicked=clicked,
        click_impression_row=clicked_rows,
        oracle_expected_revenue=oracle,
        exploration=exploration_candidates(world, day, context, candidates, served.explored)
        if explores
        else None,
    )
