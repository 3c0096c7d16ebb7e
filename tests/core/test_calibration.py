"""The champion's recalibration: Platt scaling on a labelled day, where it is stored, and which one
the ad server applies to which version on which day."""

import numpy as np
import pyarrow as pa
import pytest

from clickloop.calibration import (
    DAILY_TAGS,
    MIN_CLICKS,
    MIN_SHIFT_ROWS,
    POOLED_DAYS,
    PROMOTION_TAGS,
    Calibration,
    calibration_for,
    calibration_served,
    carried_to_serving_statistics,
    fit_platt,
    fit_serving_day,
    newest_from_tags,
    served_scores,
    to_serving_statistics,
    with_user_activity_of,
    write_serving_calibration,
)
from clickloop.contract import LABEL, MODEL_VERSION
from clickloop.features import USER_ACTIVITY, ctr_feature
from clickloop.model import served_version
from clickloop.storage import Warehouse
from tests.core.conftest import Trained
from tests.core.synthetic import KEYS, SPEC, features_day


def miscalibrated(rows: int, slope: float, intercept: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose true click probability is sigmoid(slope · logit(score) + intercept)."""
    rng = np.random.default_rng(seed)
    scores = 1.0 / (1.0 + np.exp(-rng.normal(-3.0, 0.8, rows)))
    truth = Calibration("1", slope, intercept).apply(scores)
    return scores, (rng.random(rows) < truth).astype(np.float64)


def test_platt_scaling_recovers_a_known_miscalibration() -> None:
    scores, labels = miscalibrated(200_000, slope=0.8, intercept=-0.6)
    fitted = fit_platt(scores, labels, "3", "2026-10-05")
    assert fitted.slope == pytest.approx(0.8, abs=0.05)
    assert fitted.intercept == pytest.approx(-0.6, abs=0.15)
    # the raw scores predicted too many clicks; the calibrated ones predict as many as happened
    assert fitted.calibration_before is not None and fitted.calibration_before > 1.05
    assert fitted.calibration_after == pytest.approx(1.0, abs=0.01)
    assert (fitted.model_version, fitted.fitted_on, fitted.rows) == ("3", "2026-10-05", 200_000)
    # monotone: the order of the scores is kept
    assert np.all(np.diff(fitted.apply(np.sort(scores))) >= 0)


def test_a_day_with_too_few_clicks_keeps_the_raw_scores() -> None:
    scores, labels = miscalibrated(2_000, slope=1.0, intercept=-1.0)
    labels[np.flatnonzero(labels)[MIN_CLICKS - 1 :]] = 0.0
    fitted = fit_platt(scores, labels, "1", "2026-10-05")
    assert fitted.is_identity and fitted.clicks == MIN_CLICKS - 1
    np.testing.assert_array_equal(fitted.apply(scores), scores)
    with pytest.raises(ValueError, match="differ in length"):
        fit_platt(scores, labels[:-1], "1", "2026-10-05")


def test_the_served_calibration_is_the_versions_newest_on_or_before_the_day(tmp_path) -> None:
    warehouse = Warehouse(tmp_path)
    at_promotion = Calibration("2", 0.9, -0.2, "2026-10-03", 5000, 150)
    tags = at_promotion.to_tags(PROMOTION_TAGS)
    assert Calibration.from_tags("2", tags, PROMOTION_TAGS) == at_promotion
    assert Calibration.from_tags("2", tags, DAILY_TAGS) is None
    write_serving_calibration(warehouse, "2026-10-06", Calibration("1", 1.1, 0.1, "2026-10-04"))
    write_serving_calibration(warehouse, "2026-10-08", Calibration("2", 0.95, -0.1, "2026-10-06"))

    # v1 on the 7th: its daily one of the 6th; v1 before any daily one: its tags, here none
    assert calibration_for(warehouse, "2026-10-07", "1") == Calibration("1", 1.1, 0.1, "2026-10-04")
    assert calibration_served(warehouse, "2026-10-05", "1", {}).is_identity
    # v2 before its first daily calibration serves the one fitted at its promotion, after it its own
    assert calibration_served(warehouse, "2026-10-07", "2", tags) == at_promotion
    assert calibration_served(warehouse, "2026-10-09", "2", tags).fitted_on == "2026-10-06"
    # a service serving "now" reads the newest daily tags first
    daily = Calibration("2", 0.97, -0.05, "2026-10-07")
    assert newest_from_tags("2", {**tags, **daily.to_tags(DAILY_TAGS)}) == daily
    assert newest_from_tags("2", tags) == at_promotion
    assert newest_from_tags("2", {}).is_identity


def test_a_version_that_did_not_serve_the_day_is_fitted_on_the_days_before_it_pooled(
    trained: Trained,
) -> None:
    booster = trained.booster("1")
    days = [KEYS[9], KEYS[8], KEYS[7], KEYS[6]][:POOLED_DAYS]  # newest first: D-2, D-3, D-4
    tables = {day: features_day(day, n=3000, seed=5) for day in days}  # the random policy's traffic
    asked: list[str] = []

    def features_of(day: str) -> pa.Table:
        asked.append(day)
        return tables[day]

    # its first served days: the days from its validation day (KEYS[8]) on, pooled; never KEYS[7]
    pooled = fit_serving_day(booster, SPEC, "1", days, features_of, first_unseen_day=KEYS[8])
    assert asked == [KEYS[9], KEYS[8]]
    assert (pooled.rows, pooled.fitted_on) == (6000, f"{KEYS[8]}, {KEYS[9]}")
    both = [tables[KEYS[9]], tables[KEYS[8]]]
    scores = np.concatenate([served_scores(booster, t, SPEC) for t in both])
    labels = np.concatenate([t.column(LABEL).to_numpy().astype(np.float64) for t in both])
    expected = fit_platt(scores, labels, "1", pooled.fitted_on)
    assert (pooled.slope, pooled.intercept) == pytest.approx((expected.slope, expected.intercept))
    # without its validation day the newest day alone, as before
    alone = fit_serving_day(booster, SPEC, "1", days, features_of, first_unseen_day=None)
    assert (alone.rows, alone.fitted_on) == (3000, KEYS[9])
    # a day between them not built (no events or statistics): the days fitted on are each named
    gap = fit_serving_day(booster, SPEC, "1", [KEYS[9], KEYS[7]], features_of, first_unseen_day=KEYS[7])
    assert (gap.rows, gap.fitted_on) == (6000, f"{KEYS[7]}, {KEYS[9]}")

    # once it served the newest day: its own impressions of that day alone
    served = tables[KEYS[9]]
    own = np.arange(served.num_rows) < 2000
    versions = pa.array(np.where(own, served_version("1"), "random-v0"))
    tables[KEYS[9]] = served.set_column(served.column_names.index(MODEL_VERSION), MODEL_VERSION, versions)
    asked.clear()
    fitted = fit_serving_day(booster, SPEC, "1", days, features_of, first_unseen_day=KEYS[6])
    assert asked == [KEYS[9]] and (fitted.rows, fitted.fitted_on) == (2000, KEYS[9])


def test_the_calibration_is_carried_to_the_statistics_of_the_serving_day() -> None:
    """The intercept moves until the same impressions, scored with the serving day's statistics,
    get the calibrated total they got with the statistics the map was fitted with."""
    fitted = Calibration("1", slope=0.9, intercept=0.2, fitted_on="2026-10-10", rows=4000, clicks=300)
    scores, _ = miscalibrated(4000, 1.0, 0.0, seed=3)
    logits = np.log(scores / (1 - scores))
    # every score 0.3 higher in the logit: the intercept falls by slope · 0.3, exactly
    moved = 1.0 / (1.0 + np.exp(-(logits + 0.3)))
    carried = to_serving_statistics(fitted, scores, moved)
    assert carried.statistics_shift == pytest.approx(-0.9 * 0.3, abs=1e-9)
    assert carried.intercept == pytest.approx(0.2 - 0.27, abs=1e-9) and carried.slope == fitted.slope
    np.testing.assert_allclose(carried.apply(moved), fitted.apply(scores), rtol=1e-9)
    assert (carried.fitted_on, carried.rows, carried.clicks) == (fitted.fitted_on, 4000, 300)
    # scores that move unevenly: the total is kept, not each score
    uneven = 1.0 / (1.0 + np.exp(-(logits + np.linspace(-0.5, 1.0, len(logits)))))
    carried = to_serving_statistics(fitted, scores, uneven)
    assert carried.apply(uneven).sum() == pytest.approx(fitted.apply(scores).sum(), rel=1e-9)
    # unchanged statistics move nothing; the identity (no fit) is not carried
    assert to_serving_statistics(fitted, scores, scores).statistics_shift == pytest.approx(0.0, abs=1e-12)
    identity = Calibration.identity("1")
    assert to_serving_statistics(identity, scores, moved) == identity
    with pytest.raises(ValueError, match="different rows"):
        to_serving_statistics(fitted, scores, moved[:-1])


def test_the_carry_is_measured_on_the_versions_own_impressions_with_the_users_activity_unchanged(
    trained: Trained,
) -> None:
    booster = trained.booster("1")
    fitted = Calibration("1", slope=0.8, intercept=-0.1, fitted_on=KEYS[8])
    before = features_day(KEYS[9], n=3000, seed=11)
    column = before.column_names.index
    # the serving day's statistics: every ad's CTR a third higher, and each user's activity that
    # of another day (which the carry must not take: it would count the impression itself)
    after = before.set_column(
        column(ctr_feature(SPEC.entities[0])),
        ctr_feature(SPEC.entities[0]),
        pa.array(before.column(ctr_feature(SPEC.entities[0])).to_numpy() * 4 / 3),
    ).set_column(column(USER_ACTIVITY), USER_ACTIVITY, pa.array(np.full(3000, 7), pa.int64()))
    served_with = with_user_activity_of(after, before)
    assert served_with.column(USER_ACTIVITY).equals(before.column(USER_ACTIVITY))
    carried = carried_to_serving_statistics(booster, SPEC, fitted, before, after)
    expected = to_serving_statistics(
        fitted, served_scores(booster, before, SPEC), served_scores(booster, served_with, SPEC)
    )
    assert (
        carried.statistics_shift == pytest.approx(expected.statistics_shift) and carried.statistics_shift < 0
    )
    # once the version served enough of D-1's impressions, those alone
    own = np.arange(3000) < MIN_SHIFT_ROWS + 200
    versions = pa.array(np.where(own, served_version("1"), "random-v0"))
    mine = [t.set_column(column(MODEL_VERSION), MODEL_VERSION, versions) for t in (before, after)]
    carried_own = carried_to_serving_statistics(booster, SPEC, fitted, *mine)
    mask = pa.array(own)
    expected_own = to_serving_statistics(
        fitted,
        served_scores(booster, before.filter(mask), SPEC),
        served_scores(booster, served_with.filter(mask), SPEC),
    )
    assert carried_own.statistics_shift == pytest.approx(expected_own.statistics_shift)
    assert carried_own.statistics_shift != pytest.approx(carried.statistics_shift)
    with pytest.raises(ValueError, match="different impressions"):
        carried_to_serving_statistics(booster, SPEC, fitted, before, after.slice(1))
