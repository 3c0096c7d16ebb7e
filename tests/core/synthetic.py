"""Small synthetic data with the real schemas of the simulator's contract, shared by the core tests.

* typed tables (``raw_impressions``, ``raw_clicks``, ``ad_events``) built row by row;
* ``features`` days of a synthetic world with a known click probability (:func:`true_ctr`), so a
  trained model has a signal to find and a truth to match.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from clickloop.contract import CLICK_ID, LABEL, LINE_NUMBER, SOURCE_FILE, LogContract, LogSpec
from clickloop.contract_file import load_contract
from clickloop.features import LEFT_IN_EVENTS, FeatureSpec
from clickloop.storage import Warehouse

#: one impression as the simulator's ad server logs it (a JSON object, valid on 2026-10-01)
LOGGED_IMPRESSION: dict[str, object] = {
    "impression_id": "i-1",
    "ts": "2026-10-01T08:15:02.123Z",
    "request_id": "r-1",
    "user_id": "u1",
    "user_segment": "gamers",
    "ad_id": "a1",
    "campaign_id": "c1",
    "advertiser_id": "adv1",
    "ad_category": "games",
    "site_id": "s1",
    "site_category": "news",
    "device_type": "mobile",
    "os": "ios",
    "country": "US",
    "position": 1,
    "bid_cpc": 0.42,
    "model_version": "random-v0",
    "predicted_ctr": 0.03,
}

CONTRACT = load_contract()
SPEC = FeatureSpec.from_contract(CONTRACT)
#: Consecutive UTC days from the simulator's first day.
KEYS = [(date(2026, 10, 1) + timedelta(days=i)).isoformat() for i in range(40)]
TS = pa.timestamp("us", tz="UTC")
_ARROW = {"string": pa.string(), "int": pa.int32(), "float": pa.float64(), "timestamp": TS}


def at(day: str, seconds: float = 0.0) -> datetime:
    """``seconds`` after midnight UTC of ``day``."""
    return datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(seconds=seconds)


def typed_schema(spec: LogSpec) -> pa.Schema:
    """The schema ingest writes for a log: every field typed, then file and line."""
    fields = [(f.column, pa.int8() if f.column == LABEL else _ARROW[f.type]) for f in spec.fields]
    return pa.schema([*fields, (SOURCE_FILE, pa.string()), (LINE_NUMBER, pa.int64())])


def events_schema(contract: LogContract = CONTRACT) -> pa.Schema:
    """The schema of ``ad_events``: the impression's columns, then the label and its click."""
    impressions = [f for f in typed_schema(contract.impressions) if f.name not in (SOURCE_FILE, LINE_NUMBER)]
    impressions = [f for f in impressions if f.name != LABEL]
    return pa.schema(
        [
            *impressions,
            (LABEL, pa.int8()),
            (CLICK_ID, pa.string()),
            ("click_ts", TS),
            ("click_delay_s", pa.float64()),
        ]
    )


def features_schema(spec: FeatureSpec = SPEC, contract: LogContract = CONTRACT) -> pa.Schema:
    """The schema of ``features``: every event column that is not a feature (but those left in
    ``ad_events``), then the features."""
    keep = [f for f in events_schema(contract) if f.name not in spec.columns and f.name not in LEFT_IN_EVENTS]
    feature_types = {c: pa.string() for c in spec.categorical}
    feature_types.update({c: pa.int32() for c in spec.numeric if c in ("hour", "weekday", "position")})
    feature_types.update({c: pa.int64() for c in spec.count_features})
    feature_types.update({c: pa.float64() for c in spec.ctr_features})
    return pa.schema([*keep, *((c, feature_types[c]) for c in spec.columns)])


# --- A typed day of impressions -----------------------------------------------------------------


def impression_row(day: str, i: int, **values: object) -> dict[str, object]:
    """Row ``i`` of a clean typed impressions day (two ads per request, prices in units)."""
    row: dict[str, object] = {
        "impression_id": f"imp-{i}",
        "ts": at(day, 60.0 + i * 7.0 % 86_000),
        "request_id": f"req-{i // 2}",
        "user_id": f"user-{i // 2 % 50}",
        "user_segment": f"segment-{i % 3}",
        "ad_id": f"ad-{i % 11}",
        "campaign_id": f"campaign-{i % 5}",
        "advertiser_id": f"adv-{i % 4}",
        "ad_category": f"category-{i % 6}",
        "site_id": f"site-{i % 7}",
        "site_category": f"site-category-{i % 3}",
        "device_type": ("mobile", "desktop")[i % 2],
        "os": ("ios", "android", "windows")[i % 3],
        "country": ("US", "DE")[i % 2],
        "position": 1 + i % 2,
        "bid_cpc": 0.3 + (i * 37 % 100) / 40.0,
        "model_version": "random-v0",
        "predicted_ctr": 0.005 + (i * 13 % 100) / 1100.0,
        SOURCE_FILE: "impressions-0.jsonl",
        LINE_NUMBER: i + 1,
    }
    row.update(values)
    return row


def impressions_table(rows: list[dict[str, object]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=typed_schema(CONTRACT.impressions))


def event_row(day: str, impression_id: str, **values: object) -> dict[str, object]:
    """One ``ad_events`` row of ``day`` with plausible defaults; the click columns follow the label."""
    row: dict[str, object] = {
        k: v
        for k, v in impression_row(day, 0).items()
        if k not in (SOURCE_FILE, LINE_NUMBER, "impression_id", "request_id")
    }
    row.update(
        impression_id=impression_id,
        ts=at(day, 3600),
        request_id=f"r-{impression_id}",
        user_id="u0",
        ad_id="a0",
        advertiser_id="adv0",
        site_id="s0",
        site_category="news",
        clicked=0,
    )
    row.update(values)
    clicked = bool(row["clicked"])
    row.setdefault(CLICK_ID, f"c-{impression_id}" if clicked else None)
    row.setdefault("click_ts", row["ts"] + timedelta(seconds=30) if clicked else None)
    row.setdefault("click_delay_s", 30.0 if clicked else None)
    return row


def events_table(rows: list[dict[str, object]], contract: LogContract = CONTRACT) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=events_schema(contract))


# --- A synthetic world of features ----------------------------------------------------------------

SEGMENTS = ("casual", "gamer", "shopper", "traveler")
AD_CATEGORIES = ("casual_games", "games", "shopping", "travel")
DEVICES = ("mobile", "desktop", "tablet")
COUNTRIES = ("US", "DE", "FR", "BR")
SITES = tuple(f"s{i}" for i in range(8))
SITE_CATEGORIES = ("news", "sports", "games", "news", "travel", "sports", "games", "news")
#: The columns the synthetic world's click probability depends on.
TRUTH_COLUMNS = ("user_segment", "ad_category", "device_type", "ad_id", "position")


def ad_quality(ad_ids: np.ndarray) -> np.ndarray:
    """A fixed quality in [-1, 1] per ad id (``a<k>``)."""
    k = np.array([int(a[1:]) for a in ad_ids])
    return ((k * 37) % 17) / 8.0 - 1.0


def true_ctr(rows: dict[str, np.ndarray]) -> np.ndarray:
    """The click probability of the synthetic world: segment-category affinity, device, ad quality
    and an examination factor for the second slot."""
    segment = np.searchsorted(SEGMENTS, rows["user_segment"])
    category = np.searchsorted(AD_CATEGORIES, rows["ad_category"])
    logit = (
        -3.4
        + 2.0 * (segment == category)
        + 0.7 * (rows["device_type"] == "mobile")
        - 0.9 * (rows["device_type"] == "tablet")
        + 1.2 * ad_quality(rows["ad_id"])
    )
    examination = np.where(np.asarray(rows["position"]) == 1, 1.0, 0.6)
    return examination / (1.0 + np.exp(-logit))


def truth_of(table: pa.Table) -> np.ndarray:
    """The true click probability of the rows of a synthetic features table."""
    return true_ctr({c: table.column(c).to_numpy(zero_copy_only=False) for c in TRUTH_COLUMNS})


def features_day(day: str, n: int = 3000, seed: int = 0) -> pa.Table:
    """``n`` features rows of ``day``; ads a0..a<199 + 30 per day> (later days bring new ads)."""
    index = KEYS.index(day)
    rng = np.random.default_rng([seed, index])
    ads = np.array([f"a{k}" for k in rng.integers(0, 200 + 30 * index, n)])
    sites = rng.integers(0, len(SITES), n)
    rows: dict[str, np.ndarray] = {
        "user_segment": rng.choice(SEGMENTS, n),
        "ad_category": rng.choice(AD_CATEGORIES, n),
        "device_type": rng.choice(DEVICES, n, p=[0.6, 0.3, 0.1]),
        "ad_id": ads,
        "position": np.tile([1, 2], n // 2 + 1)[:n],
    }
    p = true_ctr(rows)
    quality = ad_quality(ads)
    seconds = np.sort(rng.uniform(0, 86_399, n))
    clicked = (rng.random(n) < p).astype(np.int8)
    data = {
        **rows,
        "impression_id": np.array([f"{day}-{i}" for i in range(n)]),
        "request_id": np.array([f"{day}-r{i // 2}" for i in range(n)]),
        "user_id": np.array([f"u{k}" for k in rng.integers(0, 500, n)]),
        "ts": [at(day, float(s)) for s in seconds],
        LABEL: clicked,
        CLICK_ID: [f"c-{day}-{i}" if c else None for i, c in enumerate(clicked)],
        "click_ts": [at(day, float(s) + 30) if c else None for s, c in zip(seconds, clicked, strict=True)],
        "click_delay_s": [30.0 if c else None for c in clicked],
        "campaign_id": np.array([f"c{int(a[1:]) // 4}" for a in ads]),
        "bid_cpc": rng.uniform(0.1, 2.0, n),
        "model_version": np.full(n, "random-v0"),
        "predicted_ctr": np.full(n, 0.03),
        "propensity": np.full(n, 1 / 32),
        "shadow_version": np.full(n, None),
        "shadow_ctr": np.full(n, None),
        "site_id": np.array(SITES)[sites],
        "site_category": np.array(SITE_CATEGORIES)[sites],
        "os": rng.choice(("ios", "android", "windows"), n),
        "country": rng.choice(COUNTRIES, n),
        "advertiser_id": np.array([f"adv{int(a[1:]) % 6}" for a in ads]),
        "hour": (seconds // 3600).astype(np.int32),
        "weekday": np.full(n, date.fromisoformat(day).weekday(), dtype=np.int32),
        "hist_ad_ctr": 1.0 / (1.0 + np.exp(-(-3.0 + 1.2 * quality + rng.normal(0, 0.3, n)))),
        "user_impressions_24h": rng.integers(0, 20, n),
    }
    schema = features_schema()
    for name in SPEC.columns:
        if name not in data:  # the other history features: constant (no signal)
            data[name] = np.zeros(n)
    return pa.table({f.name: pa.array(data[f.name], f.type) for f in schema})


def write_features_days(warehouse: Warehouse, keys: list[str], n: int = 3000) -> dict[str, Path]:
    return {key: warehouse.write_partition("features", key, features_day(key, n)) for key in keys}


# --- Served days for monitoring -------------------------------------------------------------------

MONITORING_DEVICES = ["mobile", "desktop", "tablet"]


def monitoring_frame(
    day: str,
    n: int,
    seed: int,
    smart_tv: float = 0.0,
    version: str = "random-v0",
    user_ids: bool = False,
) -> pd.DataFrame:
    """``n`` served impressions (n/2 requests) with the ``features`` columns (and ``user_id`` when
    ``user_ids``, drawn where it leaves the other columns as they were); a share ``smart_tv`` of the
    rows gets a device type never seen before (the device-shift scenario)."""
    rng = np.random.default_rng(seed)
    device = rng.choice(MONITORING_DEVICES, n, p=[0.6, 0.3, 0.1]).astype(object)
    device[rng.random(n) < smart_tv] = "smart_tv"
    frame = pd.DataFrame(
        {
            "impression_id": [f"i-{day}-{i:06d}" for i in range(n)],
            "request_id": [f"r-{day}-{i // 2:06d}" for i in range(n)],
            "ts": pd.Timestamp(day, tz="UTC") + pd.to_timedelta(rng.integers(0, 86_400, n), "s"),
            **({"user_id": [f"u{i:04d}" for i in rng.integers(0, 1_000, n)]} if user_ids else {}),
            "clicked": (rng.random(n) < 0.03).astype(np.int8),
            "ad_id": [f"a{i:04d}" for i in rng.integers(0, 500, n)],
            "campaign_id": [f"c{i:03d}" for i in rng.integers(0, 100, n)],
            "bid_cpc": rng.choice([0.25, 0.5, 1.0], n),
            "model_version": version,
            "predicted_ctr": 0.03,
            "user_segment": rng.choice(["gamers", "parents", "foodies"], n),
            "ad_category": rng.choice(["sports", "travel", "tech", "food"], n),
            "site_id": rng.choice([f"s{i:03d}" for i in range(20)], n),
            "site_category": rng.choice(["news", "sports", "family"], n),
            "device_type": device,
            "os": rng.choice(["ios", "android", "windows"], n),
            "country": rng.choice(["US", "IN", "DE"], n, p=[0.5, 0.3, 0.2]),
            "advertiser_id": rng.choice([f"adv{i:02d}" for i in range(10)], n),
            "hour": rng.integers(0, 24, n).astype(np.int32),
            "weekday": np.int32(date.fromisoformat(day).weekday()),
            "position": np.tile(np.array([1, 2], dtype=np.int32), n // 2),
            "hist_ad_impressions": rng.poisson(100, n),
            "hist_ad_ctr": rng.beta(3, 97, n),
            "hist_advertiser_impressions": rng.poisson(3000, n),
            "hist_advertiser_ctr": rng.beta(30, 970, n),
            "hist_site_impressions": rng.poisson(5000, n),
            "hist_site_ctr": rng.beta(30, 970, n),
            "hist_ad_site_category_impressions": rng.poisson(20, n),
            "hist_ad_site_category_ctr": rng.beta(3, 97, n),
            "user_impressions_24h": rng.poisson(5, n),
        }
    )
    assert set(SPEC.columns) <= set(frame.columns)
    return frame


def write_monitoring_day(warehouse: Warehouse, day: str, frame: pd.DataFrame) -> Path:
    return warehouse.write_partition("features", day, pa.Table.from_pandas(frame, preserve_index=False))
