"""What any policy could win back after the ``new_campaigns`` wave, from what it can know.

The wave puts half of every request's candidates on ads no log has seen: new campaigns of new
advertisers, better on average (``NEW_AD_QUALITY_MEAN``) and more varied (an advertiser's effect,
``ADVERTISER_EFFECT_SD``, plus the ad's own, ``NEW_AD_QUALITY_SD``). A model learns an ad's quality
from its clicks, and the loop only counts clicks of days whose labels are final (D-2, the late-click
trap of the design). Two days after the wave starts the features hold one day of it, a couple of
impressions per new ad at the default scales: not a click each.

:func:`wave_capture_bounds` measures, on the day's real requests and candidates, the oracle capture
(share of the oracle's expected revenue) of policies that know the world exactly (every affinity,
effect and the true quality of every old ad) except what they cannot have learned of the new ads:

* ``unknown``: they take each new ad for an average old one (what a model trained before the wave
  does at best);
* ``wave_mean``: they know the wave's mean quality (what a retraining on the wave's first days can
  learn);
* ``advertisers``: they also know each new advertiser's effect exactly (what pooling the clicks of
  an advertiser's ads can learn, given enough of them).

:meth:`WaveBounds.recoverable` turns a capture into the share of the loss won back: the part of
``1 - unknown`` above ``unknown``. The oracle itself knows every new ad: 1 by definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np

from clickloop.simulator.traffic import day_streams, draw_candidates, draw_context
from clickloop.simulator.vocabulary import NEW_AD_QUALITY_MEAN
from clickloop.simulator.world import World, position_factor


@dataclass(frozen=True)
class WaveBounds:
    """Oracle captures of the policies of the module docstring on one day."""

    day: str
    requests: int
    unknown: float
    wave_mean: float
    advertisers: float

    def recoverable(self, capture: float) -> float:
        """The share of the capture lost to the unknown new ads that ``capture`` wins back."""
        return (capture - self.unknown) / (1.0 - self.unknown)


def believed_quality(world: World, knows: str) -> np.ndarray:
    """Every ad's quality as a policy that knows ``knows`` of the wave believes it ("unknown",
    "wave_mean" or "advertisers"); the old ads' as they are."""
    wave = np.arange(world.n_base_ads, world.n_ads_total)
    quality = world.ad_quality.copy()
    if knows == "unknown":
        quality[wave] = 0.0
    elif knows == "wave_mean":
        quality[wave] = NEW_AD_QUALITY_MEAN
    elif knows == "advertisers":
        quality[wave] = NEW_AD_QUALITY_MEAN + world.advertiser_effect[world.ad_advertiser[wave]]
    else:
        raise ValueError(f"knows={knows!r}: expected unknown, wave_mean or advertisers")
    return quality


def expected_revenue(world: World, day: date, requests: int, quality: np.ndarray | None, k: int) -> float:
    """Expected revenue of showing, on each of ``day``'s requests, the two candidates of highest
    believed CTR × bid (the best at position 1), valued at the true CTR."""
    rng, _, _ = day_streams(world.seed, day)
    context = draw_context(world, world.scenario, day, requests, rng)
    ads = draw_candidates(world, day, requests, k, rng)

    def relevance(believed: np.ndarray | None) -> np.ndarray:
        return (
            world.true_ctr_codes(
                world.user_segment[context.user][:, None],
                world.ad_category[ads],
                context.site[:, None],
                context.device[:, None],
                context.hour[:, None],
                ads,
                world.scenario_offset(context.ts_ms)[:, None],
                np.ones(1),
                world.drift_progress(context.ts_ms)[:, None],
                believed,
            )
            * world.ad_bid_cpc[ads]
        )

    truth = relevance(None)
    belief = truth if quality is None else relevance(quality)
    shown = np.take_along_axis(truth, np.argsort(-belief, axis=1, kind="stable")[:, :2], axis=1)
    return float((position_factor(1) * shown[:, 0] + position_factor(2) * shown[:, 1]).sum())


def wave_capture_bounds(
    world: World, day: date, requests: int, candidates_per_request: int = 32
) -> WaveBounds:
    """The captures of the module docstring on ``day`` (a day of the wave) at ``requests`` a day."""
    if not world.scenario.is_on("new_campaigns", day):
        raise ValueError(f"{day} is not a day of the new_campaigns wave ({world.scenario})")
    oracle = expected_revenue(world, day, requests, None, candidates_per_request)
    capture = {
        knows: expected_revenue(world, day, requests, believed_quality(world, knows), candidates_per_request)
        / oracle
        for knows in ("unknown", "wave_mean", "advertisers")
    }
    return WaveBounds(day=day.isoformat(), requests=requests, **capture)
