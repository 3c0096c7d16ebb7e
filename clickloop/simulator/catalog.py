"""The simulated ad catalog, drawn block by block (the base pool, then a wave of new campaigns)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clickloop.simulator.vocabulary import BID_LOG_SD, BID_MEDIAN, BID_RANGE, CATEGORIES


@dataclass(frozen=True)
class AdBlock:
    """One block of the ad catalog (codes relative to the whole catalog)."""

    campaign: np.ndarray
    campaign_advertiser: np.ndarray
    campaign_category: np.ndarray
    bid_cpc: np.ndarray
    quality: np.ndarray
    n_campaigns: int
    n_advertisers: int


def draw_ad_block(
    rng: np.random.Generator,
    n_ads: int,
    first_campaign: int,
    first_advertiser: int,
    quality_mean: float,
    quality_sd: float,
) -> AdBlock:
    """Ads grouped into campaigns (~5 ads each) of advertisers (~6 campaigns each)."""
    n_campaigns = max(1, round(n_ads / 5))
    n_advertisers = max(1, round(n_campaigns / 6))
    campaign = rng.permutation(np.arange(n_ads) % n_campaigns) + first_campaign
    advertiser = rng.permutation(np.arange(n_campaigns) % n_advertisers) + first_advertiser
    category = rng.integers(0, len(CATEGORIES), n_campaigns).astype(np.int8)
    bid = np.round(np.clip(rng.lognormal(np.log(BID_MEDIAN), BID_LOG_SD, n_ads), *BID_RANGE), 2)
    quality = rng.normal(quality_mean, quality_sd, n_ads)
    return AdBlock(campaign, advertiser, category, bid, quality, n_campaigns, n_advertisers)
