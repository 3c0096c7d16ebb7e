"""What the ``new_campaigns`` wave lets any policy win back (``clickloop.simulator.bounds``): the
scenario test of the loop's recovery is held to what these bounds allow."""

from datetime import date, timedelta

import numpy as np
import pytest

from clickloop.simulator import World, day_streams, draw_candidates, draw_context, oracle_expected_revenue
from clickloop.simulator.bounds import believed_quality, expected_revenue, wave_capture_bounds

START = date(2026, 10, 3)


@pytest.fixture(scope="module")
def world() -> World:
    return World(7, scenario="new_campaigns", scenario_start=START)


def test_a_policy_that_knows_every_quality_earns_what_the_oracle_earns(world: World) -> None:
    day = START + timedelta(days=1)
    rng, _, _ = day_streams(world.seed, day)
    context = draw_context(world, world.scenario, day, 2_000, rng)
    candidates = draw_candidates(world, day, 2_000, 32, rng)
    oracle = oracle_expected_revenue(world, context, candidates)
    assert expected_revenue(world, day, 2_000, None, 32) == pytest.approx(oracle, rel=1e-9)
    assert expected_revenue(world, day, 2_000, world.ad_quality, 32) == pytest.approx(oracle, rel=1e-9)
    # a policy blind to the new ads earns less, on the same requests
    assert expected_revenue(world, day, 2_000, believed_quality(world, "unknown"), 32) < 0.97 * oracle


@pytest.mark.parametrize("requests", [3_000, 20_000])
def test_without_each_new_ads_own_clicks_most_of_the_loss_stays(world: World, requests: int) -> None:
    """Learning the wave's mean wins back about a tenth of the loss, knowing every new advertiser
    too under half: 90 % needs each new ad's own quality, which two days of labels cannot give."""
    bounds = wave_capture_bounds(world, START + timedelta(days=2), requests)
    assert 0.9 < bounds.unknown < bounds.wave_mean < bounds.advertisers < 1.0
    assert 0.03 < bounds.recoverable(bounds.wave_mean) < 0.2
    assert 0.3 < bounds.recoverable(bounds.advertisers) < 0.6
    assert bounds.recoverable(1.0) == 1.0 and bounds.recoverable(bounds.unknown) == 0.0
    # the old ads are believed as they are; only the new ones change
    believed = believed_quality(world, "advertisers")
    np.testing.assert_array_equal(believed[: world.n_base_ads], world.ad_quality[: world.n_base_ads])
    with pytest.raises(ValueError, match="not a day of the new_campaigns wave"):
        wave_capture_bounds(world, START - timedelta(days=1), requests)
    with pytest.raises(ValueError, match="knows="):
        believed_quality(world, "everything")
