"""The ad server's exploration, shadow and canary split (clickloop.simulator.allocation)."""

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clickloop.simulator import AdServer, RandomPolicy, SimulatorConfig, World, simulate_day
from clickloop.simulator.allocation import EXPLORE_VERSION, ServingPlan, in_canary, request_share
from clickloop.simulator.faults import FaultRates
from clickloop.simulator.logs import exploration_path
from clickloop.simulator.traffic import CANDIDATE_FIELDS, request_id_strings

DAY = date(2026, 10, 5)
K = 32


class Oracle:
    """Ranks by the true CTR (a strong policy)."""

    def __init__(self, world: World, version: str = "oracle-v1") -> None:
        self.world = world
        self.version = version

    def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
        return self.world.candidate_ctr(candidates, candidates["ad_id"], position=1)


class Inverse(Oracle):
    """Ranks by the lowest true CTR (a deliberately bad policy), predicting 1 − truth."""

    def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
        return (1.0 - super().predict_ctr(candidates)) / 10.0


@pytest.fixture(scope="module")
def world() -> World:
    return World(7)


def test_exploration_logs_uniform_rankings_with_their_propensity_and_candidates(world: World) -> None:
    plan = ServingPlan(champion=Oracle(world), exploration_share=0.1)
    day = simulate_day(world, DAY, requests_per_day=6_000, policy=plan)
    imp = day.impressions
    explored = imp["model_version"] == EXPLORE_VERSION
    share = explored.mean()
    assert 0.08 < share < 0.12
    np.testing.assert_allclose(imp.loc[explored, "propensity"], 1.0 / K)
    np.testing.assert_allclose(imp.loc[~explored, "propensity"], 1.0)
    assert set(imp.loc[~explored, "model_version"]) == {"oracle-v1"}
    # the candidate log holds every candidate of exactly the explored requests, the shown ads among them
    cands = day.exploration
    assert cands is not None and list(cands.columns) == ["request_id", *CANDIDATE_FIELDS]
    assert set(cands["request_id"]) == set(imp.loc[explored, "request_id"])
    assert (cands.groupby("request_id").size() == K).all()
    shown = set(zip(imp.loc[explored, "request_id"], imp.loc[explored, "ad_id"].astype(str), strict=True))
    logged = set(zip(cands["request_id"], cands["ad_id"].astype(str), strict=True))
    assert shown <= logged
    # uniform: the explored ads' true value is far below the oracle's
    truth = day.true_ctr * day.true_bid_cpc
    assert truth[explored.to_numpy()].mean() < 0.5 * truth[~explored.to_numpy()].mean()


def test_a_random_policy_explores_every_request_under_its_own_version(world: World) -> None:
    plan = ServingPlan(champion=RandomPolicy(prior_ctr=0.03), exploration_share=0.05)
    day = simulate_day(world, DAY, requests_per_day=500, policy=plan)
    assert set(day.impressions["model_version"]) == {"random-v0"}
    np.testing.assert_allclose(day.impressions["propensity"], 1.0 / K)
    assert day.exploration is not None and len(day.exploration) == 500 * K


def test_without_exploration_nothing_changes_but_the_logged_propensity(world: World) -> None:
    plain = simulate_day(world, DAY, requests_per_day=1_000, policy=Oracle(world))
    wrapped = simulate_day(world, DAY, requests_per_day=1_000, policy=ServingPlan(champion=Oracle(world)))
    pd.testing.assert_frame_equal(plain.impressions, wrapped.impressions)
    assert plain.exploration is None
    assert (plain.impressions["propensity"] == 1.0).all()
    assert plain.impressions["shadow_version"].isna().all()


def test_the_canary_split_is_exact_by_the_hash_of_the_request_id(world: World) -> None:
    n = 8_000
    plan = ServingPlan(
        champion=Oracle(world),
        challenger=Inverse(world, "inverse-v2"),
        stage="canary",
        canary_share=0.2,
        exploration_share=0.05,
    )
    imp = simulate_day(world, DAY, requests_per_day=n, policy=plan).impressions
    version = imp.groupby("request_id", sort=True)["model_version"].first()
    ids = request_id_strings(DAY, n)
    expected_canary = pd.Series(in_canary(ids, 0.2), index=ids).sort_index()
    explored = version == EXPLORE_VERSION
    # every request not explored goes to the challenger exactly when its hash is below the share
    assert ((version[~explored] == "inverse-v2") == expected_canary[~explored]).all()
    assert set(version[~explored & ~expected_canary]) == {"oracle-v1"}
    assert abs((version == "inverse-v2").sum() / n - 0.2 * 0.95) < 0.02
    # the split depends on the request id alone
    shares = request_share(ids)
    assert ((shares >= 0) & (shares < 1)).all()
    np.testing.assert_array_equal(shares, request_share(list(ids)))
    assert abs((shares < 0.5).mean() - 0.5) < 0.02


def test_shadow_scores_every_request_and_shows_nothing(world: World) -> None:
    champion, challenger = Oracle(world), Inverse(world, "inverse-v2")
    alone = simulate_day(world, DAY, requests_per_day=2_000, policy=champion)
    plan = ServingPlan(champion=champion, challenger=challenger, stage="shadow")
    shadowed = simulate_day(world, DAY, requests_per_day=2_000, policy=plan).impressions
    assert set(shadowed["model_version"]) == {"oracle-v1"}
    assert (
        shadowed["ad_id"].astype(str).to_numpy() == alone.impressions["ad_id"].astype(str).to_numpy()
    ).all()
    assert set(shadowed["shadow_version"]) == {"inverse-v2"}
    # the challenger's own score of each shown ad (the impression rows hold what it reads)
    np.testing.assert_allclose(shadowed["shadow_ctr"], challenger.predict_ctr(shadowed))


def test_plan_validation() -> None:
    with pytest.raises(ValueError, match="canary_share"):
        ServingPlan(champion=RandomPolicy(), challenger=RandomPolicy(), stage="canary", canary_share=1.5)
    with pytest.raises(ValueError, match="needs a stage"):
        ServingPlan(champion=RandomPolicy(), challenger=RandomPolicy())
    with pytest.raises(ValueError, match="stage"):
        ServingPlan(champion=RandomPolicy(), challenger=RandomPolicy(), stage="live")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exploration_share"):
        SimulatorConfig(exploration_share=-0.1)


def test_the_server_explores_its_configured_share_and_lands_the_candidates(tmp_path: Path) -> None:
    config = SimulatorConfig(requests_per_day=600, exploration_share=0.1, faults=FaultRates.clean())
    server = AdServer(tmp_path / "landing", config)
    server.ensure_day("2026-10-01")
    manifest = server.manifest("2026-10-01")
    assert manifest["settings"]["exploration_share"] == 0.1
    # before any model the random policy explores every request
    assert manifest["exploration"] == {
        "path": "exploration/date=2026-10-01/candidates-2026-10-01.parquet",
        "requests": 600,
        "candidates": 600 * K,
    }
    assert exploration_path(tmp_path / "landing", date(2026, 10, 1)).exists()
