"""The champion's recalibration: Platt scaling on a labelled day, where it is stored, and which one
the ad server applies to which version on which day."""

import numpy as np
import pytest

from clickloop.calibration import (
    DAILY_TAGS,
    MIN_CLICKS,
    PROMOTION_TAGS,
    Calibration,
    calibration_for,
    calibration_served,
    fit_platt,
    newest_from_tags,
    write_serving_calibration,
)
from clickloop.storage import Warehouse


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
