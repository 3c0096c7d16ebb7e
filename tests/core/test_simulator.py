"""Tests of the ad-server simulator core (no Dagster): determinism, traffic shape, ground truth,
policies, faults, scenarios and the ad server over a landing folder. Volumes are small (a few
thousand requests per day). The Dagster resource is tested in tests/assets/test_simulator_resource.py."""

import dataclasses
import gzip
import json
import re
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clickloop.contract import ContractError
from clickloop.contract_file import load_contract
from clickloop.simulator import (
    CANDIDATE_FIELDS,
    CLICK_FIELDS,
    IMPRESSION_FIELDS,
    SCENARIOS,
    AdServer,
    DayTraffic,
    FaultRates,
    RandomPolicy,
    SimulatorConfig,
    World,
    clicks_path,
    impressions_path,
    manifest_path,
    read_manifest,
    simulate_day,
    write_day,
)

DAY = date(2026, 10, 1)
SHIFT = date(2026, 10, 3)
ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
#: the rollout's optional fields: a propensity on every line, a shadow score only while one runs
ROLLOUT_FIELDS = ("propensity", "shadow_version", "shadow_ctr")
STRING_FIELDS = [
    f for f in IMPRESSION_FIELDS if f not in ("position", "bid_cpc", "predicted_ctr", *ROLLOUT_FIELDS)
]
NOISY = FaultRates(
    duplicate_impression=0.02,
    duplicate_click=0.05,
    orphan_click=0.03,
    click_before_impression=0.03,
    malformed_line=0.02,
    wrong_type=0.02,
    null_field=0.02,
)


@pytest.fixture(scope="module")
def world() -> World:
    return World(7)


@pytest.fixture(scope="module")
def traffic(world: World) -> DayTraffic:
    return simulate_day(world, DAY, requests_per_day=20_000)


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def impression_types_ok(rec: dict) -> bool:
    return (
        all(isinstance(rec[f], str) for f in STRING_FIELDS)
        and bool(ISO_MS.match(rec["ts"]))
        and isinstance(rec["position"], int)
        and not isinstance(rec["position"], bool)
        and rec["position"] in (1, 2)
        and is_number(rec["bid_cpc"])
        and rec["bid_cpc"] > 0
        and is_number(rec["predicted_ctr"])
        and 0 <= rec["predicted_ctr"] <= 1
        and is_number(rec["propensity"])
        and 0 < rec["propensity"] <= 1
    )


def classify_impressions(lines: list[str]) -> tuple[Counter, set[str]]:
    """Independent audit of an impressions file: counts per fault, and the valid impression ids."""
    counts, seen, valid_ids = Counter(), set(), set()
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            counts["malformed_line"] += 1
            continue
        if set(rec) != set(IMPRESSION_FIELDS):
            counts["wrong_fields"] += 1
        elif any(rec[f] is None for f in IMPRESSION_FIELDS if f not in ROLLOUT_FIELDS[1:]):
            counts["null_field"] += 1
        elif not impression_types_ok(rec):
            counts["wrong_type"] += 1
        elif line in seen:
            counts["duplicate_impression"] += 1
        else:
            seen.add(line)
            valid_ids.add(rec["impression_id"])
            counts["valid"] += 1
    return counts, valid_ids


def classify_clicks(lines: list[str], impression_ts: dict[str, str], valid_impressions: set[str]) -> Counter:
    """Independent audit of a clicks file against the true impressions (id -> ts)."""
    counts, seen_lines, seen_impressions = Counter(), set(), set()
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            counts["malformed_line"] += 1
            continue
        if set(rec) != set(CLICK_FIELDS):
            counts["wrong_fields"] += 1
        elif any(rec[f] is None for f in CLICK_FIELDS):
            counts["null_field"] += 1
        elif not all(isinstance(rec[f], str) for f in CLICK_FIELDS) or not ISO_MS.match(rec["ts"]):
            counts["wrong_type"] += 1
        elif line in seen_lines or rec["impression_id"] in seen_impressions:
            counts["duplicate_click"] += 1
        elif rec["impression_id"] not in impression_ts:
            counts["orphan_click"] += 1
        elif rec["ts"] <= impression_ts[rec["impression_id"]]:
            counts["click_before_impression"] += 1
        else:
            seen_lines.add(line)
            seen_impressions.add(rec["impression_id"])
            counts["valid"] += 1
            counts["on_faulty_impression"] += rec["impression_id"] not in valid_impressions
    return counts


def landed_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- determinism --------------------------------------------------------------------------------


def test_same_seed_and_day_give_identical_bytes_and_other_seed_differs(world: World, tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_day(simulate_day(world, DAY, requests_per_day=3_000), tmp_path / name, NOISY)
    first, second = landed_files(tmp_path / "a"), landed_files(tmp_path / "b")
    assert len(first) == 4 and first == second
    assert not any(name.endswith(".tmp") for name in first)

    write_day(simulate_day(World(8), DAY, requests_per_day=3_000), tmp_path / "c", NOISY)
    other = landed_files(tmp_path / "c")
    name = impressions_path("", DAY).as_posix()
    assert other[name] != first[name]


def test_clean_records_do_not_depend_on_fault_rates(world: World, tmp_path: Path) -> None:
    traffic = simulate_day(world, DAY, requests_per_day=2_000)
    write_day(traffic, tmp_path / "clean", FaultRates.clean())
    write_day(traffic, tmp_path / "noisy", NOISY)
    clean = read_lines(impressions_path(tmp_path / "clean", DAY))
    noisy = set(read_lines(impressions_path(tmp_path / "noisy", DAY)))
    manifest = json.loads(manifest_path(tmp_path / "noisy", DAY).read_text())
    untouched = sum(line in noisy for line in clean)
    assert untouched == manifest["files"][impressions_path("", DAY).as_posix()]["unaltered_records"]


# -- traffic shape ------------------------------------------------------------------------------


def test_two_impressions_per_request_with_positions_one_and_two(traffic: DayTraffic) -> None:
    imp = traffic.impressions
    assert len(imp) == 2 * traffic.n_requests
    per_request = imp.groupby("request_id", observed=True).agg(
        n=("position", "size"), positions=("position", lambda p: tuple(sorted(p))), ads=("ad_id", "nunique")
    )
    assert len(per_request) == traffic.n_requests
    assert (per_request["n"] == 2).all() and (per_request["ads"] == 2).all()
    assert set(per_request["positions"]) == {(1, 2)}
    assert imp["impression_id"].is_unique
    assert imp["ts"].is_monotonic_increasing
    assert (imp["ts"].dt.date == DAY).all()


def test_traffic_follows_the_daily_curve_and_world_skews(traffic: DayTraffic) -> None:
    first = traffic.impressions[traffic.impressions["position"] == 1]
    hours = first["ts"].dt.hour.value_counts()
    assert hours.loc[19] > 3 * hours.loc[3]
    assert set(first["device_type"].astype(str)) == {"mobile", "desktop", "tablet"}
    os_by_device = first.groupby("device_type", observed=True)["os"].agg(lambda s: set(s.astype(str)))
    assert os_by_device["desktop"] <= {"windows", "macos", "linux"}
    assert os_by_device["mobile"] <= {"ios", "android"}
    site_share = first["site_id"].value_counts(normalize=True)
    assert site_share.iloc[0] > 10 / 300  # Zipf: the top site gets far more than a uniform share
    assert first["country"].value_counts().index[0] == "US"


# -- clicks -------------------------------------------------------------------------------------


def test_clicks_land_in_the_folder_of_their_own_date(
    world: World, traffic: DayTraffic, tmp_path: Path
) -> None:
    manifest = write_day(traffic, tmp_path, FaultRates.clean())
    impression_ts = dict(zip(traffic.impressions["impression_id"], traffic.impressions["ts"], strict=True))
    per_folder = {}
    for landing in (DAY, DAY + timedelta(days=1)):
        records = [json.loads(line) for line in read_lines(clicks_path(tmp_path, landing, DAY))]
        per_folder[landing] = len(records)
        for rec in records:
            ts = pd.Timestamp(rec["ts"])
            assert ts.date() == landing
            assert ts > impression_ts[rec["impression_id"]]
    assert per_folder[DAY + timedelta(days=1)] > 0, "some clicks must cross midnight"
    assert per_folder == {date.fromisoformat(d): n for d, n in manifest["clicks_by_landing_date"].items()}
    assert sum(per_folder.values()) == traffic.clicked.sum() == manifest["clicks"]
    delays = (
        traffic.clicks["ts"].to_numpy() - traffic.impressions["ts"].to_numpy()[traffic.click_impression_row]
    )
    minutes = delays / np.timedelta64(1, "m")
    assert 0.5 < np.median(minutes) < 10
    assert 0.01 < (minutes > 60).mean() < 0.1 and minutes.max() < 20 * 60 + 1


# -- ground truth -------------------------------------------------------------------------------


def test_ground_truth_ctr_band_and_position_effect(traffic: DayTraffic) -> None:
    assert 0.02 < traffic.true_ctr.mean() < 0.04
    position = traffic.impressions["position"].to_numpy()
    observed = {p: traffic.clicked[position == p].mean() for p in (1, 2)}
    assert observed[2] < observed[1]
    ratio = traffic.true_ctr[position == 2].mean() / traffic.true_ctr[position == 1].mean()
    assert ratio == pytest.approx(0.6, abs=0.05)
    assert 0.025 < traffic.clicked.mean() < 0.035


def test_ground_truth_from_logged_rows_strings_and_parquet(
    world: World, traffic: DayTraffic, tmp_path: Path
) -> None:
    write_day(traffic, tmp_path, FaultRates.clean())
    parsed = pd.DataFrame([json.loads(line) for line in read_lines(impressions_path(tmp_path, DAY))])
    assert isinstance(parsed["ts"].iloc[0], str)
    np.testing.assert_allclose(world.ground_truth_ctr(parsed), traffic.true_ctr, rtol=1e-12)

    parquet = tmp_path / "impressions.parquet"
    parsed.assign(ts=pd.to_datetime(parsed["ts"], utc=True)).to_parquet(parquet)
    from_parquet = pd.read_parquet(parquet)
    assert isinstance(from_parquet["ts"].dtype, pd.DatetimeTZDtype)
    np.testing.assert_allclose(world.ground_truth_ctr(from_parquet), traffic.true_ctr, rtol=1e-12)

    with pytest.raises(ValueError, match="ad_id"):
        world.ground_truth_ctr(parsed.head(3).assign(ad_id="a999999x"))


def test_candidate_ctr_matches_ground_truth_and_broadcasts(world: World, traffic: DayTraffic) -> None:
    imp = traffic.impressions
    top = imp[imp["position"] == 1]
    np.testing.assert_allclose(world.candidate_ctr(top, top["ad_id"], position=1), traffic.true_ctr[::2])
    second = imp[imp["position"] == 2]
    np.testing.assert_allclose(
        world.candidate_ctr(second, second["ad_id"], position=2), traffic.true_ctr[1::2]
    )

    requests = top.head(50)
    ads = world.ad_table()["ad_id"].to_numpy()[:7]
    grid = world.candidate_ctr(requests, np.tile(ads, (50, 1)), position=1)
    assert grid.shape == (50, 7)
    np.testing.assert_allclose(grid[:, 3], world.candidate_ctr(requests, np.repeat(ads[3], 50)))


def test_the_affinity_signal_is_learnable_from_logged_columns(traffic: DayTraffic) -> None:
    imp = traffic.impressions.assign(true=traffic.true_ctr)
    by_pair = imp.groupby(["user_segment", "ad_category"], observed=True)["true"].mean()
    by_device = imp.groupby("device_type", observed=True)["true"].mean()
    assert by_pair.max() / by_pair.min() > 5
    assert by_device.max() / by_device.min() < 1.5


# -- ranking policies -----------------------------------------------------------------------------


class SportsLover:
    """A test policy: sports ads are predicted far more clickable than anything else."""

    version = "sports-v1"

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.columns: set[str] = set()

    def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
        self.calls.append(len(candidates))
        self.columns = set(candidates.columns)
        return np.where(candidates["ad_category"] == "sports", 0.2, 0.01)


def test_policy_predictions_rank_the_candidates_and_are_logged(world: World, traffic: DayTraffic) -> None:
    policy = SportsLover()
    served = simulate_day(world, DAY, requests_per_day=4_000, policy=policy, chunk_requests=1_500)
    assert policy.calls == [1_500 * 32, 1_500 * 32, 1_000 * 32]
    assert set(CANDIDATE_FIELDS) <= policy.columns

    def sports_share_at_top(frame: pd.DataFrame) -> float:
        top = frame[frame["position"] == 1]
        return (top["ad_category"] == "sports").mean()

    assert sports_share_at_top(served.impressions) > 0.8
    assert sports_share_at_top(traffic.impressions) < 0.15
    imp = served.impressions
    assert set(imp["model_version"]) == {"sports-v1"}
    expected = np.where(imp["ad_category"] == "sports", 0.2, 0.01)
    np.testing.assert_array_equal(imp["predicted_ctr"].to_numpy(), expected)
    assert set(traffic.impressions["model_version"]) == {"random-v0"}
    assert traffic.impressions["predicted_ctr"].nunique() == 1


def test_server_ranks_by_expected_revenue(world: World) -> None:
    class Flat:
        version = "flat-v1"

        def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
            return np.full(len(candidates), 0.05)

    imp = simulate_day(world, DAY, requests_per_day=2_000, policy=Flat()).impressions
    bids = imp["bid_cpc"].to_numpy().reshape(-1, 2)
    assert (bids[:, 0] >= bids[:, 1]).all()
    random_bids = (
        simulate_day(world, DAY, requests_per_day=2_000).impressions["bid_cpc"].to_numpy().reshape(-1, 2)
    )
    assert (random_bids[:, 0] < random_bids[:, 1]).mean() > 0.4


def test_an_oracle_policy_earns_more_clicks_than_random(world: World, traffic: DayTraffic) -> None:
    class Oracle:
        version = "oracle"

        def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
            return world.candidate_ctr(candidates, candidates["ad_id"], position=1)

    served = simulate_day(world, DAY, requests_per_day=5_000, policy=Oracle())
    baseline = simulate_day(world, DAY, requests_per_day=5_000)
    assert (served.true_ctr * served.true_bid_cpc).sum() > 2 * (
        baseline.true_ctr * baseline.true_bid_cpc
    ).sum()
    assert served.true_ctr.mean() > baseline.true_ctr.mean()
    np.testing.assert_allclose(served.impressions["predicted_ctr"][::2], served.true_ctr[::2])


def test_invalid_policy_output_is_rejected(world: World) -> None:
    class Short:
        version = "short"

        def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
            return np.full(len(candidates) - 1, 0.1)

    class Negative:
        version = "negative"

        def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
            return np.full(len(candidates), -0.1)

    with pytest.raises(ValueError, match="predictions for"):
        simulate_day(world, DAY, requests_per_day=100, policy=Short())
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        simulate_day(world, DAY, requests_per_day=100, policy=Negative())


# -- log format and faults ----------------------------------------------------------------------


def test_clean_logs_parse_with_the_right_types(traffic: DayTraffic, tmp_path: Path) -> None:
    manifest = write_day(traffic, tmp_path, FaultRates.clean())
    lines = read_lines(impressions_path(tmp_path, DAY))
    records = [json.loads(line) for line in lines]
    assert len(records) == manifest["impressions"] == len(traffic.impressions)
    assert all(list(rec) == list(IMPRESSION_FIELDS) and impression_types_ok(rec) for rec in records)
    assert len({rec["impression_id"] for rec in records}) == len(records)
    for landing in (DAY, DAY + timedelta(days=1)):
        for line in read_lines(clicks_path(tmp_path, landing, DAY)):
            rec = json.loads(line)
            assert list(rec) == list(CLICK_FIELDS)
            assert all(isinstance(rec[f], str) for f in CLICK_FIELDS) and ISO_MS.match(rec["ts"])
    assert all(count == 0 for kind in manifest["faults"].values() for count in kind.values())


def test_injected_faults_match_the_manifest_exactly(traffic: DayTraffic, tmp_path: Path) -> None:
    manifest = write_day(traffic, tmp_path, NOISY)
    imp_file = impressions_path(tmp_path, DAY)
    imp_entry = manifest["files"][imp_file.relative_to(tmp_path).as_posix()]
    imp_lines = read_lines(imp_file)
    counts, valid_ids = classify_impressions(imp_lines)
    assert counts["wrong_fields"] == 0
    assert len(imp_lines) == imp_entry["lines"]
    assert counts["valid"] == imp_entry["unaltered_records"]
    for fault, expected in imp_entry["faults"].items():
        assert expected > 0 and counts[fault] == expected, fault

    iso_ts = traffic.impressions["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
    truth_ts = dict(zip(traffic.impressions["impression_id"], iso_ts, strict=True))
    for landing in (DAY, DAY + timedelta(days=1)):
        path = clicks_path(tmp_path, landing, DAY)
        entry = manifest["files"][path.relative_to(tmp_path).as_posix()]
        lines = read_lines(path)
        counts = classify_clicks(lines, truth_ts, valid_ids)
        assert counts["wrong_fields"] == 0
        assert len(lines) == entry["lines"]
        assert counts["valid"] == entry["unaltered_records"]
        assert counts["on_faulty_impression"] == entry["clicks_on_faulty_impressions"]
        for fault, expected in entry["faults"].items():
            assert counts[fault] == expected, (landing, fault)
        assert (
            entry["duplicate_click_same_line"] + entry["duplicate_click_new_id"]
            == entry["faults"]["duplicate_click"]
        )
    same_day = manifest["files"][clicks_path("", DAY, DAY).as_posix()]["faults"]
    assert all(same_day[f] > 0 for f in ("duplicate_click", "orphan_click", "click_before_impression"))


# -- scenarios ----------------------------------------------------------------------------------


def scenario_days(name: str, n: int = 5_000) -> tuple[World, DayTraffic, DayTraffic]:
    """A world under scenario ``name`` from SHIFT on, with the day before and the first day of it."""
    world = World(7, scenario=name, scenario_start=SHIFT)
    before = simulate_day(world, SHIFT - timedelta(days=1), requests_per_day=n)
    after = simulate_day(world, SHIFT, requests_per_day=n)
    return world, before, after


def test_device_shift_brings_smart_tv_traffic() -> None:
    _, before, after = scenario_days("device_shift")
    assert (before.impressions["device_type"] == "smart_tv").sum() == 0
    tv = after.impressions[after.impressions["device_type"] == "smart_tv"]
    assert len(tv) / len(after.impressions) == pytest.approx(0.4, abs=0.03)
    assert set(tv["os"].astype(str)) == {"tizen", "webos"}
    assert not before.scenario_active and after.scenario_active


def test_ctr_drop_lowers_true_and_observed_ctr(world: World) -> None:
    _, before, after = scenario_days("ctr_drop")
    stable_same_day = simulate_day(world, SHIFT, requests_per_day=5_000)
    pd.testing.assert_frame_equal(after.impressions, stable_same_day.impressions)
    assert after.true_ctr.mean() < 0.6 * stable_same_day.true_ctr.mean()
    assert after.clicked.sum() < 0.7 * stable_same_day.clicked.sum()
    assert after.true_ctr.mean() < 0.6 * before.true_ctr.mean()
    assert World(7, scenario="ctr_drop", scenario_start=SHIFT).ground_truth_ctr(
        after.impressions
    ).mean() == pytest.approx(after.true_ctr.mean())


def test_new_campaigns_bring_unseen_ads() -> None:
    world, before, after = scenario_days("new_campaigns")
    catalog = world.ad_table()
    base = catalog[catalog["wave"] == "base"]
    wave = catalog[catalog["wave"] == "new_campaigns"]
    assert not set(wave["ad_id"]) & set(base["ad_id"])
    assert not set(wave["campaign_id"]) & set(base["campaign_id"])
    assert not set(wave["advertiser_id"]) & set(base["advertiser_id"])
    assert before.impressions["ad_id"].isin(base["ad_id"]).all()
    unseen = ~after.impressions["ad_id"].isin(base["ad_id"])
    assert unseen.mean() == pytest.approx(0.5, abs=0.05)
    assert after.impressions.loc[unseen, "ad_id"].isin(wave["ad_id"]).all()


def test_price_unit_bug_multiplies_logged_bids_only(world: World) -> None:
    _, before, after = scenario_days("price_unit_bug")
    stable = simulate_day(world, SHIFT, requests_per_day=5_000)
    assert after.impressions["bid_cpc"].median() == pytest.approx(
        100 * stable.impressions["bid_cpc"].median()
    )
    assert after.impressions["bid_cpc"].median() > 50 * before.impressions["bid_cpc"].median()
    np.testing.assert_allclose(after.impressions["bid_cpc"], 100 * stable.impressions["bid_cpc"])
    pd.testing.assert_frame_equal(
        after.impressions.drop(columns="bid_cpc"), stable.impressions.drop(columns="bid_cpc")
    )
    np.testing.assert_array_equal(after.true_ctr, stable.true_ctr)
    np.testing.assert_array_equal(after.true_bid_cpc, stable.true_bid_cpc)


def test_slow_drift_moves_the_ground_truth_further_every_day(world: World) -> None:
    """slow_drift: the same requests (random serving logs the stable world's rows) get true CTRs
    that depart from the stable world's a little on the first day and more with every day after;
    no day is a step, and the average CTR stays in its band."""
    drifting = World(7, scenario="slow_drift", scenario_start=SHIFT)
    gaps = []
    for age in (0, 1, 7, 14, 27):
        day = SHIFT + timedelta(days=age)
        stable, drifted = (simulate_day(w, day, requests_per_day=2_000) for w in (world, drifting))
        pd.testing.assert_frame_equal(drifted.impressions, stable.impressions)
        gaps.append(float(np.mean(np.abs(np.log(drifted.true_ctr / stable.true_ctr)))))
        assert 0.02 < drifted.true_ctr.mean() < 0.05
    assert gaps == sorted(gaps) and gaps[0] < 0.05 < 0.5 < gaps[-1], gaps
    # continuous: one day further changes the log-CTR of the same rows by a few percent only
    assert gaps[1] - gaps[0] < 0.05
    tomorrow = simulate_day(drifting, SHIFT + timedelta(days=14), requests_per_day=2_000).impressions
    shifted = tomorrow.assign(ts=tomorrow["ts"] + pd.Timedelta(days=1))
    day_step = np.log(drifting.ground_truth_ctr(shifted) / drifting.ground_truth_ctr(tomorrow))
    assert 0.005 < float(np.mean(np.abs(day_step))) < 0.06
    np.testing.assert_array_equal(
        drifting.ground_truth_ctr(tomorrow),
        World(7, scenario="slow_drift", scenario_start=SHIFT).ground_truth_ctr(tomorrow),
    )


def test_days_before_the_scenario_start_are_untouched(world: World) -> None:
    stable = simulate_day(world, SHIFT - timedelta(days=1), requests_per_day=1_000)
    for name in SCENARIOS:
        shifted = simulate_day(
            World(7, scenario=name, scenario_start=SHIFT), SHIFT - timedelta(days=1), requests_per_day=1_000
        )
        pd.testing.assert_frame_equal(shifted.impressions, stable.impressions)
        np.testing.assert_array_equal(shifted.true_ctr, stable.true_ctr)


def test_unknown_scenario_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown scenario 'surge'"):
        World(7, scenario="surge")
    with pytest.raises(ValueError, match="unknown scenario 'surge'"):
        SimulatorConfig(scenario="surge")


# -- the log contract ---------------------------------------------------------------------------


def test_log_fields_come_from_the_contract_and_the_frames_follow_it(traffic: DayTraffic) -> None:
    contract = load_contract()
    assert IMPRESSION_FIELDS == contract.impressions.sources
    assert CLICK_FIELDS == contract.log("clicks").sources
    assert tuple(traffic.impressions.columns) == IMPRESSION_FIELDS
    assert tuple(traffic.clicks.columns) == CLICK_FIELDS


def test_a_frame_that_breaks_the_contract_is_not_written(traffic: DayTraffic, tmp_path: Path) -> None:
    swapped = [*IMPRESSION_FIELDS[1:], IMPRESSION_FIELDS[0]]
    broken = dataclasses.replace(traffic, impressions=traffic.impressions[swapped])
    with pytest.raises(ContractError, match="log contract"):
        write_day(broken, tmp_path, FaultRates.clean())
    assert not any(tmp_path.iterdir())


# -- the ad server ------------------------------------------------------------------------------


def small_server(tmp_path: Path, **overrides: object) -> AdServer:
    config = {"requests_per_day": 1_000, "start_date": "2026-10-01", **overrides}
    return AdServer(tmp_path, SimulatorConfig(**config))  # type: ignore[arg-type]


def test_config_defaults_and_validation() -> None:
    config = SimulatorConfig()
    assert (config.seed, config.requests_per_day, config.candidates_per_request) == (7, 50_000, 32)
    assert (config.n_ads, config.n_users, config.n_sites) == (3_000, 200_000, 300)
    assert (config.scenario, config.scenario_start, config.start_date) == ("stable", None, "2026-10-01")
    assert config.faults == FaultRates()
    assert SimulatorConfig(scenario_start=date(2026, 10, 5)).scenario_start == "2026-10-05"
    with pytest.raises(ValueError, match="start_date"):
        SimulatorConfig(start_date="October")
    with pytest.raises(ValueError, match="scenario_start"):
        SimulatorConfig(scenario="ctr_drop", scenario_start="2026-13-01")
    with pytest.raises(ValueError, match="null_field"):
        SimulatorConfig(faults=FaultRates(null_field=1.5))


def test_server_partition_files_simulate_what_the_partition_needs(tmp_path: Path) -> None:
    server = small_server(tmp_path)
    first = server.partition_files("clicks", "2026-10-01")
    assert [p.name for p in first] == ["clicks-from-2026-10-01.jsonl.gz"]
    assert not manifest_path(tmp_path, date(2026, 9, 30)).exists()

    files = server.partition_files("clicks", date(2026, 10, 3))
    assert [p.name for p in files] == ["clicks-from-2026-10-02.jsonl.gz", "clicks-from-2026-10-03.jsonl.gz"]
    assert all(p.parent.name == "date=2026-10-03" for p in files)
    assert manifest_path(tmp_path, date(2026, 10, 2)).exists()
    assert server.partition_files("impressions", "2026-10-02") == [
        impressions_path(tmp_path, date(2026, 10, 2))
    ]
    assert server.ensure_day(date(2026, 10, 2)) is False
    manifest = server.manifest("2026-10-02")
    assert manifest["requests"] == 1_000 and manifest["policy_version"] == "random-v0"
    assert manifest["settings"] == server.settings_for("2026-10-02") == server.settings()
    assert server.oracle_revenue("2026-10-02") == manifest["oracle_expected_revenue"]
    assert server.oracle_revenue("2026-10-09") is None
    assert isinstance(server.policy(date(2026, 10, 1)), RandomPolicy)


def test_server_refuses_days_before_start_and_changed_settings(tmp_path: Path) -> None:
    server = small_server(tmp_path)
    with pytest.raises(ValueError, match="2026-09-30"):
        server.partition_files("impressions", "2026-09-30")
    with pytest.raises(ValueError, match="kind"):
        server.partition_files("views", "2026-10-01")  # type: ignore[arg-type]
    assert server.ensure_day("2026-10-01") is True
    with pytest.raises(ValueError, match="different settings"):
        small_server(tmp_path, seed=8).ensure_day("2026-10-01")


def test_server_serves_the_given_policy(tmp_path: Path) -> None:
    asked: list[date] = []

    def champion_for(day: date) -> SportsLover | None:
        asked.append(day)
        return SportsLover() if day >= date(2026, 10, 2) else None

    server = AdServer(tmp_path, SimulatorConfig(requests_per_day=500), champion_for)
    assert server.ensure_day("2026-10-01") and server.ensure_day("2026-10-02")
    assert asked == [date(2026, 10, 1), date(2026, 10, 2)]
    assert server.manifest("2026-10-01")["policy_version"] == "random-v0"
    assert server.manifest("2026-10-02")["policy_version"] == "sports-v1"


def test_a_stable_history_continues_under_a_later_scenario(tmp_path: Path) -> None:
    """The settings recorded for a day are those that determine its files: before a scenario's
    start they are the stable world's, so a stable warm-up history can be shared."""
    stable = small_server(tmp_path / "shared")
    assert stable.ensure_day("2026-10-01") and stable.ensure_day("2026-10-02")

    shifted = small_server(tmp_path / "shared", scenario="device_shift", scenario_start="2026-10-03")
    assert shifted.settings_for("2026-10-02") == stable.settings_for("2026-10-02")
    assert shifted.ensure_day("2026-10-02") is False  # the stable day is the shifted world's day
    files = shifted.partition_files("clicks", "2026-10-03")
    assert [p.name for p in files] == ["clicks-from-2026-10-02.jsonl.gz", "clicks-from-2026-10-03.jsonl.gz"]
    before, after = (read_manifest(tmp_path / "shared", date(2026, 10, d)) for d in (2, 3))
    assert (before["settings"]["scenario"], before["settings"]["scenario_start"]) == ("stable", None)
    assert (after["settings"]["scenario"], after["settings"]["scenario_start"]) == (
        "device_shift",
        "2026-10-03",
    )
    assert after["scenario_active"] and after["settings"] == shifted.settings()
    assert {k: v for k, v in after["settings"].items() if not k.startswith("scenario")} == {
        k: v for k, v in before["settings"].items() if not k.startswith("scenario")
    }
    lines = read_lines(impressions_path(tmp_path / "shared", date(2026, 10, 3)))
    assert sum('"device_type":"smart_tv"' in line for line in lines) / len(lines) > 0.3

    # the shared days are exactly what the shifted server writes into a fresh folder
    fresh = small_server(tmp_path / "fresh", scenario="device_shift", scenario_start="2026-10-03")
    assert fresh.ensure_day("2026-10-01") and fresh.ensure_day("2026-10-02")
    logs = {name: data for name, data in landed_files(tmp_path / "fresh").items() if "_simulator" not in name}
    shared = landed_files(tmp_path / "shared")
    assert len(logs) == 6 and all(shared[name] == data for name, data in logs.items())
    assert fresh.manifest("2026-10-02")["settings"] == before["settings"]

    # a day simulated under stable is refused once the scenario is active on it
    with pytest.raises(ValueError, match="different settings"):
        small_server(tmp_path / "shared", scenario="device_shift", scenario_start="2026-10-02").ensure_day(
            "2026-10-02"
        )
