"""Point-in-time features on real Parquet files in DuckDB: history strictly before the day, smoothing,
unseen keys, the first day, one definition for training and serving, and a contract with other
columns, no position and no user.

``ad_events`` partitions are written by hand (small synthetic days with the real schema); the
statistics and features are then computed by the module's own functions.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from clickloop.calibration import rescored_features
from clickloop.contract import LABEL
from clickloop.contract_file import load_contract
from clickloop.features import (
    DEFAULT_CTR,
    DEFAULT_WINDOW_DAYS,
    GLOBAL_KEY_TYPE,
    LEFT_IN_EVENTS,
    PRIOR_STRENGTH,
    USER_ACTIVITY,
    FeatureSpec,
    add_features,
    build_feature_stats,
    build_features,
    candidate_features,
    features_summary,
    read_prior,
)
from clickloop.lookup import StatsLookup
from clickloop.storage import Warehouse
from tests.core.synthetic import (
    CONTRACT,
    KEYS,
    SPEC,
    at,
    event_row,
    events_schema,
    events_table,
    features_schema,
)

D = KEYS[8]  # a day with a full window behind it
SITE_CATEGORY = {"s0": "news", "s1": "sports", "s2": "games", "s3": None}


def flipped(row: dict[str, object]) -> dict[str, object]:
    """The same event with the opposite label (and click columns to match)."""
    kept = {
        k: v
        for k, v in row.items()
        if k not in ("impression_id", "click_id", "click_ts", "click_delay_s", "clicked")
    }
    return event_row(
        str(row["ts"].date()), str(row["impression_id"]), clicked=1 - int(row["clicked"]), **kept
    )


def synthetic_day(day: str, n: int = 40, seed: int = 0) -> list[dict[str, object]]:
    """``n`` events of ``day``: 6 ads of 3 advertisers, 4 sites (one without category), 10 users."""
    rng = np.random.default_rng([seed, int(day.replace("-", ""))])
    rows = []
    for i in range(n):
        ad = int(rng.integers(6))
        site = f"s{rng.integers(4)}"
        rows.append(
            event_row(
                day,
                f"{day}-{i}",
                ts=at(day, float(rng.uniform(0, 86_399))),
                user_id=f"u{rng.integers(10)}",
                user_segment=str(rng.choice(["casual", "gamer", "shopper"])),
                ad_id=f"a{ad}",
                campaign_id=f"c{ad // 2}",
                advertiser_id=f"adv{ad % 3}",
                ad_category=str(rng.choice(["games", "travel"])),
                site_id=site,
                site_category=SITE_CATEGORY[site],
                device_type=str(rng.choice(["mobile", "desktop"])),
                os=str(rng.choice(["ios", "android", "windows"])),
                country=["US", "DE", None][int(rng.integers(3))],
                position=int(1 + i % 2),
                clicked=int(rng.random() < 0.1 + 0.05 * ad),
            )
        )
    return rows


@pytest.fixture()
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "data")


@pytest.fixture()
def ten_days(warehouse: Warehouse) -> Warehouse:
    """ad_events of the first 10 days, 40 synthetic events each."""
    for key in KEYS[:10]:
        warehouse.write_partition("ad_events", key, events_table(synthetic_day(key)))
    return warehouse


def history_of(day: str) -> list[str]:
    """The window's days before ``day``, D-1-W … D-2 (what the asset's partition mapping gives)."""
    i = KEYS.index(day)
    return KEYS[max(0, i - DEFAULT_WINDOW_DAYS - 1) : max(0, i - 1)]


def compute(wh: Warehouse, day: str, history: list[str] | None = None, spec: FeatureSpec = SPEC) -> pa.Table:
    """feature_stats and features of ``day`` by the module's functions; the features table."""
    keys = history_of(day) if history is None else history
    stats = wh.partition_path("feature_stats", day)
    target = wh.partition_path("features", day)
    with wh.duckdb() as con:
        build_feature_stats(con, spec, day, [(k, wh.partition_path("ad_events", k)) for k in keys], stats)
        build_features(con, spec, wh.partition_path("ad_events", day), stats, target)
    return pq.read_table(target)


def by_id(table: pa.Table) -> dict[str, dict[str, object]]:
    return {r["impression_id"]: r for r in table.to_pylist()}


# --- Point in time -----------------------------------------------------------------------------


def test_features_of_a_day_ignore_its_own_and_later_events(ten_days: Warehouse) -> None:
    wh = ten_days
    first = compute(wh, D)
    first_stats = wh.partition_path("feature_stats", D).read_bytes()
    # the event's columns, then the model's features
    assert [(f.name, f.type) for f in first.schema] == [(f.name, f.type) for f in features_schema()]
    assert first.column_names[-len(SPEC.columns) :] == list(SPEC.columns)
    assert first.num_rows == 40

    # Rewrite day D (every label flipped, new rows for existing ads) and the days after it.
    for key in (D, KEYS[9]):
        rows = [flipped(r) for r in synthetic_day(key)]
        rows += [event_row(key, f"{key}-extra-{i}", ad_id=f"a{i % 6}", clicked=1) for i in range(30)]
        wh.write_partition("ad_events", key, events_table(rows))
    second = compute(wh, D)

    assert wh.partition_path("feature_stats", D).read_bytes() == first_stats
    assert second.num_rows == 70
    again = by_id(second)
    for impression_id, row in by_id(first).items():
        assert {c: again[impression_id][c] for c in SPEC.columns} == {c: row[c] for c in SPEC.columns}
        assert again[impression_id][LABEL] == 1 - row[LABEL]  # the label did change


def test_own_day_clicks_never_enter_own_features(warehouse: Warehouse) -> None:
    wh = warehouse
    prev, day = KEYS[0], KEYS[1]
    wh.write_partition(
        "ad_events",
        prev,
        events_table([event_row(prev, f"p{i}", ad_id="old", user_id="u1") for i in range(10)]),
    )
    today = [event_row(day, f"o{i}", ad_id="old", user_id="u1", clicked=1) for i in range(5)]
    today += [event_row(day, f"f{i}", ad_id="fresh", user_id="u2", clicked=1) for i in range(5)]
    wh.write_partition("ad_events", day, events_table(today))

    rows = by_id(compute(wh, day, [prev]))
    # history: 10 impressions of "old", no click: the prior is 0, all 10 clicks of today are unseen
    assert all(
        r["hist_ad_impressions"] == 10 and r["hist_ad_ctr"] == 0.0
        for r in rows.values()
        if r["ad_id"] == "old"
    )
    assert all(
        r["hist_ad_impressions"] == 0 and r["hist_ad_ctr"] == 0.0
        for r in rows.values()
        if r["ad_id"] == "fresh"
    )
    assert rows["o0"]["user_impressions_24h"] == 10
    assert rows["f0"]["user_impressions_24h"] == 0  # today's 5 impressions of u2 do not count


def test_a_labelled_day_rescored_with_the_next_days_statistics(ten_days: Warehouse) -> None:
    # the calibration of serving day D fits on D-2 with the statistics of D-1: its features are those
    # of a window one day newer, which still ends before D-2 (no row sees its own click)
    wh, labelled, next_day = ten_days, KEYS[7], D
    own = compute(wh, labelled)
    compute(wh, next_day)
    with wh.duckdb() as con:
        rescored = rescored_features(
            con,
            SPEC,
            wh.partition_path("ad_events", labelled),
            wh.partition_path("feature_stats", next_day),
        )
    newer_window = compute(wh, labelled, history_of(next_day))
    assert max(history_of(next_day)) < labelled
    assert set(history_of(next_day)) - set(history_of(labelled)) == {KEYS[6]}
    assert [(f.name, f.type) for f in rescored.schema] == [(f.name, f.type) for f in own.schema]
    assert rescored.num_rows == own.num_rows == 40
    assert rescored.column(LABEL).equals(own.column(LABEL))
    assert rescored.to_pylist() == newer_window.to_pylist()
    moved = [c for c in SPEC.historical if not rescored.column(c).equals(own.column(c))]
    assert "hist_ad_impressions" in moved, moved


def test_history_in_or_after_the_day_is_refused(ten_days: Warehouse) -> None:
    wh = ten_days
    with wh.duckdb() as con, pytest.raises(ValueError, match="strictly before"):
        build_feature_stats(
            con,
            SPEC,
            D,
            [(k, wh.partition_path("ad_events", k)) for k in (KEYS[7], D)],
            wh.partition_path("feature_stats", D),
        )


# --- Smoothing, unseen keys, first day ---------------------------------------------------------


def test_smoothing_unseen_keys_and_previous_day_users(warehouse: Warehouse) -> None:
    wh = warehouse
    d0, d1, d2 = KEYS[:3]
    # d0: ad a1 10 impressions / 5 clicks on s3 (no site category); users u1 x5, u2 x5
    wh.write_partition(
        "ad_events",
        d0,
        events_table(
            [
                event_row(
                    d0,
                    f"a{i}",
                    ad_id="a1",
                    site_id="s3",
                    site_category=None,
                    user_id=f"u{1 + i // 5}",
                    clicked=int(i < 5),
                )
                for i in range(10)
            ]
        ),
    )
    # d1 (the previous day of d2): ad a2, 190 impressions, 5 clicks; u1 seen 3 times
    wh.write_partition(
        "ad_events",
        d1,
        events_table(
            [
                event_row(
                    d1,
                    f"b{i}",
                    ad_id="a2",
                    advertiser_id="adv2",
                    user_id="u1" if i < 3 else "u9",
                    clicked=int(i < 5),
                )
                for i in range(190)
            ]
        ),
    )
    wh.write_partition(
        "ad_events",
        d2,
        events_table(
            [
                event_row(
                    d2,
                    "seen",
                    ad_id="a1",
                    site_id="s3",
                    site_category=None,
                    user_id="u1",
                    ts=at(d2, 23 * 3600 + 59 * 60),
                    position=2,
                ),
                event_row(d2, "seen_other_category", ad_id="a1", site_category="news", user_id="u2"),
                event_row(
                    d2, "new", ad_id="zz", advertiser_id="new-adv", site_id="new-site", user_id="new-user"
                ),
            ]
        ),
    )
    rows = by_id(compute(wh, d2, [d0, d1]))
    prior = 10 / 200
    m = PRIOR_STRENGTH

    seen = rows["seen"]
    assert (seen["hour"], seen["weekday"], seen["position"]) == (23, 5, 2)  # 2026-10-03 is a Saturday
    assert seen["hist_ad_impressions"] == 10
    assert seen["hist_ad_ctr"] == pytest.approx((5 + m * prior) / (10 + m))
    assert seen["hist_ad_site_category_impressions"] == 10  # NULL category is a category of its own
    assert seen["hist_ad_site_category_ctr"] == pytest.approx((5 + m * prior) / (10 + m))
    assert seen["hist_advertiser_impressions"] == 10  # adv0 had only a1's rows
    assert seen["hist_site_impressions"] == 10
    assert seen["user_impressions_24h"] == 3  # u1 on d1 only; its 5 of d0 are not "24 h"

    other = rows["seen_other_category"]
    assert other["hist_ad_impressions"] == 10
    assert other["hist_ad_site_category_impressions"] == 0
    assert other["hist_ad_site_category_ctr"] == pytest.approx(prior)
    assert other["hist_site_impressions"] == 190  # s0 is d1's site
    assert other["hist_site_ctr"] == pytest.approx((5 + m * prior) / (190 + m))
    assert other["user_impressions_24h"] == 0  # u2 was seen on d0 only

    new = rows["new"]
    assert all(new[f] == 0 for f in SPEC.count_features)
    assert all(new[f] == pytest.approx(prior) for f in SPEC.ctr_features)

    with wh.duckdb() as con:
        summary = features_summary(con, SPEC, wh.partition_path("features", d2))
        assert read_prior(con, wh.partition_path("feature_stats", d2)) == pytest.approx(prior)
    assert (summary["rows"], summary["unseen_entity"]) == (3, "ad")
    assert summary["unseen_share"] == pytest.approx(1 / 3) and summary["ctr"] == 0.0
    assert "| hist_ad_ctr |" in summary["numeric_markdown"]


def test_first_day_has_the_default_prior(ten_days: Warehouse) -> None:
    table = compute(ten_days, KEYS[0], [])
    stats = pq.read_table(ten_days.partition_path("feature_stats", KEYS[0])).to_pylist()
    assert stats == [
        {
            "key_type": GLOBAL_KEY_TYPE,
            "key1": None,
            "key2": None,
            "impressions": 0,
            "clicks": 0,
            "ctr": DEFAULT_CTR,
        }
    ]
    for name in SPEC.historical:
        expected = DEFAULT_CTR if name.endswith("_ctr") else 0
        assert pc.all(pc.equal(table.column(name), expected)).as_py(), name


def test_statistics_summarise_the_window(ten_days: Warehouse) -> None:
    wh = ten_days
    history = history_of(D)
    with wh.duckdb() as con:
        summary = build_feature_stats(
            con,
            SPEC,
            D,
            [(k, wh.partition_path("ad_events", k)) for k in history],
            wh.partition_path("feature_stats", D),
        )
    rows = [r for k in history for r in synthetic_day(k)]
    assert summary.history_days == tuple(KEYS[:7]) == tuple(history)
    assert (summary.history_rows, summary.history_clicks) == (280, sum(r["clicked"] for r in rows))
    assert summary.keys == {
        "ad": len({r["ad_id"] for r in rows}),
        "advertiser": len({r["advertiser_id"] for r in rows}),
        "site": len({r["site_id"] for r in rows}),
        "ad_site_category": len({(r["ad_id"], r["site_category"]) for r in rows}),
        "user_prev_day": len({r["user_id"] for r in synthetic_day(history[-1])}),  # D-2 only
    }
    assert summary.prior == pytest.approx(summary.history_clicks / summary.history_rows)
    assert f"| ad | {summary.keys['ad']} |" in summary.markdown()


# --- One definition for training and serving ---------------------------------------------------


def test_serving_candidates_get_the_training_features(ten_days: Warehouse) -> None:
    wh = ten_days
    training = compute(wh, D)
    events = pq.read_table(wh.partition_path("ad_events", D))
    stats = wh.partition_path("feature_stats", D)
    candidates = events.drop_columns(["position", "clicked", "click_id", "click_ts"]).take(
        np.arange(events.num_rows)[::-1]  # any order: the result follows its input
    )
    with wh.duckdb() as con:
        served = candidate_features(con, SPEC, candidates, stats)
        relogged = add_features(
            con, SPEC, f"SELECT * FROM read_parquet('{wh.partition_path('ad_events', D)}')", stats
        )

    assert served.column("impression_id").equals(candidates.column("impression_id"))
    assert pc.all(pc.equal(served.column("position"), CONTRACT.reference_position)).as_py()
    assert served.column_names[-len(SPEC.columns) :] == list(SPEC.columns)
    train_rows, served_rows = by_id(training), by_id(served)
    same = [c for c in SPEC.columns if c != "position"]
    for impression_id, row in train_rows.items():
        assert {c: served_rows[impression_id][c] for c in same} == {c: row[c] for c in same}
    relogged_rows = by_id(relogged)
    assert all(
        {c: relogged_rows[i][c] for c in SPEC.columns} == {c: r[c] for c in SPEC.columns}
        for i, r in train_rows.items()
    )


def test_serving_lookups_give_the_sql_features(ten_days: Warehouse) -> None:
    """The ranking's per-entity lookups and the training SQL agree on every feature, with NULL keys
    (a site without category, no country), keys never seen (a new ad, user, site, category), the
    pair entity, categorical or text input, and any row order."""
    wh = ten_days
    compute(wh, D)
    stats = wh.partition_path("feature_stats", D)
    events = pq.read_table(wh.partition_path("ad_events", D)).drop_columns(["position", "clicked"])
    frame = events.to_pandas()
    novel = frame.head(6).assign(
        ad_id=["a99", "a1", "a99", "a2", None, "a3"],
        user_id=["u-new", "u1", None, "u2", "u3", "u4"],
        site_id=["s1", "s-new", "s2", None, "s3", "s0"],
        site_category=["news", "casino", None, "games", None, "news"],
        advertiser_id=["adv9", "adv1", None, "adv0", "adv2", "adv1"],
    )
    candidates = pd.concat([frame.iloc[::-1], novel], ignore_index=True)
    categorical = candidates.assign(**{c: candidates[c].astype("category") for c in SPEC.categorical})
    with wh.duckdb() as con:
        expected = candidate_features(
            con, SPEC, pa.Table.from_pandas(candidates, preserve_index=False), stats
        )
    expected_frame = expected.select(list(SPEC.columns)).to_pandas()
    lookup = StatsLookup(stats, SPEC)
    assert lookup.tables["ad"].impressions.sum() > 0 and lookup.tables["ad_site_category"].keys[1].size
    for given in (candidates, categorical):
        got = lookup.features(given, CONTRACT.reference_position)
        for name in SPEC.columns:
            left = pd.Series(got[name]).reset_index(drop=True)
            if name in SPEC.categorical:
                pd.testing.assert_series_equal(
                    left.astype(object), expected_frame[name].astype(object), check_names=False
                )
            else:
                np.testing.assert_allclose(left.to_numpy(float), expected_frame[name].to_numpy(float))
    got = lookup.features(candidates, CONTRACT.reference_position)
    tail = len(frame)
    assert got["hist_ad_impressions"][tail] == 0 and got["hist_ad_ctr"][tail] == lookup.prior  # a99
    assert got["hist_ad_impressions"][tail + 4] == 0  # a NULL ad id matches no history
    assert got["hist_ad_site_category_impressions"][tail + 1] == 0  # a known ad on a new category
    assert got[USER_ACTIVITY][tail] == 0


def test_missing_input_columns_are_named(ten_days: Warehouse) -> None:
    wh = ten_days
    compute(wh, D)
    events = pq.read_table(wh.partition_path("ad_events", D)).drop_columns(["site_category"])
    with wh.duckdb() as con, pytest.raises(ValueError, match="site_category"):
        candidate_features(con, SPEC, events, wh.partition_path("feature_stats", D))
    with wh.duckdb() as con, pytest.raises(ValueError, match="position"):
        add_features(con, SPEC, events.drop_columns(["position"]), wh.partition_path("feature_stats", D))
    broken = wh.partition_path("feature_stats", KEYS[9])
    stats = pq.read_table(wh.partition_path("feature_stats", D))
    wh.write_partition(
        "feature_stats", KEYS[9], stats.filter(pc.not_equal(stats["key_type"], GLOBAL_KEY_TYPE))
    )
    with wh.duckdb() as con, pytest.raises(ValueError, match="one 'global' row"):
        add_features(con, SPEC, pq.read_table(wh.partition_path("ad_events", D)), broken)


# --- Another ad server's contract ----------------------------------------------------------------

OTHER = {
    "name": "other_server",
    "impressions": {
        "fields": [
            {"source": "event", "column": "impression_id"},
            {"source": "when", "column": "ts", "type": "timestamp"},
            {"source": "creative", "column": "ad_id", "side": "ad"},
            {"source": "campaign", "side": "ad"},
            {"source": "placement"},
            {"source": "browser", "required": False},
        ]
    },
    "clicks": {
        "fields": [
            {"source": "click", "column": "click_id"},
            {"source": "event", "column": "impression_id"},
            {"source": "when", "column": "ts", "type": "timestamp"},
        ]
    },
    "features": {
        "categorical": ["browser", "placement"],
        "entities": [
            {"name": "creative", "columns": ["ad_id"]},
            {"name": "campaign_placement", "columns": ["campaign", "placement"]},
        ],
    },
}


def test_feature_spec_of_a_contract_without_position_or_user(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(OTHER, sort_keys=False))
    contract = load_contract(path)
    spec = FeatureSpec.from_contract(contract)
    assert not contract.has_position and not contract.has_user and not spec.user_activity
    assert spec.reference_position is None
    assert spec.columns == (
        "browser",
        "placement",
        "hour",
        "weekday",
        "hist_creative_impressions",
        "hist_creative_ctr",
        "hist_campaign_placement_impressions",
        "hist_campaign_placement_ctr",
    )
    assert spec.input_columns == ("ts", "browser", "placement", "ad_id", "campaign")
    assert USER_ACTIVITY not in spec.count_features and spec.seen_entity.name == "creative"

    wh = Warehouse(tmp_path / "data")
    d0, d1, d2 = KEYS[:3]
    schema = events_schema(contract)

    def day_rows(day: str, n: int, clicks: set[int]) -> pa.Table:
        return pa.Table.from_pylist(
            [
                {
                    "impression_id": f"{day}-{i}",
                    "ts": at(day, 3600 * (i % 24)),
                    "ad_id": f"cr{i % 2}",
                    "campaign": "camp",
                    "placement": ("top", "side")[i % 2],
                    "browser": None if i == 0 else "firefox",
                    "clicked": int(i in clicks),
                    "click_id": f"k{i}" if i in clicks else None,
                    "click_ts": None,
                    "click_delay_s": None,
                }
                for i in range(n)
            ],
            schema=schema,
        )

    wh.write_partition("ad_events", d0, day_rows(d0, 20, {0, 2, 4, 6}))  # cr0: 10 impressions, 4 clicks
    wh.write_partition("ad_events", d1, day_rows(d1, 20, set()))
    wh.write_partition("ad_events", d2, day_rows(d2, 4, {1}))
    table = compute(wh, d2, [d0, d1], spec=spec)
    kept = [c for c in schema.names if c not in spec.columns and c not in LEFT_IN_EVENTS]
    assert table.column_names == [*kept, *spec.columns]
    rows = by_id(table)
    prior = 4 / 40
    m = PRIOR_STRENGTH
    first = rows[f"{d2}-0"]
    assert (first["hour"], first["weekday"], first["browser"]) == (0, 5, None)
    assert first["hist_creative_impressions"] == 20  # cr0 on d0 and d1
    assert first["hist_creative_ctr"] == pytest.approx((4 + m * prior) / (20 + m))
    assert first["hist_campaign_placement_impressions"] == 20  # camp × top
    second = rows[f"{d2}-1"]
    assert second["hist_creative_ctr"] == pytest.approx((0 + m * prior) / (20 + m))
    stats = pq.read_table(wh.partition_path("feature_stats", d2))
    assert set(stats.column("key_type").to_pylist()) == {"global", "creative", "campaign_placement"}
    with wh.duckdb() as con:
        served = candidate_features(
            con, spec, table.select(list(spec.input_columns)), wh.partition_path("feature_stats", d2)
        )
    assert "position" not in served.column_names
    assert served.select(list(spec.columns)).to_pylist() == table.select(list(spec.columns)).to_pylist()


def test_spec_without_entities_still_has_time_features() -> None:
    spec = replace(SPEC, entities=(), user_activity=False)
    assert spec.columns == (*SPEC.categorical, "hour", "weekday", "position")
    assert spec.seen_entity is None and spec.historical == ()
