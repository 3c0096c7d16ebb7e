"""The loop closes: once promoted, the champion ranks the simulated ad server's candidates, and the
impressions it serves carry its version and predictions (ranking itself, and its independence from
the logged position, is tested in tests/core)."""

from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from clickloop.calibration import (
    impressions_features,
    read_serving_calibration,
    served_scores,
    with_user_activity_of,
)
from clickloop.contract_file import load_contract
from clickloop.features import FeatureSpec
from clickloop.ranking import STATS_TABLE
from clickloop.simulator import TARGET_CTR
from tests.assets.history import SIMULATOR, History


def test_the_champion_serves_the_ad_server(history: History) -> None:
    warehouse, simulator = history.warehouse, history.simulator
    world = simulator.world()
    for day in history.champion_days:
        assert simulator.manifest(day)["policy_version"] == "ctr_model-v1"
        impressions = pq.read_table(warehouse.partition_path("raw_impressions", day)).to_pandas()
        assert set(impressions["model_version"]) == {"ctr_model-v1"}
        predicted = impressions["predicted_ctr"]
        assert predicted.between(0, 1).all() and predicted.nunique() > 5
        # position 1 holds the higher expected revenue of the pair (predicted CTR × the true bid)
        value = impressions.assign(value=predicted * world.bid_cpc(impressions["ad_id"]))
        pairs = value.pivot_table(
            index="request_id", columns="position", values="value", aggfunc="first"
        ).dropna()
        assert len(pairs) > 0.95 * SIMULATOR["requests_per_day"]
        assert (pairs[1] >= pairs[2] - 1e-8).all()
    assert simulator.policy_for(history.champion_days[-1]).version == "ctr_model-v1"


def test_the_random_policy_served_until_the_first_promotion(history: History) -> None:
    for day in history.random_days:
        assert history.simulator.manifest(day)["policy_version"] == "random-v0"
        impressions = pq.read_table(
            history.warehouse.partition_path("raw_impressions", day),
            columns=["model_version", "predicted_ctr"],
        ).to_pandas()
        assert set(impressions["model_version"]) == {"random-v0"}
        assert set(impressions["predicted_ctr"]) == {TARGET_CTR}  # the prior: no ranking signal


def test_the_champion_is_calibrated_on_the_random_days_since_its_validation_day_until_it_served_one(
    history: History,
) -> None:
    """Its first two served days are calibrated on the random policy's days before them, pooled:
    from its validation day (never a training day) up to D-2; the registry holds that day."""
    keys = history.keys
    tags = history.registry.version_tags("1")
    validation, test = tags["validation_day"], tags["test_day"]
    assert (validation, test) == (keys[8], keys[9])
    first, second = history.champion_days
    assert read_serving_calibration(history.warehouse, first).fitted_on == f"{validation}, {test}"
    assert (
        read_serving_calibration(history.warehouse, second).fitted_on == f"{validation}, {test}, {keys[10]}"
    )
    fitted = history.metadata("serving_calibration", second)
    assert fitted["fitted_on"] == f"{validation}, {test}, {keys[10]}" and fitted["status"] == "fitted"


def test_the_champions_calibration_is_carried_to_the_statistics_it_serves_with(history: History) -> None:
    """Fitted with the statistics of D-1, it is carried to D's on D-1's impressions (the champion's
    first served day, which neither file holds): scored with D's statistics they keep the calibrated
    total they had with D-1's."""
    first, second = history.champion_days
    store = history.warehouse
    stored = read_serving_calibration(store, second)
    metadata = history.metadata("serving_calibration", second)
    assert metadata["shift_measured_on"].startswith(f"impressions of {first} (")
    assert metadata["shift_measured_on"].endswith(f"statistics of {first} → {second}")
    assert stored.statistics_shift != 0.0
    assert metadata["statistics_shift"] == pytest.approx(stored.statistics_shift, abs=1e-4)
    as_fitted = replace(stored, intercept=stored.intercept - stored.statistics_shift, statistics_shift=0.0)
    spec = FeatureSpec.from_contract(load_contract())
    version, booster = history.registry.champion()
    assert version == stored.model_version
    (impressions,) = store.require_partition_paths("raw_impressions", [first])
    with store.duckdb() as con:
        before, after = (
            impressions_features(con, spec, impressions, path)
            for path in store.require_partition_paths(STATS_TABLE, [first, second])
        )
    assert set(before.column("model_version").to_pylist()) == {"ctr_model-v1"}
    after = with_user_activity_of(after, before)
    kept = stored.apply(served_scores(booster, after, spec)).sum()
    assert kept == pytest.approx(as_fitted.apply(served_scores(booster, before, spec)).sum(), rel=1e-6)
    # (with D-1's statistics on both sides the carry would have moved nothing)
    assert stored.apply(served_scores(booster, before, spec)).sum() != pytest.approx(kept, rel=1e-3)
