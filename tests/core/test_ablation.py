"""The permutation ablation finds the features the synthetic world's clicks depend on and flags the
ones it does not (real XGBoost on synthetic days whose true click probability is known)."""

import numpy as np
import pytest

from clickloop.ablation import ablation_markdown, feature_ablation
from clickloop.contract import LABEL
from clickloop.model import model_frame_for
from clickloop.training import TrainingParams, feature_importance, fit_ctr_model
from tests.core.synthetic import KEYS, SPEC, features_day


@pytest.fixture(scope="module")
def ablation():
    train, valid, test = (
        features_day(KEYS[0], 40000),
        features_day(KEYS[1], 10000),
        features_day(KEYS[2], 20000),
    )
    # the loop's default (regularised) parameters
    params = TrainingParams(n_trials=0, num_boost_round=80, learning_rate=0.2, nthread=2)
    booster = fit_ctr_model(SPEC, train, valid, params, rate=1.0).final.booster
    frame = model_frame_for(booster, test)
    return feature_ablation(booster, frame, test[LABEL].to_numpy(), feature_importance(booster), repeats=2)


def test_signal_features_earn_their_place_and_noise_is_flagged(ablation) -> None:
    gain = dict(zip(ablation.table["feature"], ablation.table["ne_gain"], strict=True))
    # the synthetic clicks depend on segment x category, device, slot and the ad's quality
    for feature in ("user_segment", "ad_category", "device_type", "hist_ad_ctr", "position"):
        assert gain[feature] > 0.02, (feature, gain[feature])
        assert feature not in ablation.flagged
    # ... and not on the os, the country, or history columns the synthetic days hold constant
    for feature in ("os", "country", "hour", "user_impressions_24h", "hist_site_ctr"):
        assert feature in ablation.flagged, (feature, gain[feature])
    assert set(ablation.table["feature"]) == set(SPEC.columns)
    assert ablation.rows == 20000 and 0.5 < ablation.base_ne < 1.0


def test_the_table_says_what_each_feature_costs(ablation) -> None:
    text = ablation_markdown(ablation)
    assert "does not improve NE" in text and "`user_segment`" in text
    constant = ablation.table.set_index("feature").loc["hist_site_ctr"]
    assert constant["splits"] == 0 and constant["ne_gain"] == 0.0  # never split on: shuffling changes nothing


def test_the_ablation_needs_labelled_rows() -> None:
    with pytest.raises(ValueError, match="one label per row"):
        feature_ablation(None, features_day(KEYS[0], 10).to_pandas(), np.zeros(3))  # type: ignore[arg-type]
