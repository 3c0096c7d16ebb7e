"""The champion as the ad server's ranking policy: the model uses position but the ranking does not,
candidates get the training features, and plugged into the simulated ad server each impression logs
the champion's version and predicted CTR."""

from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import xgboost as xgb

from clickloop.contract import LABEL, POSITION
from clickloop.features import add_features, build_feature_stats
from clickloop.model import predict_ctr, to_model_frame
from clickloop.ranking import ChampionPolicy, serving_stats_key
from clickloop.simulator import World, simulate_day
from tests.core.synthetic import CONTRACT, SPEC

DAY = "2026-10-05"


def context_rows(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.Timestamp(f"{DAY}T12:00:00Z") + pd.to_timedelta(rng.integers(0, 3600, n), "s"),
            "user_id": [f"u{i}" for i in rng.integers(0, 50, n)],
            "user_segment": rng.choice(["gamers", "sports_fans"], n),
            "ad_id": [f"a{i}" for i in rng.integers(0, 20, n)],
            "campaign_id": "c1",
            "advertiser_id": rng.choice(["adv1", "adv2"], n),
            "ad_category": rng.choice(["games", "sports"], n),
            "site_id": rng.choice(["s1", "s2", "s3"], n),
            "site_category": rng.choice(["news", "games"], n),
            "device_type": rng.choice(["mobile", "desktop"], n),
            "os": rng.choice(["ios", "windows"], n),
            "country": rng.choice(["US", "DE"], n),
            "bid_cpc": 0.5,
        }
    )


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> tuple[xgb.Booster, Path]:
    """A booster that learned a strong position effect, and an empty-history stats file."""
    tmp = tmp_path_factory.mktemp("serving")
    stats = tmp / "stats.parquet"
    rng = np.random.default_rng(3)
    rows = context_rows(20_000, rng)
    rows["position"] = rng.integers(1, 3, len(rows)).astype("int32")
    with duckdb.connect() as con:
        build_feature_stats(con, SPEC, DAY, [], stats)
        table = add_features(con, SPEC, pa.Table.from_pandas(rows, preserve_index=False), stats)
    p = np.where(rows["position"] == 1, 0.08, 0.02)
    p = p * np.where(rows["ad_category"] == "games", 1.5, 1.0)
    labels = (rng.random(len(rows)) < p).astype(np.int8)
    frame = to_model_frame(table, SPEC.columns, SPEC.categorical)
    booster = xgb.train(
        {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 3, "nthread": 1},
        xgb.DMatrix(frame, labels, enable_categorical=True),
        num_boost_round=30,
    )
    return booster, stats


def test_the_model_uses_position_but_the_ranking_does_not(champion) -> None:
    booster, stats = champion
    rng = np.random.default_rng(9)
    candidates = context_rows(500, rng)
    at = {}
    with duckdb.connect() as con:
        for pos in (1, 2):
            rows = candidates.assign(position=np.int32(pos))
            table = add_features(con, SPEC, pa.Table.from_pandas(rows, preserve_index=False), stats)
            at[pos] = predict_ctr(booster, table)
    assert at[1].mean() > 2 * at[2].mean()  # the position effect is real in the model

    policy = ChampionPolicy("7", booster, stats, SPEC)
    logged_first = policy.predict_ctr(candidates.assign(position=1))
    logged_second = policy.predict_ctr(candidates.assign(position=2))
    no_position = policy.predict_ctr(candidates)
    np.testing.assert_array_equal(logged_first, logged_second)
    np.testing.assert_array_equal(logged_first, no_position)
    np.testing.assert_allclose(no_position, at[CONTRACT.reference_position], rtol=1e-6)
    assert POSITION not in SPEC.input_columns and LABEL not in SPEC.input_columns
    assert policy.version == "ctr_model-v7"


def test_the_champion_serves_the_ad_server(champion) -> None:
    """Plugged into the simulator, the champion ranks every candidate in one vectorised call and
    each impression logs its version and predicted CTR."""
    booster, stats = champion
    world = World(7, n_users=2_000, n_sites=30, n_ads=200)
    policy = ChampionPolicy("7", booster, stats, SPEC)
    traffic = simulate_day(
        world, date.fromisoformat(DAY), requests_per_day=2_000, candidates_per_request=16, policy=policy
    )
    imps = traffic.impressions
    assert set(imps["model_version"].astype(str)) == {"ctr_model-v7"}
    assert imps["predicted_ctr"].between(0, 1).all() and imps["predicted_ctr"].nunique() > 5
    # position 1 holds the higher expected revenue of the pair (ranking by pCTR x bid)
    by_request = imps.assign(value=imps["predicted_ctr"] * traffic.true_bid_cpc).pivot(
        index="request_id", columns="position", values="value"
    )
    assert (by_request[1] >= by_request[2] - 1e-12).all()


def test_the_served_day_uses_the_freshest_statistics_it_has() -> None:
    available = ["2026-10-01", "2026-10-03", "2026-10-06"]
    assert serving_stats_key("2026-10-03", available) == "2026-10-03"  # its own, when built
    assert serving_stats_key("2026-10-05", available) == "2026-10-03"  # else the newest earlier one
    assert serving_stats_key("2026-09-30", available) is None
    assert serving_stats_key("2026-10-05", []) is None
