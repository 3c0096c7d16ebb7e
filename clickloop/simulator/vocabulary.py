"""The vocabulary and magnitudes of the simulated world.

What a log can say (segments, categories, countries, devices, operating systems, scenarios) and
how strongly each hidden effect moves the click-through rate. :mod:`clickloop.simulator.world`
draws a world from these; :mod:`clickloop.simulator.traffic` draws a day of traffic in it.
"""

import numpy as np

SCENARIOS = ("stable", "device_shift", "ctr_drop", "new_campaigns", "price_unit_bug", "slow_drift")

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
#: slow_drift: the world moves towards a drifted one continuously from the start, this share of the
#: way per day (no day is a step: the logit of a (segment, ad) pair moves by ~3 % of the drift's
#: spread a day), and keeps going past 28 days. The drift: a new segment x category affinity
#: component and a per-campaign quality change (campaigns wear out, others rise).
SLOW_DRIFT_PER_DAY = 1 / 28
SLOW_DRIFT_AFFINITY_SD = 0.8
SLOW_DRIFT_CAMPAIGN_SD = 0.5

SHORT_DELAY_MEDIAN_S = 120.0
SHORT_DELAY_LOG_SD = 0.9
LONG_DELAY_PROB = 0.04
LONG_DELAY_RANGE_S = (3_600.0, 72_000.0)
MIN_DELAY_MS = 1_000
