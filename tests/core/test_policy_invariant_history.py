"""``features.policy_invariant_history``: slot-corrected CTRs, sites relative to the ads they showed,
the mean ad's CTR as prior (``clickloop.position``, ``clickloop.features.feature_stats_sql``). Off
by default: the default statistics are ``tests/core/test_features.py``'s."""

from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clickloop.contract import ContractError
from clickloop.contract_file import contract_to_dict, parse_contract
from clickloop.features import PRIOR_STRENGTH, build_feature_stats, candidate_features
from clickloop.lookup import StatsLookup
from clickloop.storage import Warehouse
from tests.core.synthetic import CONTRACT, KEYS, SPEC, event_row, events_table
from tests.core.test_features import D, by_id, compute, history_of, synthetic_day

INVARIANT = replace(SPEC, policy_invariant=True)


@pytest.fixture()
def ten_days(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "data")
    for key in KEYS[:10]:
        warehouse.write_partition("ad_events", key, events_table(synthetic_day(key)))
    return warehouse


def test_the_flag_is_read_from_the_contract_file_and_off_by_default() -> None:
    assert CONTRACT.policy_invariant_history is False and SPEC.policy_invariant is False
    data = contract_to_dict(CONTRACT)
    assert data["features"]["policy_invariant_history"] is False  # written back as read
    data["features"]["policy_invariant_history"] = True
    assert parse_contract(data).policy_invariant_history is True
    data["features"]["policy_invariant_history"] = "yes"
    with pytest.raises(ContractError, match="my.yaml: features.policy_invariant_history"):
        parse_contract(data, "my.yaml")


def test_default_statistics_have_no_slot_correction(ten_days: Warehouse) -> None:
    wh = ten_days
    with wh.duckdb() as con:
        summary = build_feature_stats(
            con,
            SPEC,
            D,
            [(k, wh.partition_path("ad_events", k)) for k in history_of(D)],
            wh.partition_path("feature_stats", D),
        )
    assert summary.position_factors == {}
    assert "Slots" not in summary.markdown()  # the UI does not claim reference-slot CTRs
    assert summary.prior == pytest.approx(summary.history_clicks / summary.history_rows)


def test_sites_count_the_ads_they_showed_and_the_prior_is_the_mean_ad(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "data")
    d0, d1, d2 = KEYS[0], KEYS[1], KEYS[2]
    # a1, a good ad, on site s3: 10 impressions, 5 clicks; a2, a poor one, on s0: 190, 5 clicks
    good = [event_row(d0, f"g{i}", ad_id="a1", site_id="s3", clicked=int(i < 5)) for i in range(10)]
    poor = [event_row(d1, f"p{i}", ad_id="a2", site_id="s0", clicked=int(i < 5)) for i in range(190)]
    wh.write_partition("ad_events", d0, events_table(good))
    wh.write_partition("ad_events", d1, events_table(poor))
    wh.write_partition(
        "ad_events",
        d2,
        events_table(
            [
                event_row(d2, "on_s3", ad_id="a2", site_id="s3"),
                event_row(d2, "on_s0", ad_id="a1", site_id="s0"),
            ]
        ),
    )
    rows = by_id(compute(wh, d2, [d0, d1], spec=INVARIANT))
    m = PRIOR_STRENGTH
    prior = (5 / 10 + 5 / 190) / 2  # one slot: no correction; the mean ad, not the window's 10/200
    a1, a2 = (5 + m * prior) / (10 + m), (5 + m * prior) / (190 + m)
    on_s3, on_s0 = rows["on_s3"], rows["on_s0"]
    assert on_s0["hist_ad_ctr"] == pytest.approx(a1) and on_s3["hist_ad_ctr"] == pytest.approx(a2)
    # a site's impressions count as the expected clicks of its ads, in mean-ad units
    assert on_s3["hist_site_ctr"] == pytest.approx((5 + m * prior) / (10 * a1 / prior + m))
    assert on_s0["hist_site_ctr"] == pytest.approx((5 + m * prior) / (190 * a2 / prior + m))
    assert on_s3["hist_site_ctr"] < a1  # s3's clicks were its good ad's doing
    assert on_s0["hist_site_ctr"] > a2  # s0 did better than its poor ad
    # the ad-side keys keep their own CTR
    assert on_s0["hist_advertiser_ctr"] == pytest.approx((10 + m * prior) / (200 + m))


def test_slot_factors_enter_every_ctr_and_serving_agrees(ten_days: Warehouse) -> None:
    wh = ten_days
    stats = wh.partition_path("feature_stats", D)
    with wh.duckdb() as con:
        summary = build_feature_stats(
            con, INVARIANT, D, [(k, wh.partition_path("ad_events", k)) for k in history_of(D)], stats
        )
    rows = [r for k in history_of(D) for r in synthetic_day(k)]
    factors = summary.position_factors
    assert factors[1] == 1.0 and factors[2] != 1.0
    per_ad = {}
    for ad in {r["ad_id"] for r in rows}:
        mine = [r for r in rows if r["ad_id"] == ad]
        per_ad[ad] = sum(r["clicked"] for r in mine) / sum(factors[int(r["position"])] for r in mine)
    assert summary.prior == pytest.approx(sum(per_ad.values()) / len(per_ad))
    assert "| 2 |" in summary.markdown()
    training = compute(wh, D, spec=INVARIANT)
    events = pq.read_table(wh.partition_path("ad_events", D)).drop_columns(["position", "clicked"])
    with wh.duckdb() as con:
        served = candidate_features(con, INVARIANT, events, stats)
    got = StatsLookup(stats, INVARIANT).features(events.to_pandas(), CONTRACT.reference_position)
    trained = by_id(training)
    ids = served.column("impression_id").to_pylist()
    for name in INVARIANT.ctr_features:
        assert served.column(name).to_pylist() == pytest.approx(list(got[name]))
        assert served.column(name).to_pylist() == pytest.approx([trained[i][name] for i in ids])
