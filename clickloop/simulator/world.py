"""The hidden world of the simulator: users, sites, ads, their effects and the true CTR.

A :class:`World` is deterministic from its seed. Ground-truth click probability (an examination
model)::

    p_click = position_factor[position] * sigmoid(base + affinity[user_segment, ad_category]
              + site_effect[site_id] + device_effect[device_type] + hour_effect[hour]
              + ad_quality[ad_id] + scenario_offset
              + drift * (affinity_drift[user_segment, ad_category] + campaign_drift[campaign_id]))

``base`` is calibrated so that random serving on the stable world has a 3 % click-through rate.
A :class:`Scenario` changes the world from its start day on; days before it are untouched.
``drift`` is 0 except under ``slow_drift``, where it grows continuously with the time since the
start (:meth:`World.drift_progress`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from clickloop.simulator.catalog import draw_ad_block
from clickloop.simulator.clock import MS_PER_DAY, MS_PER_HOUR, as_date, day_start_ms, timestamps_ms
from clickloop.simulator.vocabulary import (
    AD_QUALITY_SD,
    ADVERTISER_EFFECT_SD,
    AFFINITY_SD,
    BASE_DEVICE_MIX,
    CATEGORIES,
    COUNTRIES,
    COUNTRY_SHARES,
    CTR_DROP_OFFSET,
    DEVICE_EFFECT,
    DEVICES,
    FAVOURITE_BOOST,
    FAVOURITE_CATEGORY,
    HOUR_EFFECT,
    HOURLY_SHARE,
    NEW_AD_QUALITY_MEAN,
    NEW_AD_QUALITY_SD,
    NEW_CAMPAIGN_SHARE,
    OPERATING_SYSTEMS,
    OS_BY_DEVICE,
    POSITION_FACTOR,
    PREFERRED_DEVICE_PROB,
    SCENARIOS,
    SEGMENT_SHARES,
    SEGMENTS,
    SITE_CATEGORY_EFFECT_SD,
    SITE_EFFECT_SD,
    SITE_ZIPF_EXPONENT,
    SLOW_DRIFT_AFFINITY_SD,
    SLOW_DRIFT_CAMPAIGN_SD,
    SLOW_DRIFT_PER_DAY,
    SMART_TV,
    SMART_TV_SHARE,
    TARGET_CTR,
    USER_ACTIVITY_LOG_SD,
)

# --------------------------------------------------------------------------------------------
# Array helpers (shared by the traffic, fault and log modules)
# --------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def id_strings(prefix: str, first: int, count: int, width: int) -> np.ndarray:
    """Zero-padded ids ``prefix + number`` for ``first .. first+count-1``, as an object array."""
    return np.array([f"{prefix}{i:0{width}d}" for i in range(first, first + count)], dtype=object)


def _lookup(vocabulary: pd.Index, values: pd.Series | Sequence, column: str) -> np.ndarray:
    """Positions of ``values`` in ``vocabulary``; a clear ValueError names unknown values."""
    series = pd.Series(values)
    if isinstance(series.dtype, pd.CategoricalDtype):
        category_codes = vocabulary.get_indexer(series.cat.categories)
        codes = np.where(series.cat.codes.to_numpy() < 0, -1, category_codes[series.cat.codes.to_numpy()])
    else:
        codes = vocabulary.get_indexer(series.to_numpy())
    if (codes < 0).any():
        unknown = pd.unique(series[codes < 0].astype(object))[:5]
        raise ValueError(f"{column}: values unknown to the simulated world: {list(unknown)}")
    return codes


def position_factor(positions: pd.Series | Sequence | int) -> np.ndarray:
    """Examination probability of each ad slot (1 = top)."""
    pos = np.asarray(positions)
    factor = np.full(pos.shape, np.nan)
    for slot, value in POSITION_FACTOR.items():
        factor[pos == slot] = value
    if np.isnan(factor).any():
        raise ValueError(f"position must be one of {sorted(POSITION_FACTOR)}")
    return factor


def cdf(probabilities: np.ndarray) -> np.ndarray:
    """Cumulative distribution along the last axis, snapped to exactly 1 at the end."""
    cumulative = np.cumsum(probabilities, axis=-1)
    cumulative[cumulative > 1 - 1e-9] = 1.0
    return cumulative


def categorical(codes: np.ndarray, dtype: pd.CategoricalDtype) -> pd.Categorical:
    """A categorical column from integer codes (no copies of the strings)."""
    return pd.Categorical.from_codes(codes, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Scenario
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A named drift scenario, active from ``start`` on (never when ``start`` is None)."""

    name: str = "stable"
    start: date | None = None

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.name!r}; expected one of {SCENARIOS}")

    def active(self, day: date) -> bool:
        """Whether the scenario changes the world on ``day``."""
        return self.name != "stable" and self.start is not None and day >= self.start

    def is_on(self, name: str, day: date) -> bool:
        """Whether scenario ``name`` is the one configured and it is active on ``day``."""
        return self.name == name and self.active(day)


# --------------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------------


class World:
    """Users, sites, ads and their hidden effects, deterministic from ``seed``.

    The ad catalog holds the base pool (``n_ads`` ads, live every day) followed by the
    ``new_campaigns`` wave (``n_ads // 2`` ads of new campaigns and advertisers, with ids never
    used by the base pool), which only enters the candidate pool when that scenario is active.
    """

    def __init__(
        self,
        seed: int = 7,
        *,
        n_users: int = 200_000,
        n_sites: int = 300,
        n_ads: int = 3_000,
        scenario: str = "stable",
        scenario_start: date | str | None = None,
    ) -> None:
        if min(n_users, n_sites, n_ads) < 2:
            raise ValueError("the world needs at least 2 users, 2 sites and 2 ads")
        self.seed = seed
        self.scenario = Scenario(scenario, None if scenario_start is None else as_date(scenario_start))
        rng = np.random.default_rng([seed, 1])
        self._build_users(rng, n_users)
        self._build_sites(rng, n_sites)
        self._build_effects(rng)
        self._build_ads(rng, np.random.default_rng([seed, 2]), n_ads)
        self._build_group_effects(np.random.default_rng([seed, 4]))
        self._build_slow_drift(np.random.default_rng([seed, 5]))
        self._build_vocabularies()
        self.base_logit = self._calibrate_base(np.random.default_rng([seed, 3]))
        self.average_ctr = TARGET_CTR

    # -- construction ------------------------------------------------------------------------

    def _build_users(self, rng: np.random.Generator, n_users: int) -> None:
        """Segment, home country, preferred device and activity level of every user."""
        self.n_users = n_users
        self.user_segment = rng.choice(len(SEGMENTS), n_users, p=SEGMENT_SHARES).astype(np.int8)
        self.user_country = rng.choice(len(COUNTRIES), n_users, p=COUNTRY_SHARES).astype(np.int8)
        self.user_device = rng.choice(len(DEVICES), n_users, p=BASE_DEVICE_MIX).astype(np.int8)
        activity = rng.lognormal(0.0, USER_ACTIVITY_LOG_SD, n_users)
        self._user_cdf = np.cumsum(activity) / activity.sum()
        self.user_ids = id_strings("u", 1, n_users, 6)

    def _build_sites(self, rng: np.random.Generator, n_sites: int) -> None:
        """Category, hidden effect and Zipf-skewed traffic weight of every site."""
        self.n_sites = n_sites
        self.site_category = rng.integers(0, len(CATEGORIES), n_sites).astype(np.int8)
        self.site_effect = rng.normal(0.0, SITE_EFFECT_SD, n_sites)
        weight = 1.0 / rng.permutation(np.arange(1, n_sites + 1)) ** SITE_ZIPF_EXPONENT
        self._site_cdf = np.cumsum(weight) / weight.sum()
        self.site_ids = id_strings("s", 1, n_sites, 4)

    def _build_effects(self, rng: np.random.Generator) -> None:
        """The segment x category affinity (the strongest signal), device and hour effects."""
        affinity = rng.normal(0.0, AFFINITY_SD, (len(SEGMENTS), len(CATEGORIES)))
        affinity[np.arange(len(SEGMENTS)), FAVOURITE_CATEGORY] += FAVOURITE_BOOST
        self.affinity = affinity - affinity.mean()
        self.device_effect = DEVICE_EFFECT.copy()
        self.hour_effect = HOUR_EFFECT.copy()

    def _build_ads(self, rng: np.random.Generator, wave_rng: np.random.Generator, n_ads: int) -> None:
        """The ad catalog: the base pool, then the ``new_campaigns`` wave with fresh ids."""
        n_new = max(2, n_ads // 2)
        base = draw_ad_block(rng, n_ads, 0, 0, 0.0, AD_QUALITY_SD)
        wave = draw_ad_block(
            wave_rng, n_new, base.n_campaigns, base.n_advertisers, NEW_AD_QUALITY_MEAN, NEW_AD_QUALITY_SD
        )
        self.n_base_ads = n_ads
        self.n_ads_total = n_ads + n_new
        self.ad_campaign = np.concatenate([base.campaign, wave.campaign])
        self.campaign_advertiser = np.concatenate([base.campaign_advertiser, wave.campaign_advertiser])
        self.campaign_category = np.concatenate([base.campaign_category, wave.campaign_category])
        self.ad_category = self.campaign_category[self.ad_campaign]
        self.ad_bid_cpc = np.concatenate([base.bid_cpc, wave.bid_cpc])
        self.ad_quality = np.concatenate([base.quality, wave.quality])
        self.ad_advertiser = self.campaign_advertiser[self.ad_campaign]
        self.ad_ids = id_strings("a", 1, self.n_ads_total, 6)
        self.campaign_ids = id_strings("c", 1, len(self.campaign_advertiser), 4)
        self.advertiser_ids = id_strings("adv", 1, int(self.campaign_advertiser.max()) + 1, 3)

    def _build_group_effects(self, rng: np.random.Generator) -> None:
        """Real sites and ads resemble their kin: a site's effect is mostly its category's, an ad's
        quality mostly its advertiser's, plus an individual part (``SITE_EFFECT_SD``,
        ``AD_QUALITY_SD``). Advertisers of the ``new_campaigns`` wave are new, so their share is
        as unknown to a model as their ads."""
        self.site_effect = (
            self.site_effect + rng.normal(0.0, SITE_CATEGORY_EFFECT_SD, len(CATEGORIES))[self.site_category]
        )
        n_advertisers = int(self.campaign_advertiser.max()) + 1
        self.advertiser_effect = rng.normal(0.0, ADVERTISER_EFFECT_SD, n_advertisers)
        self.ad_quality = self.ad_quality + self.advertiser_effect[self.ad_advertiser]

    def _build_slow_drift(self, rng: np.random.Generator) -> None:
        """Where ``slow_drift`` takes the world (its own random stream: every other draw of the world
        is the same with or without it): a centred segment x category affinity change and a
        per-campaign quality change, spread over each campaign's ads."""
        affinity = rng.normal(0.0, SLOW_DRIFT_AFFINITY_SD, (len(SEGMENTS), len(CATEGORIES)))
        self.affinity_drift = affinity - affinity.mean()
        campaign = rng.normal(0.0, SLOW_DRIFT_CAMPAIGN_SD, len(self.campaign_advertiser))
        self.ad_drift = (campaign - campaign.mean())[self.ad_campaign]

    def _build_vocabularies(self) -> None:
        """Categorical dtypes (for fast columns) and lookup indexes (for ground truth)."""
        vocab = {
            "user_id": self.user_ids,
            "user_segment": np.array(SEGMENTS, dtype=object),
            "country": np.array(COUNTRIES, dtype=object),
            "site_id": self.site_ids,
            "site_category": np.array(CATEGORIES, dtype=object),
            "ad_category": np.array(CATEGORIES, dtype=object),
            "ad_id": self.ad_ids,
            "campaign_id": self.campaign_ids,
            "advertiser_id": self.advertiser_ids,
            "device_type": np.array(DEVICES, dtype=object),
            "os": np.array(OPERATING_SYSTEMS, dtype=object),
        }
        self.dtypes = {name: pd.CategoricalDtype(pd.Index(values)) for name, values in vocab.items()}
        self._index = {name: dtype.categories for name, dtype in self.dtypes.items()}

    def _calibrate_base(self, rng: np.random.Generator, n: int = 50_000) -> float:
        """Solve for the base logit giving TARGET_CTR under random serving of the stable world."""
        context = draw_context(self, Scenario(), date(2026, 1, 1), n, rng)
        ads = rng.integers(0, self.n_base_ads, n)
        factor = position_factor(np.where(np.arange(n) % 2 == 0, 1, 2))
        rest = self._logit_without_base(
            self.user_segment[context.user],
            self.ad_category[ads],
            context.site,
            context.device,
            context.hour,
            ads,
            np.zeros(n),
            np.zeros(n),
        )
        low, high = -12.0, 2.0
        for _ in range(60):
            mid = (low + high) / 2
            if (factor * _sigmoid(mid + rest)).mean() < TARGET_CTR:
                low = mid
            else:
                high = mid
        return (low + high) / 2

    # -- ground truth ------------------------------------------------------------------------

    def _logit_without_base(
        self,
        segment: np.ndarray,
        category: np.ndarray,
        site: np.ndarray,
        device: np.ndarray,
        hour: np.ndarray,
        ad: np.ndarray,
        offset: np.ndarray,
        drift: np.ndarray,
        quality: np.ndarray | None = None,
    ) -> np.ndarray:
        """Sum of all logit terms but the base, from integer codes (``drift``: the slow drift's
        progress, 0 outside ``slow_drift``, so the other worlds' sums are bit for bit unchanged;
        ``quality``: every ad's quality as a policy believes it, the true one by default)."""
        return (
            self.affinity[segment, category]
            + self.site_effect[site]
            + self.device_effect[device]
            + self.hour_effect[hour]
            + (self.ad_quality if quality is None else quality)[ad]
            + offset
            + drift * (self.affinity_drift[segment, category] + self.ad_drift[ad])
        )

    def true_ctr_codes(
        self,
        segment: np.ndarray,
        category: np.ndarray,
        site: np.ndarray,
        device: np.ndarray,
        hour: np.ndarray,
        ad: np.ndarray,
        offset: np.ndarray,
        position_factor: np.ndarray,
        drift: np.ndarray | float = 0.0,
        quality: np.ndarray | None = None,
    ) -> np.ndarray:
        """Ground-truth click probability from integer codes (the engine's fast path); ``drift`` is
        :meth:`drift_progress` of the impressions' timestamps; ``quality`` replaces the ads' true
        quality (what a policy that knows all but the ads believes, see ``simulator.bounds``)."""
        logit = self.base_logit + self._logit_without_base(
            segment, category, site, device, hour, ad, offset, np.asarray(drift), quality
        )
        return position_factor * _sigmoid(logit)

    def scenario_offset(self, ts_ms: np.ndarray) -> np.ndarray:
        """The logit offset of the scenario at each timestamp (``ctr_drop`` only)."""
        ts_ms = np.asarray(ts_ms, dtype=np.int64)
        offset = np.zeros(ts_ms.shape)
        if self.scenario.name == "ctr_drop" and self.scenario.start is not None:
            offset[ts_ms >= day_start_ms(self.scenario.start)] = CTR_DROP_OFFSET
        return offset

    def drift_progress(self, ts_ms: np.ndarray) -> np.ndarray:
        """How far ``slow_drift`` has moved the world at each timestamp: ``SLOW_DRIFT_PER_DAY`` × the
        (fractional) days since the start, 0 before it and in every other scenario."""
        ts_ms = np.asarray(ts_ms, dtype=np.int64)
        if self.scenario.name != "slow_drift" or self.scenario.start is None:
            return np.zeros(ts_ms.shape)
        days = (ts_ms - day_start_ms(self.scenario.start)) / MS_PER_DAY
        return np.maximum(days, 0.0) * SLOW_DRIFT_PER_DAY

    def codes(self, column: str, values: pd.Series | Sequence) -> np.ndarray:
        """Integer codes of logged values of ``column`` (e.g. ``ad_id``) in this world."""
        return _lookup(self._index[column], values, column)

    def _context_codes(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Codes of the request-context columns ground truth depends on."""
        missing = {"user_segment", "site_id", "device_type", "ts"} - set(frame.columns)
        if missing:
            raise ValueError(f"ground truth needs columns {sorted(missing)}")
        ts_ms = timestamps_ms(frame["ts"])
        return {
            "segment": self.codes("user_segment", frame["user_segment"]),
            "site": self.codes("site_id", frame["site_id"]),
            "device": self.codes("device_type", frame["device_type"]),
            "hour": (ts_ms % MS_PER_DAY) // MS_PER_HOUR,
            "offset": self.scenario_offset(ts_ms),
            "drift": self.drift_progress(ts_ms),
        }

    def ground_truth_ctr(self, impressions: pd.DataFrame) -> np.ndarray:
        """True click probability of each logged impression.

        Reads the logged columns user_segment, ad_category, ad_id, site_id, device_type, ts
        (datetimes, naive = UTC, or ISO-8601 strings) and position; the scenario state is taken
        from each impression's own date.
        """
        missing = {"ad_category", "ad_id", "position"} - set(impressions.columns)
        if missing:
            raise ValueError(f"ground truth needs columns {sorted(missing)}")
        ctx = self._context_codes(impressions)
        return self.true_ctr_codes(
            ctx["segment"],
            self.codes("ad_category", impressions["ad_category"]),
            ctx["site"],
            ctx["device"],
            ctx["hour"],
            self.codes("ad_id", impressions["ad_id"]),
            ctx["offset"],
            position_factor(impressions["position"].to_numpy()),
            ctx["drift"],
        )

    def candidate_ctr(
        self, requests: pd.DataFrame, ad_ids: Sequence | np.ndarray | pd.Series, position: int = 1
    ) -> np.ndarray:
        """True click probability of showing ad(s) ``ad_ids`` at ``position`` in each request.

        ``requests`` has one row per request context (user_segment, site_id, device_type, ts).
        ``ad_ids`` is either one ad per request (shape ``(n,)``, e.g. a candidate frame's own
        ``ad_id`` column) or a matrix of candidates per request (shape ``(n, k)``); the result
        has the shape of ``ad_ids``.
        """
        ads_array = np.asarray(ad_ids, dtype=object)
        if ads_array.shape[0] != len(requests) or ads_array.ndim not in (1, 2):
            raise ValueError("ad_ids must have shape (n_requests,) or (n_requests, k)")
        ctx = self._context_codes(requests)
        ads = self.codes("ad_id", ads_array.ravel()).reshape(ads_array.shape)
        if ads.ndim == 2:
            ctx = {name: values[:, None] for name, values in ctx.items()}
        return self.true_ctr_codes(
            ctx["segment"],
            self.ad_category[ads],
            ctx["site"],
            ctx["device"],
            ctx["hour"],
            ads,
            ctx["offset"],
            position_factor(position),
            ctx["drift"],
        )

    def bid_cpc(self, ad_ids: Sequence | np.ndarray | pd.Series) -> np.ndarray:
        """The true price per click of each ad (never affected by the ``price_unit_bug``)."""
        return self.ad_bid_cpc[self.codes("ad_id", ad_ids)]

    def ad_table(self) -> pd.DataFrame:
        """The full ad catalog with public attributes; ``wave`` is "base" or "new_campaigns"."""
        return pd.DataFrame(
            {
                "ad_id": self.ad_ids,
                "campaign_id": self.campaign_ids[self.ad_campaign],
                "advertiser_id": self.advertiser_ids[self.ad_advertiser],
                "ad_category": np.array(CATEGORIES, dtype=object)[self.ad_category],
                "bid_cpc": self.ad_bid_cpc,
                "wave": np.where(np.arange(self.n_ads_total) < self.n_base_ads, "base", "new_campaigns"),
            }
        )

    # -- traffic primitives ------------------------------------------------------------------

    def draw_users(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Users of ``n`` requests, skewed by activity."""
        return np.minimum(np.searchsorted(self._user_cdf, rng.random(n)), self.n_users - 1)

    def draw_sites(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Sites of ``n`` requests, Zipf-skewed."""
        return np.minimum(np.searchsorted(self._site_cdf, rng.random(n)), self.n_sites - 1)

    def candidate_pools(self, day: date) -> tuple[np.ndarray, np.ndarray, float]:
        """Live ad pools on ``day``: (base ads, wave ads, share of candidates from the wave)."""
        base = np.arange(self.n_base_ads)
        if self.scenario.is_on("new_campaigns", day):
            return base, np.arange(self.n_base_ads, self.n_ads_total), NEW_CAMPAIGN_SHARE
        return base, np.arange(0), 0.0


@dataclass(frozen=True)
class RequestContext:
    """Integer-coded page views, sorted by time."""

    ts_ms: np.ndarray
    hour: np.ndarray
    user: np.ndarray
    site: np.ndarray
    device: np.ndarray
    os: np.ndarray


def draw_context(
    world: World, scenario: Scenario, day: date, n: int, rng: np.random.Generator
) -> RequestContext:
    """``n`` page views of ``day``: time by the hourly curve, user, site, device and OS."""
    hour = rng.choice(24, n, p=HOURLY_SHARE)
    ts_ms = day_start_ms(day) + hour * MS_PER_HOUR + rng.integers(0, MS_PER_HOUR, n)
    order = np.argsort(ts_ms, kind="stable")
    ts_ms, hour = ts_ms[order], hour[order]
    user = world.draw_users(rng, n)
    site = world.draw_sites(rng, n)
    mixed = np.searchsorted(cdf(BASE_DEVICE_MIX), rng.random(n), side="right")
    device = np.where(rng.random(n) < PREFERRED_DEVICE_PROB, world.user_device[user], mixed)
    if scenario.is_on("device_shift", day):
        device = np.where(rng.random(n) < SMART_TV_SHARE, SMART_TV, device)
    os_code = (rng.random(n)[:, None] >= cdf(OS_BY_DEVICE)[device]).sum(axis=1)
    return RequestContext(
        ts_ms, hour.astype(np.int8), user, site, device.astype(np.int8), os_code.astype(np.int8)
    )
