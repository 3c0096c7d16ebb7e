"""Off-policy estimates from exploration logs against the simulator's ground truth."""

from datetime import date

import numpy as np
import pandas as pd
import pytest

from clickloop.offpolicy import (
    Interval,
    OffPolicyEstimate,
    estimate_from_logs,
    estimate_policy,
    mean_interval,
    target_choices,
)
from clickloop.simulator import RandomPolicy, World, simulate_day
from clickloop.simulator.allocation import EXPLORE_VERSION, ServingPlan
from clickloop.simulator.traffic import DayTraffic
from tests.core.test_allocation import Inverse, Oracle

DAYS = (date(2026, 10, 3), date(2026, 10, 4))
REQUESTS = 12_000


@pytest.fixture(scope="module")
def world() -> World:
    return World(7)


@pytest.fixture(scope="module")
def explored_days(world: World) -> list[DayTraffic]:
    """Two days served by the random policy: every request explored, its candidates logged."""
    plan = ServingPlan(champion=RandomPolicy(prior_ctr=world.average_ctr), exploration_share=0.05)
    return [simulate_day(world, day, requests_per_day=REQUESTS, policy=plan) for day in DAYS]


@pytest.fixture(scope="module")
def estimates(
    world: World, explored_days: list[DayTraffic]
) -> dict[str, tuple[OffPolicyEstimate, float, float]]:
    """Per target policy: its estimate, its true revenue per 1000 requests and its true CTR."""
    impressions, candidates = logs(explored_days)
    out = {}
    for name, make in (("strong", Oracle), ("weak", Inverse)):
        policy = make(world)
        out[name] = (estimate_from_logs(impressions, candidates, policy), *truth(world, candidates, policy))
    return out


def logs(days: list[DayTraffic]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The labelled impressions (clicked from the simulated clicks) and the candidate log."""
    impressions = pd.concat(
        [d.impressions.assign(clicked=d.clicked.astype(np.int8)) for d in days], ignore_index=True
    )
    candidates = pd.concat([d.exploration for d in days], ignore_index=True)
    return impressions, candidates


def truth(world: World, candidates: pd.DataFrame, policy: Oracle) -> tuple[float, float]:
    """The policy's expected revenue per 1000 requests and CTR on the same requests, from the
    ground truth: Σ over its two slots of true CTR(slot) × price."""
    choices = target_choices(candidates, policy)
    requests = candidates.drop_duplicates("request_id").set_index("request_id")
    revenue, clicks = 0.0, 0.0
    for position in (1, 2):
        chosen = choices[choices["position"] == position]
        context = requests.loc[chosen["request_id"]].reset_index()
        ctr = world.candidate_ctr(context, chosen["ad_id"].to_numpy(), position=position)
        revenue += float((ctr * world.bid_cpc(chosen["ad_id"])).sum())
        clicks += float(ctr.sum())
    n = len(requests)
    return 1000.0 * revenue / n, clicks / n / 2


@pytest.mark.parametrize("name", ["strong", "weak"])
def test_the_estimates_interval_contains_the_policy_s_true_value(
    estimates: dict[str, tuple[OffPolicyEstimate, float, float]], name: str
) -> None:
    estimate, true_revenue, true_ctr = estimates[name]
    assert estimate.requests == 2 * REQUESTS
    assert estimate.matched > 0
    for interval in (estimate.ips_revenue_per_1000, estimate.snips_revenue_per_1000):
        assert interval.contains(true_revenue), (interval, true_revenue)
    for interval in (estimate.ips_ctr, estimate.snips_ctr):
        assert interval.contains(true_ctr), (interval, true_ctr)


def test_the_estimate_tells_a_strong_policy_from_a_weak_one(
    estimates: dict[str, tuple[OffPolicyEstimate, float, float]],
) -> None:
    strong, weak = estimates["strong"][0], estimates["weak"][0]
    assert strong.snips_revenue_per_1000.low > weak.snips_revenue_per_1000.high
    assert strong.ips_ctr.low > weak.ips_ctr.high


def test_only_the_explored_requests_count_and_incomplete_requests_are_left_out(world: World) -> None:
    plan = ServingPlan(champion=Oracle(world), exploration_share=0.2)
    day = simulate_day(world, DAYS[0], requests_per_day=3_000, policy=plan)
    impressions, candidates = logs([day])
    explored_requests = impressions.loc[
        impressions["model_version"] == EXPLORE_VERSION, "request_id"
    ].nunique()
    estimate = estimate_from_logs(impressions, candidates, Oracle(world))
    assert estimate.requests == explored_requests
    one_lost = impressions.drop(index=impressions.index[impressions["model_version"] == EXPLORE_VERSION][:1])
    assert estimate_from_logs(one_lost, candidates, Oracle(world)).requests == explored_requests - 1


def test_ips_by_hand_on_a_tiny_log() -> None:
    impressions = pd.DataFrame(
        {
            "request_id": ["a", "a", "b", "b"],
            "position": [1, 2, 1, 2],
            "ad_id": ["x", "y", "x", "z"],
            "propensity": [0.25, 0.25, 0.25, 0.25],
            "clicked": [1, 0, 0, 1],
            "bid_cpc": [2.0, 1.0, 2.0, 3.0],
        }
    )
    choices = pd.DataFrame(
        {"request_id": ["a", "a", "b", "b"], "position": [1, 2, 1, 2], "ad_id": ["x", "z", "y", "z"]}
    )
    estimate = estimate_policy(impressions, choices, "p")
    # request a: slot 1 matches and was clicked at price 2 -> 2 / 0.25 = 8; b: slot 2 -> 3 / 0.25 = 12
    assert estimate.ips_revenue_per_1000.value == pytest.approx(1000 * (8 + 12) / 2)
    assert estimate.ips_ctr.value == pytest.approx((4 + 4) / 2 / 2)
    # SNIPS per slot: slot 1 weights (4, 0) reward (1·2) -> 2; slot 2 weights (0, 4) reward 3 -> 3
    assert estimate.snips_revenue_per_1000.value == pytest.approx(1000 * (2 + 3))
    assert estimate.matched == 2
    with pytest.raises(ValueError, match="propensity"):
        estimate_policy(impressions.drop(columns="propensity"), choices, "p")


def test_mean_interval_is_the_clt_interval() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0])
    interval = mean_interval(values)
    half = 1.959964 * values.std(ddof=1) / 2
    assert (interval.value, interval.low, interval.high) == pytest.approx(
        (2.5, 2.5 - half, 2.5 + half), rel=1e-5
    )
    assert Interval(1.0, 0.5, 1.5).contains(0.5) and not Interval(1.0, 0.5, 1.5).contains(1.6)
