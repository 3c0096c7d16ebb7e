"""A deterministic ad-server simulator: the embedded default log source of clickloop.

The simulator owns a hidden *world* (users, sites, ads and the true click-through rate of every
impression) and plays an ad server inside it. Each simulated day is written to a landing folder
exactly as a real ad server would hand its logs over:

- ``landing/impressions/date=D/impressions-D.jsonl.gz``: one JSON line per ad shown on day ``D``;
- ``landing/clicks/date=D/clicks-from-D.jsonl.gz`` and ``landing/clicks/date=D+1/clicks-from-D.jsonl.gz``:
  the clicks on day ``D``'s impressions, partitioned by the click's own timestamp, so the clicks
  folder of ``D`` is complete once days ``D-1`` and ``D`` have been simulated;
- ``landing/_simulator/D.json``: the manifest, with the day's true counts and the exact number of
  every injected fault, written last (its presence means the day is complete).

Ground-truth click probability (an examination model)::

    p_click = position_factor[position] * sigmoid(base + affinity[user_segment, ad_category]
              + site_effect[site_id] + device_effect[device_type] + hour_effect[hour]
              + ad_quality[ad_id] + scenario_offset)

``base`` is calibrated so that random serving on the stable world has a 3 % click-through rate.
A day's output depends only on (seed, world and scenario settings, day, ranking policy): the
per-day random streams are spawned from ``np.random.SeedSequence([seed, day.toordinal()])``.

The ad server ranks each request's candidate ads by ``predicted_ctr * bid_cpc`` (expected revenue)
using a replaceable :class:`RankingPolicy`; :class:`RandomPolicy` is the default until a model
exists. Everything is vectorised: the policy scores all candidates of a chunk of requests in one
call.
"""

import contextlib
import fcntl
import functools
import gzip
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import field_validator

from resources.landing import LogSource, list_log_files
from resources.serving import ChampionServing

# --------------------------------------------------------------------------------------------
# Vocabulary and magnitudes of the world
# --------------------------------------------------------------------------------------------

SCENARIOS = ("stable", "device_shift", "ctr_drop", "new_campaigns", "price_unit_bug")

SEGMENTS = (
    "sports_fans",
    "gamers",
    "travelers",
    "investors",
    "fashionistas",
    "tech_enthusiasts",
    "foodies",
    "parents",
)
SEGMENT_SHARES = np.array([0.17, 0.16, 0.12, 0.10, 0.12, 0.13, 0.10, 0.10])
CATEGORIES = (
    "sports",
    "gaming",
    "travel",
    "finance",
    "fashion",
    "tech",
    "food",
    "family",
    "autos",
    "health",
    "entertainment",
    "news",
)
# Each segment's favourite ad category (index into CATEGORIES) gets an extra affinity boost.
FAVOURITE_CATEGORY = np.array([0, 1, 2, 3, 4, 5, 6, 7])
COUNTRIES = ("US", "IN", "GB", "DE", "BR", "FR", "JP", "CA", "MX", "ES", "IT", "AU")
COUNTRY_SHARES = np.array([0.30, 0.12, 0.09, 0.08, 0.08, 0.07, 0.06, 0.05, 0.05, 0.04, 0.03, 0.03])

DEVICES = ("mobile", "desktop", "tablet", "smart_tv")
SMART_TV = DEVICES.index("smart_tv")
BASE_DEVICE_MIX = np.array([0.60, 0.32, 0.08, 0.0])
PREFERRED_DEVICE_PROB = 0.75
DEVICE_EFFECT = np.array([0.05, -0.10, 0.12, -0.40])
OPERATING_SYSTEMS = ("ios", "android", "windows", "macos", "linux", "tizen", "webos")
# Row d: the OS distribution of device d (columns follow OPERATING_SYSTEMS).
OS_BY_DEVICE = np.array(
    [
        [0.45, 0.55, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.70, 0.25, 0.05, 0.0, 0.0],
        [0.60, 0.40, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.55, 0.45],
    ]
)

# Relative request volume per UTC hour: quiet nights, a lunch bump and an evening peak.
HOURLY_TRAFFIC = np.array(
    [
        0.45,
        0.35,
        0.28,
        0.25,
        0.25,
        0.30,
        0.45,
        0.70,
        0.90,
        1.00,
        1.05,
        1.10,
        1.15,
        1.10,
        1.05,
        1.05,
        1.10,
        1.20,
        1.35,
        1.45,
        1.40,
        1.20,
        0.90,
        0.65,
    ]
)
HOURLY_SHARE = HOURLY_TRAFFIC / HOURLY_TRAFFIC.sum()
HOUR_EFFECT = 0.12 * np.cos(2 * np.pi * (np.arange(24) - 20) / 24)

AFFINITY_SD = 0.65
FAVOURITE_BOOST = 1.2
SITE_CATEGORY_EFFECT_SD = 0.3
SITE_EFFECT_SD = 0.1
ADVERTISER_EFFECT_SD = 0.3
AD_QUALITY_SD = 0.1
NEW_AD_QUALITY_MEAN = 0.2
NEW_AD_QUALITY_SD = 0.35
BID_MEDIAN = 0.5
BID_LOG_SD = 0.6
BID_RANGE = (0.05, 5.0)
USER_ACTIVITY_LOG_SD = 1.0
SITE_ZIPF_EXPONENT = 1.0
TARGET_CTR = 0.03
POSITION_FACTOR = {1: 1.0, 2: 0.6}

CTR_DROP_OFFSET = -0.9
SMART_TV_SHARE = 0.4
NEW_CAMPAIGN_SHARE = 0.5
PRICE_UNIT_FACTOR = 100.0

SHORT_DELAY_MEDIAN_S = 120.0
SHORT_DELAY_LOG_SD = 0.9
LONG_DELAY_PROB = 0.04
LONG_DELAY_RANGE_S = (3_600.0, 72_000.0)
MIN_DELAY_MS = 1_000

MS_PER_DAY = 86_400_000
MS_PER_HOUR = 3_600_000
EPOCH = date(1970, 1, 1)

IMPRESSION_FIELDS = (
    "impression_id",
    "ts",
    "request_id",
    "user_id",
    "user_segment",
    "ad_id",
    "campaign_id",
    "advertiser_id",
    "ad_category",
    "site_id",
    "site_category",
    "device_type",
    "os",
    "country",
    "position",
    "bid_cpc",
    "model_version",
    "predicted_ctr",
)
CLICK_FIELDS = ("click_id", "impression_id", "ts")
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
IMPRESSION_FAULTS = ("duplicate_impression", "malformed_line", "wrong_type", "null_field")
CLICK_FAULTS = (
    "duplicate_click",
    "orphan_click",
    "click_before_impression",
    "malformed_line",
    "wrong_type",
    "null_field",
)
IMPRESSION_NULLABLE_IDS = ("impression_id", "user_id", "ad_id", "site_id")
CLICK_NULLABLE_IDS = ("click_id", "impression_id")
IMPRESSION_WRONG_TYPES = ("position", "bid_cpc", "ts")
CLICK_WRONG_TYPES = ("ts_word", "ts_epoch")
RENDER_CHUNK_ROWS = 200_000


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def as_date(value: date | str) -> date:
    """Return ``value`` as a date; strings must be ISO ``YYYY-MM-DD`` (a Dagster partition key)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"expected a date 'YYYY-MM-DD', got {value!r}") from exc


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def _day_start_ms(day: date) -> int:
    """Milliseconds since the Unix epoch at midnight UTC of ``day``."""
    return (day - EPOCH).days * MS_PER_DAY


def _id_strings(prefix: str, first: int, count: int, width: int) -> np.ndarray:
    """Zero-padded ids ``prefix + number`` for ``first .. first+count-1``, as an object array."""
    return np.array([f"{prefix}{i:0{width}d}" for i in range(first, first + count)], dtype=object)


@functools.cache
def _time_of_day_strings() -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables ``HH:MM:SS`` for every second of a day and ``.mmmZ`` for every millisecond."""
    seconds = np.array(
        [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86_400)], dtype=object
    )
    millis = np.array([f".{m:03d}Z" for m in range(1000)], dtype=object)
    return seconds, millis


def iso_ms(ts_ms: np.ndarray) -> np.ndarray:
    """Format epoch milliseconds as ISO-8601 UTC strings like ``2026-10-01T08:15:02.123Z``.

    Vectorised with lookup tables: about ten times faster than pandas' own ISO formatting.
    """
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    if ts_ms.size == 0:
        return np.array([], dtype=object)
    days, ms_of_day = np.divmod(ts_ms, MS_PER_DAY)
    seconds, millis = np.divmod(ms_of_day, 1000)
    unique_days, day_pos = np.unique(days, return_inverse=True)
    prefixes = np.array(
        [(EPOCH + timedelta(days=int(d))).isoformat() + "T" for d in unique_days], dtype=object
    )
    second_strings, milli_strings = _time_of_day_strings()
    return prefixes[day_pos] + second_strings[seconds] + milli_strings[millis]


def _to_datetime(ts_ms: np.ndarray) -> pd.DatetimeIndex:
    """Epoch milliseconds as a tz-aware (UTC) millisecond-resolution datetime index."""
    return pd.DatetimeIndex(np.asarray(ts_ms, dtype="datetime64[ms]")).tz_localize("UTC")


def _epoch_ms(parsed: pd.Series) -> np.ndarray:
    """Epoch milliseconds of a tz-aware datetime series."""
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64)


def _timestamps_ms(values: pd.Series | Sequence) -> np.ndarray:
    """Epoch milliseconds of datetimes (naive = UTC, or tz-aware) or ISO-8601 strings."""
    series = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        parsed = pd.to_datetime(series, utc=True)
    else:
        parsed = pd.to_datetime(series, utc=True, format="ISO8601")
    if parsed.isna().any():
        raise ValueError("ts has missing values; ground truth needs every impression's time")
    return _epoch_ms(parsed)


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


def _position_factor(positions: pd.Series | Sequence | int) -> np.ndarray:
    """Examination probability of each ad slot (1 = top)."""
    pos = np.asarray(positions)
    factor = np.full(pos.shape, np.nan)
    for slot, value in POSITION_FACTOR.items():
        factor[pos == slot] = value
    if np.isnan(factor).any():
        raise ValueError(f"position must be one of {sorted(POSITION_FACTOR)}")
    return factor


def _cdf(probabilities: np.ndarray) -> np.ndarray:
    """Cumulative distribution along the last axis, snapped to exactly 1 at the end."""
    cdf = np.cumsum(probabilities, axis=-1)
    cdf[cdf > 1 - 1e-9] = 1.0
    return cdf


def _categorical(codes: np.ndarray, dtype: pd.CategoricalDtype) -> pd.Categorical:
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
        self.user_ids = _id_strings("u", 1, n_users, 6)

    def _build_sites(self, rng: np.random.Generator, n_sites: int) -> None:
        """Category, hidden effect and Zipf-skewed traffic weight of every site."""
        self.n_sites = n_sites
        self.site_category = rng.integers(0, len(CATEGORIES), n_sites).astype(np.int8)
        self.site_effect = rng.normal(0.0, SITE_EFFECT_SD, n_sites)
        weight = 1.0 / rng.permutation(np.arange(1, n_sites + 1)) ** SITE_ZIPF_EXPONENT
        self._site_cdf = np.cumsum(weight) / weight.sum()
        self.site_ids = _id_strings("s", 1, n_sites, 4)

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
        base = _draw_ad_block(rng, n_ads, 0, 0, 0.0, AD_QUALITY_SD)
        wave = _draw_ad_block(
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
        self.ad_ids = _id_strings("a", 1, self.n_ads_total, 6)
        self.campaign_ids = _id_strings("c", 1, len(self.campaign_advertiser), 4)
        self.advertiser_ids = _id_strings("adv", 1, int(self.campaign_advertiser.max()) + 1, 3)

    def _build_group_effects(self, rng: np.random.Generator) -> None:
        """Real sites and ads resemble their kin: a site's effect is mostly its category's, an ad's
        quality mostly its advertiser's, plus an individual part (``SITE_EFFECT_SD``,
        ``AD_QUALITY_SD``). Advertisers of the ``new_campaigns`` wave are new, so their share is
        as unknown to a model as their ads."""
        self.site_effect = self.site_effect + rng.normal(
            0.0, SITE_CATEGORY_EFFECT_SD, len(CATEGORIES)
        )[self.site_category]
        n_advertisers = int(self.campaign_advertiser.max()) + 1
        self.ad_quality = self.ad_quality + rng.normal(
            0.0, ADVERTISER_EFFECT_SD, n_advertisers
        )[self.ad_advertiser]

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
        factor = _position_factor(np.where(np.arange(n) % 2 == 0, 1, 2))
        rest = self._logit_without_base(
            self.user_segment[context.user],
            self.ad_category[ads],
            context.site,
            context.device,
            context.hour,
            ads,
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
    ) -> np.ndarray:
        """Sum of all logit terms but the base, from integer codes."""
        return (
            self.affinity[segment, category]
            + self.site_effect[site]
            + self.device_effect[device]
            + self.hour_effect[hour]
            + self.ad_quality[ad]
            + offset
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
    ) -> np.ndarray:
        """Ground-truth click probability from integer codes (the engine's fast path)."""
        logit = self.base_logit + self._logit_without_base(segment, category, site, device, hour, ad, offset)
        return position_factor * _sigmoid(logit)

    def scenario_offset(self, ts_ms: np.ndarray) -> np.ndarray:
        """The logit offset of the scenario at each timestamp (``ctr_drop`` only)."""
        ts_ms = np.asarray(ts_ms, dtype=np.int64)
        offset = np.zeros(ts_ms.shape)
        if self.scenario.name == "ctr_drop" and self.scenario.start is not None:
            offset[ts_ms >= _day_start_ms(self.scenario.start)] = CTR_DROP_OFFSET
        return offset

    def codes(self, column: str, values: pd.Series | Sequence) -> np.ndarray:
        """Integer codes of logged values of ``column`` (e.g. ``ad_id``) in this world."""
        return _lookup(self._index[column], values, column)

    def _context_codes(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Codes of the request-context columns ground truth depends on."""
        missing = {"user_segment", "site_id", "device_type", "ts"} - set(frame.columns)
        if missing:
            raise ValueError(f"ground truth needs columns {sorted(missing)}")
        ts_ms = _timestamps_ms(frame["ts"])
        return {
            "segment": self.codes("user_segment", frame["user_segment"]),
            "site": self.codes("site_id", frame["site_id"]),
            "device": self.codes("device_type", frame["device_type"]),
            "hour": (ts_ms % MS_PER_DAY) // MS_PER_HOUR,
            "offset": self.scenario_offset(ts_ms),
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
            _position_factor(impressions["position"].to_numpy()),
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
            _position_factor(position),
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
class _AdBlock:
    """One block of the ad catalog (codes relative to the whole catalog)."""

    campaign: np.ndarray
    campaign_advertiser: np.ndarray
    campaign_category: np.ndarray
    bid_cpc: np.ndarray
    quality: np.ndarray
    n_campaigns: int
    n_advertisers: int


def _draw_ad_block(
    rng: np.random.Generator,
    n_ads: int,
    first_campaign: int,
    first_advertiser: int,
    quality_mean: float,
    quality_sd: float,
) -> _AdBlock:
    """Ads grouped into campaigns (~5 ads each) of advertisers (~6 campaigns each)."""
    n_campaigns = max(1, round(n_ads / 5))
    n_advertisers = max(1, round(n_campaigns / 6))
    campaign = rng.permutation(np.arange(n_ads) % n_campaigns) + first_campaign
    advertiser = rng.permutation(np.arange(n_campaigns) % n_advertisers) + first_advertiser
    category = rng.integers(0, len(CATEGORIES), n_campaigns).astype(np.int8)
    bid = np.round(np.clip(rng.lognormal(np.log(BID_MEDIAN), BID_LOG_SD, n_ads), *BID_RANGE), 2)
    quality = rng.normal(quality_mean, quality_sd, n_ads)
    return _AdBlock(campaign, advertiser, category, bid, quality, n_campaigns, n_advertisers)


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
class RequestContext:
    """Integer-coded page views, sorted by time."""

    ts_ms: np.ndarray
    hour: np.ndarray
    user: np.ndarray
    site: np.ndarray
    device: np.ndarray
    os: np.ndarray


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


def draw_context(
    world: World, scenario: Scenario, day: date, n: int, rng: np.random.Generator
) -> RequestContext:
    """``n`` page views of ``day``: time by the hourly curve, user, site, device and OS."""
    hour = rng.choice(24, n, p=HOURLY_SHARE)
    ts_ms = _day_start_ms(day) + hour * MS_PER_HOUR + rng.integers(0, MS_PER_HOUR, n)
    order = np.argsort(ts_ms, kind="stable")
    ts_ms, hour = ts_ms[order], hour[order]
    user = world.draw_users(rng, n)
    site = world.draw_sites(rng, n)
    mixed = np.searchsorted(_cdf(BASE_DEVICE_MIX), rng.random(n), side="right")
    device = np.where(rng.random(n) < PREFERRED_DEVICE_PROB, world.user_device[user], mixed)
    if scenario.is_on("device_shift", day):
        device = np.where(rng.random(n) < SMART_TV_SHARE, SMART_TV, device)
    os_code = (rng.random(n)[:, None] >= _cdf(OS_BY_DEVICE)[device]).sum(axis=1)
    return RequestContext(
        ts_ms, hour.astype(np.int8), user, site, device.astype(np.int8), os_code.astype(np.int8)
    )


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
            "ad_id": _categorical(ads, dt["ad_id"]),
            "campaign_id": _categorical(world.ad_campaign[ads], dt["campaign_id"]),
            "advertiser_id": _categorical(world.ad_advertiser[ads], dt["advertiser_id"]),
            "ad_category": _categorical(world.ad_category[ads], dt["ad_category"]),
            "bid_cpc": world.ad_bid_cpc[ads],
            "site_id": _categorical(site, dt["site_id"]),
            "site_category": _categorical(world.site_category[site], dt["site_category"]),
            "device_type": _categorical(device, dt["device_type"]),
            "os": _categorical(context.os[rows], dt["os"]),
            "country": _categorical(world.user_country[user], dt["country"]),
            "user_id": _categorical(user, dt["user_id"]),
            "user_segment": _categorical(world.user_segment[user], dt["user_segment"]),
            "hour": context.hour[rows],
            "weekday": np.full(len(rows), day.weekday(), dtype=np.int8),
            "ts": _to_datetime(context.ts_ms[rows]),
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
    top, second = _position_factor(1), _position_factor(2)
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
    winners: np.ndarray,
    predictions: np.ndarray,
    policy_version: str,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Logged impressions (2 per request, position 1 first) and their hidden true prices."""
    n = len(context.ts_ms)
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
            "impression_id": _id_strings(f"i-{stamp}-", 1, 2 * n, 7),
            "ts": _to_datetime(context.ts_ms[rows]),
            "request_id": _id_strings(f"r-{stamp}-", 1, n, 7)[rows],
            "user_id": _categorical(user, dt["user_id"]),
            "user_segment": _categorical(world.user_segment[user], dt["user_segment"]),
            "ad_id": _categorical(ads, dt["ad_id"]),
            "campaign_id": _categorical(world.ad_campaign[ads], dt["campaign_id"]),
            "advertiser_id": _categorical(world.ad_advertiser[ads], dt["advertiser_id"]),
            "ad_category": _categorical(world.ad_category[ads], dt["ad_category"]),
            "site_id": _categorical(site, dt["site_id"]),
            "site_category": _categorical(world.site_category[site], dt["site_category"]),
            "device_type": _categorical(device, dt["device_type"]),
            "os": _categorical(context.os[rows], dt["os"]),
            "country": _categorical(world.user_country[user], dt["country"]),
            "position": np.tile(np.array([1, 2], dtype=np.int8), n),
            "bid_cpc": np.round(logged_bid, 2),
            "model_version": pd.Categorical.from_codes(
                np.zeros(2 * n, dtype=np.int8), categories=[policy_version]
            ),
            "predicted_ctr": predictions.ravel(),
        }
    )
    return frame, true_bid


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
    winners, predictions = rank_top_two(world, day, context, candidates, policy, traffic_rng, chunk_requests)
    impressions, true_bid = _impression_frame(world, day, context, winners, predictions, policy.version)

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
        _position_factor(impressions["position"].to_numpy()),
    )
    oracle = oracle_expected_revenue(world, context, candidates, chunk_requests)
    clicked = click_rng.random(len(true_ctr)) < true_ctr
    clicked_rows = np.flatnonzero(clicked)
    click_ts = ts_ms[clicked_rows] + _click_delays_ms(click_rng, len(clicked_rows))
    order = np.argsort(click_ts, kind="stable")
    clicked_rows, click_ts = clicked_rows[order], click_ts[order]
    clicks = pd.DataFrame(
        {
            "click_id": _id_strings(f"k-{day:%Y%m%d}-", 1, len(clicked_rows), 7),
            "impression_id": impressions["impression_id"].to_numpy()[clicked_rows],
            "ts": _to_datetime(click_ts),
        }
    )
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
    )


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultRates:
    """Per-record probability of each kind of dirt in the written logs (0 = clean logs).

    - duplicate_impression: an impression line repeated verbatim later in the file;
    - duplicate_click: a click line repeated verbatim, or a second click (new click_id) on the
      same impression a few seconds later;
    - orphan_click: an extra click whose impression_id never existed;
    - click_before_impression: a click whose ts is earlier than its impression's ts;
    - malformed_line: a truncated line (broken JSON);
    - wrong_type: a field with the wrong type (position "first", bid_cpc "0.4USD", ts "yesterday",
      a click ts as an epoch-milliseconds number);
    - null_field: a required id (impression_id, user_id, ad_id, site_id, click_id) is null.
    """

    duplicate_impression: float = 0.005
    duplicate_click: float = 0.01
    orphan_click: float = 0.005
    click_before_impression: float = 0.005
    malformed_line: float = 0.002
    wrong_type: float = 0.002
    null_field: float = 0.002

    def __post_init__(self) -> None:
        for name, rate in asdict(self).items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate {name}={rate} must lie in [0, 1]")

    @classmethod
    def clean(cls) -> "FaultRates":
        """All rates 0: perfectly clean logs."""
        return cls(**{name: 0.0 for name in asdict(cls())})


@dataclass
class _FilePlan:
    """How a clean frame becomes the lines of one file: order of rows, per-line edits, counts."""

    frame: pd.DataFrame
    order: np.ndarray
    edits: dict[int, tuple[str, str, float]]
    faults: dict[str, int]
    altered_rows: np.ndarray
    details: dict[str, int] = field(default_factory=dict)


def _split_counts(rng: np.random.Generator, eligible: int, rates: Sequence[float]) -> list[int]:
    """Exact fault counts (binomial draws), capped so that they never exceed ``eligible``."""
    counts, left = [], eligible
    for rate in rates:
        count = min(int(rng.binomial(eligible, rate)), left)
        counts.append(count)
        left -= count
    return counts


def _line_order(n: int, insert_after: np.ndarray, extra_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Final line order: rows ``0..n-1`` with ``extra_rows[i]`` inserted after row ``insert_after[i]``.

    Returns (row index of every output line, output line of every clean row).
    """
    keys = np.concatenate([2 * np.arange(n), 2 * insert_after + 1])
    rows = np.concatenate([np.arange(n), extra_rows])
    order = np.argsort(keys, kind="stable")
    clean_line = np.searchsorted(keys[order], 2 * np.arange(n))
    return rows[order], clean_line


def _edit_plan(
    rng: np.random.Generator,
    clean_line: np.ndarray,
    rows: dict[str, np.ndarray],
    variants: Mapping[str, Sequence[str]],
) -> dict[int, tuple[str, str, float]]:
    """Per output line: (fault, variant, random number) for malformed / wrong_type / null rows."""
    edits: dict[int, tuple[str, str, float]] = {}
    for fault, chosen in rows.items():
        picks = rng.integers(0, len(variants[fault]), len(chosen))
        cuts = rng.random(len(chosen))
        for row, pick, cut in zip(chosen.tolist(), picks.tolist(), cuts.tolist(), strict=True):
            edits[int(clean_line[row])] = (fault, variants[fault][pick], cut)
    return edits


def _plan_impressions(frame: pd.DataFrame, rates: FaultRates, rng: np.random.Generator) -> _FilePlan:
    """Choose disjoint impression lines to duplicate, truncate, mistype or null."""
    n = len(frame)
    n_dup, n_mal, n_wrong, n_null = _split_counts(
        rng, n, [rates.duplicate_impression, rates.malformed_line, rates.wrong_type, rates.null_field]
    )
    chosen = rng.choice(n, n_dup + n_mal + n_wrong + n_null, replace=False) if n else np.arange(0)
    dup, mal, wrong, null = np.split(chosen, np.cumsum([n_dup, n_mal, n_wrong]))
    order, clean_line = _line_order(n, rng.integers(dup, n) if n_dup else dup, dup)
    edits = _edit_plan(
        rng,
        clean_line,
        {"malformed_line": mal, "wrong_type": wrong, "null_field": null},
        {
            "malformed_line": ("truncated",),
            "wrong_type": IMPRESSION_WRONG_TYPES,
            "null_field": IMPRESSION_NULLABLE_IDS,
        },
    )
    faults = {
        "duplicate_impression": n_dup,
        "malformed_line": n_mal,
        "wrong_type": n_wrong,
        "null_field": n_null,
    }
    return _FilePlan(frame, order, edits, faults, np.sort(np.concatenate([mal, wrong, null])))


@dataclass(frozen=True)
class _ClickFile:
    """The clean clicks of one click file and what the fault planner needs to know about them."""

    click_id: np.ndarray
    impression_id: np.ndarray
    ts_ms: np.ndarray
    impression_ts_ms: np.ndarray
    impression_row: np.ndarray
    landing_day: date
    same_day: bool


def _plan_clicks(
    clicks: _ClickFile,
    rates: FaultRates,
    rng: np.random.Generator,
    next_click: int,
    source_day: date,
    n_impressions: int,
) -> tuple[_FilePlan, int]:
    """Choose click faults for one file; returns the plan and the next free click number."""
    n = len(clicks.ts_ms)
    ts_ms = clicks.ts_ms.copy()
    day_start, day_end = _day_start_ms(clicks.landing_day), _day_start_ms(clicks.landing_day) + MS_PER_DAY - 1
    eligible_before = (
        np.flatnonzero(clicks.impression_ts_ms - day_start >= MIN_DELAY_MS)
        if clicks.same_day
        else np.arange(0)
    )
    (n_before,) = _split_counts(rng, len(eligible_before), [rates.click_before_impression])
    before = rng.choice(eligible_before, n_before, replace=False) if n_before else np.arange(0)
    rest = np.setdiff1d(np.arange(n), before)
    n_dup, n_mal, n_wrong, n_null = _split_counts(
        rng, len(rest), [rates.duplicate_click, rates.malformed_line, rates.wrong_type, rates.null_field]
    )
    chosen = rng.choice(rest, n_dup + n_mal + n_wrong + n_null, replace=False) if len(rest) else rest
    dup, mal, wrong, null = np.split(chosen, np.cumsum([n_dup, n_mal, n_wrong]))
    (n_orphan,) = _split_counts(rng, n, [rates.orphan_click])

    # click_before_impression: the click's clock reads up to 10 minutes before the impression.
    room = np.minimum(clicks.impression_ts_ms[before] - day_start, 600_000)
    ts_ms[before] = clicks.impression_ts_ms[before] - rng.integers(MIN_DELAY_MS, room + 1)

    # duplicate_click: half verbatim repeats anywhere later, half double-clicks with a new click_id.
    new_id = rng.random(n_dup) < 0.5
    verbatim, double = dup[~new_id], dup[new_id]
    double_ts = np.minimum(ts_ms[double] + rng.integers(200, 5_000, len(double)), day_end)
    orphan_at = rng.integers(0, n, n_orphan) if n else np.arange(0)
    orphan_ts = np.clip(ts_ms[orphan_at] + rng.integers(0, 60_000, n_orphan), day_start, day_end)
    n_new = len(double) + n_orphan
    new_ids = _id_strings(f"k-{source_day:%Y%m%d}-", next_click, n_new, 7)
    orphan_impressions = _id_strings(
        f"i-{source_day:%Y%m%d}-", n_impressions + 1 + rng.integers(0, 10**6), n_orphan, 7
    )
    frame = pd.DataFrame(
        {
            "click_id": np.concatenate([clicks.click_id, clicks.click_id[verbatim], new_ids]),
            "impression_id": np.concatenate(
                [
                    clicks.impression_id,
                    clicks.impression_id[verbatim],
                    clicks.impression_id[double],
                    orphan_impressions,
                ]
            ),
            "ts": np.concatenate([ts_ms, ts_ms[verbatim], double_ts, orphan_ts]),
        }
    )
    insert_after = np.concatenate(
        [
            rng.integers(verbatim, n) if len(verbatim) else verbatim,
            np.minimum(double + rng.integers(0, 50, len(double)), n - 1) if len(double) else double,
            orphan_at,
        ]
    )
    order, clean_line = _line_order(n, insert_after, n + np.arange(len(verbatim) + n_new))
    edits = _edit_plan(
        rng,
        clean_line,
        {"malformed_line": mal, "wrong_type": wrong, "null_field": null},
        {"malformed_line": ("truncated",), "wrong_type": CLICK_WRONG_TYPES, "null_field": CLICK_NULLABLE_IDS},
    )
    faults = {
        "duplicate_click": n_dup,
        "orphan_click": n_orphan,
        "click_before_impression": n_before,
        "malformed_line": n_mal,
        "wrong_type": n_wrong,
        "null_field": n_null,
    }
    details = {"duplicate_click_same_line": len(verbatim), "duplicate_click_new_id": len(double)}
    altered = np.sort(np.concatenate([before, mal, wrong, null]))
    return _FilePlan(frame, order, edits, faults, altered, details), next_click + n_new


_FIELD_PATTERNS: dict[str, re.Pattern[str]] = {
    name: re.compile(rf'"{name}":("(?:[^"\\]|\\.)*"|[^,}}]+)')
    for name in ("impression_id", "user_id", "ad_id", "site_id", "click_id", "position", "bid_cpc", "ts")
}


def _replace_field(line: str, name: str, make: Callable[[str], str]) -> str:
    """Replace the JSON value of field ``name`` with ``make(old_value_text)``."""
    return _FIELD_PATTERNS[name].sub(lambda m: f'"{name}":{make(m.group(1))}', line, count=1)


def _epoch_ms_text(value: str) -> str:
    """A quoted ISO timestamp as the text of an epoch-milliseconds JSON number."""
    parsed = datetime.fromisoformat(value.strip('"').replace("Z", "+00:00"))
    return str(int(parsed.timestamp() * 1000))


def _apply_edit(line: str, fault: str, variant: str, u: float) -> str:
    """Corrupt one rendered JSON line."""
    if fault == "malformed_line":
        return line[: 1 + int(u * (len(line) - 2))]
    if fault == "null_field":
        return _replace_field(line, variant, lambda _: "null")
    if variant == "position":
        return _replace_field(line, "position", lambda v: '"first"' if v == "1" else '"second"')
    if variant == "bid_cpc":
        return _replace_field(line, "bid_cpc", lambda v: f'"{v}USD"')
    if variant in ("ts", "ts_word"):
        return _replace_field(line, "ts", lambda _: '"yesterday"')
    if variant == "ts_epoch":
        return _replace_field(line, "ts", _epoch_ms_text)
    raise ValueError(f"unknown edit {fault}/{variant}")


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def _render(frame: pd.DataFrame) -> list[str]:
    """JSON lines of a frame (ts as epoch milliseconds is formatted as ISO-8601 first)."""
    if frame.empty:
        return []
    out = frame.copy()
    out["ts"] = iso_ms(out["ts"].to_numpy())
    return out.to_json(orient="records", lines=True, force_ascii=True).rstrip("\n").split("\n")


def _atomic_write(path: Path, write: Callable[[object], None]) -> None:
    """Write ``path`` via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_plan(path: Path, plan: _FilePlan) -> int:
    """Render a plan chunk by chunk into a deterministic gzip file; returns the line count."""

    edited = np.array(sorted(plan.edits), dtype=np.int64)

    def write(handle: object) -> None:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=handle, mtime=0) as gz:
            for start in range(0, len(plan.order), RENDER_CHUNK_ROWS):
                lines = _render(plan.frame.take(plan.order[start : start + RENDER_CHUNK_ROWS]))
                for position in edited[(edited >= start) & (edited < start + len(lines))].tolist():
                    lines[position - start] = _apply_edit(lines[position - start], *plan.edits[position])
                if lines:
                    gz.write(("\n".join(lines) + "\n").encode("ascii"))

    _atomic_write(path, write)
    return len(plan.order)


def impressions_path(landing_dir: str | Path, day: date) -> Path:
    """Where the impressions of ``day`` land."""
    return Path(landing_dir) / "impressions" / f"date={day}" / f"impressions-{day}.jsonl.gz"


def clicks_path(landing_dir: str | Path, landing_day: date, source_day: date) -> Path:
    """Where the clicks that happened on ``landing_day`` on impressions of ``source_day`` land."""
    return Path(landing_dir) / "clicks" / f"date={landing_day}" / f"clicks-from-{source_day}.jsonl.gz"


def manifest_path(landing_dir: str | Path, day: date) -> Path:
    """Where the manifest of simulated ``day`` lands."""
    return Path(landing_dir) / "_simulator" / f"{day}.json"


def read_manifest(landing_dir: str | Path, day: date) -> dict:
    """The manifest of ``day`` (FileNotFoundError if the day was not simulated)."""
    return json.loads(manifest_path(landing_dir, day).read_text())


def _ms(series: pd.Series) -> np.ndarray:
    """Epoch milliseconds of a tz-aware datetime column."""
    return _epoch_ms(series)


def _click_files(traffic: DayTraffic) -> list[_ClickFile]:
    """The clean clicks of a day split by the landing date of their own timestamp."""
    ts_ms = _ms(traffic.clicks["ts"])
    impression_ts = _ms(traffic.impressions["ts"])[traffic.click_impression_row]
    landing = (ts_ms // MS_PER_DAY) - (_day_start_ms(traffic.day) // MS_PER_DAY)
    files = []
    for offset in (0, 1):
        keep = landing == offset
        files.append(
            _ClickFile(
                click_id=traffic.clicks["click_id"].to_numpy()[keep],
                impression_id=traffic.clicks["impression_id"].to_numpy()[keep],
                ts_ms=ts_ms[keep],
                impression_ts_ms=impression_ts[keep],
                impression_row=traffic.click_impression_row[keep],
                landing_day=traffic.day + timedelta(days=offset),
                same_day=offset == 0,
            )
        )
    return files


def _file_entry(kind: str, landing_day: date, plan: _FilePlan, lines: int) -> dict:
    """The manifest entry of one written file."""
    records = len(plan.order) - sum(
        plan.faults.get(name, 0) for name in ("duplicate_impression", "duplicate_click", "orphan_click")
    )
    return {
        "kind": kind,
        "landing_date": landing_day.isoformat(),
        "records": records,
        "lines": lines,
        "unaltered_records": records - len(plan.altered_rows),
        "faults": dict(plan.faults),
        **plan.details,
    }


def write_day(
    traffic: DayTraffic,
    landing_dir: str | Path,
    faults: FaultRates | None = None,
    *,
    settings: Mapping | None = None,
) -> dict:
    """Write a simulated day's logs (with injected faults) and then its manifest; returns it.

    ``records`` of a file counts its clean records, ``lines`` everything written;
    lines = records + duplicates + orphan clicks, and ``unaltered_records`` = records minus those
    corrupted in place (malformed, wrong type, null field, click before impression).
    ``clicks_on_faulty_impressions`` counts a click file's unaltered clicks whose impression line
    was corrupted (they look like orphans to an ingest). ``faults`` totals per log kind.
    """
    faults = faults if faults is not None else FaultRates()
    *_, rng = day_streams(traffic.seed, traffic.day)
    landing_dir = Path(landing_dir)
    files: dict[str, dict] = {}

    imp_plan = _plan_impressions(traffic.impressions.assign(ts=_ms(traffic.impressions["ts"])), faults, rng)
    path = impressions_path(landing_dir, traffic.day)
    files[path.relative_to(landing_dir).as_posix()] = _file_entry(
        "impressions", traffic.day, imp_plan, _write_plan(path, imp_plan)
    )

    faulty_impressions = np.zeros(len(traffic.impressions), dtype=bool)
    faulty_impressions[imp_plan.altered_rows] = True
    next_click = len(traffic.clicks) + 1
    for click_file in _click_files(traffic):
        plan, next_click = _plan_clicks(
            click_file, faults, rng, next_click, traffic.day, len(traffic.impressions)
        )
        path = clicks_path(landing_dir, click_file.landing_day, traffic.day)
        entry = _file_entry("clicks", click_file.landing_day, plan, _write_plan(path, plan))
        unaltered = np.ones(len(click_file.impression_row), dtype=bool)
        unaltered[plan.altered_rows] = False
        entry["clicks_on_faulty_impressions"] = int(
            faulty_impressions[click_file.impression_row[unaltered]].sum()
        )
        files[path.relative_to(landing_dir).as_posix()] = entry

    manifest = _manifest(traffic, faults, files, settings)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    _atomic_write(manifest_path(landing_dir, traffic.day), lambda handle: handle.write(text.encode()))
    return manifest


def _manifest(
    traffic: DayTraffic, faults: FaultRates, files: dict[str, dict], settings: Mapping | None
) -> dict:
    """The day's true counts, revenue and exact fault counts."""
    totals: dict[str, dict[str, int]] = {"impressions": {}, "clicks": {}}
    for entry in files.values():
        kind_totals = totals[entry["kind"]]
        for name, count in entry["faults"].items():
            kind_totals[name] = kind_totals.get(name, 0) + count
    clicks_by_date = {
        entry["landing_date"]: entry["records"] for entry in files.values() if entry["kind"] == "clicks"
    }
    return {
        "day": traffic.day.isoformat(),
        "seed": traffic.seed,
        "scenario": traffic.scenario.name,
        "scenario_start": traffic.scenario.start.isoformat() if traffic.scenario.start else None,
        "scenario_active": traffic.scenario_active,
        "policy_version": traffic.policy_version,
        "requests": traffic.n_requests,
        "impressions": len(traffic.impressions),
        "clicks": len(traffic.clicks),
        "clicks_by_landing_date": clicks_by_date,
        "revenue": round(float(traffic.true_bid_cpc[traffic.clicked].sum()), 2),
        "expected_revenue": round(float((traffic.true_ctr * traffic.true_bid_cpc).sum()), 4),
        "oracle_expected_revenue": (
            None
            if traffic.oracle_expected_revenue is None
            else round(traffic.oracle_expected_revenue, 4)
        ),
        "fault_rates": asdict(faults),
        "faults": totals,
        "files": files,
        "settings": dict(settings or {}),
    }


# --------------------------------------------------------------------------------------------
# The Dagster resource
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _cached_world(
    seed: int, n_users: int, n_sites: int, n_ads: int, scenario: str, scenario_start: str | None
) -> World:
    """One World per configuration and process."""
    return World(
        seed, n_users=n_users, n_sites=n_sites, n_ads=n_ads, scenario=scenario, scenario_start=scenario_start
    )


@contextlib.contextmanager
def _landing_lock(landing_dir: str | Path) -> Iterator[None]:
    """An exclusive lock on the landing folder (fcntl, released when the process dies)."""
    folder = Path(landing_dir) / "_simulator"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class AdServerSimulator(LogSource):
    """The embedded log source: simulates ad-server days on demand into ``landing_dir``."""

    seed: int = 7
    requests_per_day: int = 50_000
    candidates_per_request: int = 32
    n_ads: int = 3_000
    n_users: int = 200_000
    n_sites: int = 300
    scenario: str = "stable"
    scenario_start: str | None = None
    start_date: str = "2026-10-01"
    duplicate_impression_rate: float = 0.005
    duplicate_click_rate: float = 0.01
    orphan_click_rate: float = 0.005
    click_before_impression_rate: float = 0.005
    malformed_line_rate: float = 0.002
    wrong_type_rate: float = 0.002
    null_field_rate: float = 0.002
    #: where the champion comes from; None serves with the random policy forever
    serving: ChampionServing | None = None

    @field_validator("scenario", mode="before")
    @classmethod
    def _known_scenario(cls, value: str) -> str:
        """Reject unknown scenario names (an ``EnvVar`` is checked once Dagster resolves it)."""
        if isinstance(value, dg.EnvVar):
            return value
        if value not in SCENARIOS:
            raise ValueError(f"unknown scenario {value!r}; expected one of {SCENARIOS}")
        return value

    @field_validator("scenario_start", "start_date", mode="before")
    @classmethod
    def _iso_date(cls, value: str | None) -> str | None:
        """Dates are ISO 'YYYY-MM-DD' (an ``EnvVar`` is checked once Dagster resolves it)."""
        if value is None or isinstance(value, dg.EnvVar):
            return value
        return as_date(value).isoformat()

    @field_validator(
        "duplicate_impression_rate",
        "duplicate_click_rate",
        "orphan_click_rate",
        "click_before_impression_rate",
        "malformed_line_rate",
        "wrong_type_rate",
        "null_field_rate",
        mode="before",
    )
    @classmethod
    def _rate(cls, value: float) -> float:
        """Fault rates are probabilities (an ``EnvVar`` is checked once Dagster resolves it)."""
        if isinstance(value, dg.EnvVar):
            return value
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"fault rate {value} must lie in [0, 1]")
        return value

    def world(self) -> World:
        """The simulated world of this configuration (built once per process)."""
        return _cached_world(
            self.seed, self.n_users, self.n_sites, self.n_ads, self.scenario, self.scenario_start
        )

    def fault_rates(self) -> FaultRates:
        """The configured fault rates."""
        return FaultRates(
            duplicate_impression=self.duplicate_impression_rate,
            duplicate_click=self.duplicate_click_rate,
            orphan_click=self.orphan_click_rate,
            click_before_impression=self.click_before_impression_rate,
            malformed_line=self.malformed_line_rate,
            wrong_type=self.wrong_type_rate,
            null_field=self.null_field_rate,
        )

    def settings(self) -> dict:
        """Everything but the landing folder that determines a day's files."""
        return {
            name: value
            for name, value in self.model_dump().items()
            if name not in ("landing_dir", "serving")
        }

    def policy_for(self, day: date | str) -> RankingPolicy:
        """The ranking policy serving ``day``: the champion when one has been promoted (and
        ``serving`` is set), the random policy until then."""
        if self.serving is not None:
            champion = self.serving.policy_for(as_date(day))
            if champion is not None:
                return champion
        return RandomPolicy(prior_ctr=self.world().average_ctr)

    def _first_day(self) -> date:
        return as_date(self.start_date)

    def _check_served(self, day: date) -> None:
        if day < self._first_day():
            raise ValueError(f"no traffic on {day}: the simulator starts on {self.start_date}")

    def ensure_day(self, day: date | str, policy: RankingPolicy | None = None) -> bool:
        """Simulate and write ``day`` unless its manifest exists; True if it simulated now."""
        day = as_date(day)
        self._check_served(day)
        # the steps of a run (separate processes) may ask for the same day at once: one simulates
        with _landing_lock(self.landing_dir):
            return self._ensure_day_locked(day, policy)

    def _ensure_day_locked(self, day: date, policy: RankingPolicy | None) -> bool:
        existing = manifest_path(self.landing_dir, day)
        if existing.exists():
            recorded = json.loads(existing.read_text()).get("settings", {})
            if recorded != self.settings():
                raise ValueError(
                    f"{existing} was simulated with different settings; use a fresh landing_dir "
                    f"(recorded {recorded}, now {self.settings()})"
                )
            return False
        traffic = simulate_day(
            self.world(),
            day,
            requests_per_day=self.requests_per_day,
            candidates_per_request=self.candidates_per_request,
            policy=policy if policy is not None else self.policy_for(day),
        )
        write_day(traffic, self.landing_dir, self.fault_rates(), settings=self.settings())
        return True

    def partition_files(self, kind: Literal["impressions", "clicks"], day: date | str) -> list[Path]:
        """The landed files of partition ``day`` of ``kind``, simulating what they need first.

        Impressions need day D; clicks need days D-1 (when served) and D.
        """
        if kind not in ("impressions", "clicks"):
            raise ValueError(f"kind must be 'impressions' or 'clicks', got {kind!r}")
        day = as_date(day)
        self._check_served(day)
        if kind == "clicks" and day - timedelta(days=1) >= self._first_day():
            self.ensure_day(day - timedelta(days=1))
        self.ensure_day(day)
        return list_log_files(self.landing_dir, kind, day)

    def manifest(self, day: date | str) -> dict:
        """The manifest of simulated ``day``."""
        return read_manifest(self.landing_dir, as_date(day))

    def ground_truth_ctr(self, impressions: pd.DataFrame) -> np.ndarray:
        """True click probability of logged impressions (see :meth:`World.ground_truth_ctr`)."""
        return self.world().ground_truth_ctr(impressions)

    def oracle_revenue(self, day: date | str) -> float | None:
        """Expected revenue of the oracle policy on ``day``'s requests and candidates (compare it
        with the manifest's ``expected_revenue`` of the served policy); None when the day was
        not simulated or its manifest predates the oracle."""
        path = manifest_path(self.landing_dir, as_date(day))
        if not path.exists():
            return None
        value = json.loads(path.read_text()).get("oracle_expected_revenue")
        return None if value is None else float(value)
