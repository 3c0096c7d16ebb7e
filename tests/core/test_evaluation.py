"""The evaluation: metrics and slices by hand, then every contender (the model, the baselines, the
champion, the ground truth) on the same test rows of a real split, with real XGBoost models."""

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xgboost as xgb

from clickloop.evaluation import (
    BASE_RATE,
    CHAMPION,
    GROUND_TRUTH,
    HISTORICAL_CTR,
    MODEL,
    SEEN_AD,
    Evaluation,
    EvaluationParams,
    comparison_markdown,
    compute_metrics,
    contender_labels,
    evaluate_model,
    evaluation_path,
    historical_ctr_feature,
    read_evaluation,
    reliability_png,
    score_champion,
    slice_metrics,
    slices_markdown,
    training_ads,
)
from clickloop.metrics import reliability_curve
from clickloop.split import TEST_SET, TRAINING_SET, TimeSplit, set_path
from clickloop.storage import Warehouse
from tests.core.conftest import DAYS, Trained
from tests.core.synthetic import CONTRACT, SPEC, truth_of


def test_metrics_and_slices_by_hand() -> None:
    labels = np.array([1, 0, 0, 0, 1, 1, 0, 0])
    predictions = {"a": np.array([0.6, 0.2, 0.2, 0.2, 0.3, 0.7, 0.4, 0.4]), "flat": np.full(8, 3 / 8)}
    metrics = compute_metrics(labels, predictions["flat"], top_fraction=0.25)
    assert metrics.rows == 8 and metrics.clicks == 3
    assert metrics.normalized_entropy == pytest.approx(1.0)
    assert metrics.calibration == pytest.approx(1.0)
    assert metrics.observed_ctr == metrics.mean_predicted == pytest.approx(3 / 8)
    slices = pd.DataFrame({"device_type": ["m", "m", "m", "m", "d", "d", "d", "d"], "country": [None] * 8})
    table = slice_metrics(slices, labels, predictions, ["device_type", "country"])
    by_value = table.set_index(["slice", "value"])
    assert by_value.loc[("device_type", "m"), "rows"] == 4
    assert by_value.loc[("device_type", "m"), "ctr"] == pytest.approx(0.25)
    assert by_value.loc[("device_type", "m"), "a_auc"] == pytest.approx(1.0)
    # d: positives 0.3 and 0.7 against negatives 0.4 and 0.4 -> 2 of 4 pairs ordered right
    assert by_value.loc[("device_type", "d"), "a_auc"] == pytest.approx(0.5)
    assert by_value.loc[("device_type", "m"), "a_calibration"] == pytest.approx(1.2 / 1)
    assert by_value.loc[("country", "(null)"), "rows"] == 8
    # each slice's NE uses its own CTR: the flat 3/8 is miscalibrated on both device slices
    assert by_value.loc[("device_type", "m"), "flat_ne"] > 1.0
    empty = compute_metrics([], [])
    assert empty.rows == 0 and math.isnan(empty.auc) and math.isnan(empty.log_loss)


def test_reliability_plot_is_a_png() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.3, 20_000)
    y = (rng.random(p.size) < p).astype(float)
    curves = {"model": reliability_curve(y, p), "constant": reliability_curve([0, 1, 0, 0], [0.25] * 4)}
    assert reliability_png(curves, "test").startswith(b"\x89PNG")
    assert reliability_png({"empty": reliability_curve([], [])}, "nothing").startswith(b"\x89PNG")


def test_the_model_against_the_baselines_and_the_ground_truth(trained: Trained) -> None:
    wh, split, model = trained.warehouse, trained.split, trained.models["1"]
    outcome = evaluate_model(wh, SPEC, CONTRACT.evaluation_slices, model, split, None, truth_of)
    evaluation = outcome.evaluation
    assert read_evaluation(wh) == evaluation and evaluation_path(wh).exists()
    assert evaluation.test_day == DAYS[-1] and evaluation.champion_version is None
    assert evaluation.split == split.split.to_dict() and evaluation.train_base_rate == split.train_base_rate
    assert set(evaluation.metrics) == {MODEL, BASE_RATE, HISTORICAL_CTR, GROUND_TRUTH}
    metrics = evaluation.metrics
    assert metrics[MODEL].rows == 2500 == pq.read_table(set_path(wh, TEST_SET)).num_rows
    # the ground truth is the best any model can do on these rows; the model beats both baselines
    assert metrics[GROUND_TRUTH].normalized_entropy < metrics[MODEL].normalized_entropy
    assert metrics[MODEL].normalized_entropy < metrics[HISTORICAL_CTR].normalized_entropy
    assert metrics[MODEL].normalized_entropy < metrics[BASE_RATE].normalized_entropy
    assert metrics[BASE_RATE].auc == pytest.approx(0.5)  # one prediction for every row
    assert metrics[BASE_RATE].mean_predicted == pytest.approx(split.train_base_rate)
    assert outcome.warnings == [] and outcome.labels[MODEL] == "model v1"
    slices = outcome.slice_table
    assert set(slices["slice"]) == {*CONTRACT.evaluation_slices, SEEN_AD}
    assert set(slices.loc[slices["slice"] == SEEN_AD, "value"]) == {"seen", "unseen"}
    mobile = slices[(slices["slice"] == "device_type") & (slices["value"] == "mobile")].iloc[0]
    test = pq.read_table(set_path(wh, TEST_SET)).to_pandas()
    assert mobile["rows"] == (test["device_type"] == "mobile").sum()
    assert outcome.reliability_path.read_bytes() == outcome.reliability_png
    assert outcome.reliability_png.startswith(b"\x89PNG")
    table = comparison_markdown(metrics, outcome.labels)
    by_ne = sorted(metrics, key=lambda name: metrics[name].normalized_entropy)  # best NE first
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == [
        f"| {outcome.labels[n]}" for n in by_ne
    ]
    assert by_ne[0] == GROUND_TRUTH
    assert "| device_type | mobile |" in slices_markdown(slices, list(metrics))
    assert Evaluation.from_json(evaluation.to_json()) == evaluation


def test_the_champion_is_scored_on_the_same_rows(trained: Trained) -> None:
    wh, split = trained.warehouse, trained.split
    champion = ("1", trained.booster("1"))
    outcome = evaluate_model(
        wh,
        SPEC,
        CONTRACT.evaluation_slices,
        trained.models["2"],
        split,
        champion,
        None,
        EvaluationParams(top_fraction=0.2),
    )
    metrics = outcome.evaluation.metrics
    assert set(metrics) == {MODEL, CHAMPION, BASE_RATE, HISTORICAL_CTR}  # no ground truth for real logs
    assert outcome.evaluation.champion_version == "1" and outcome.labels[CHAMPION] == "champion v1"
    assert metrics[MODEL].top_fraction == 0.2
    # the champion's metrics are v1's own on this test day
    alone = evaluate_model(
        wh,
        SPEC,
        CONTRACT.evaluation_slices,
        trained.models["1"],
        split,
        None,
        None,
        EvaluationParams(top_fraction=0.2),
    )
    assert metrics[CHAMPION] == alone.evaluation.metrics[MODEL]
    assert "champion_ne" in outcome.slice_table.columns
    assert "Δ NE vs champion" in slices_markdown(outcome.slice_table, list(metrics))


def test_a_champion_that_cannot_score_is_reported_not_raised(trained: Trained) -> None:
    foreign = xgb.train(
        {"nthread": 1}, xgb.DMatrix(np.eye(3), label=[0, 1, 0], feature_names=["a", "b", "c"]), 1
    )
    test = pq.read_table(set_path(trained.warehouse, TEST_SET))
    version, scores, error = score_champion(("9", foreign), test)
    assert version == "9" and scores is None and error.startswith("champion v9 cannot score the test set")
    assert score_champion(None, test) == (None, None, None)
    outcome = evaluate_model(
        trained.warehouse, SPEC, ["device_type"], trained.models["2"], trained.split, ("9", foreign), None
    )
    assert outcome.evaluation.champion_error == error and outcome.warnings == [error]
    assert CHAMPION not in outcome.evaluation.metrics
    assert set(outcome.slice_table["slice"]) == {"device_type", SEEN_AD}


def test_a_model_trained_on_another_split_is_refused(trained: Trained) -> None:
    other = replace(trained.models["1"], split=TimeSplit(train=(DAYS[0],), validation=DAYS[1], test=DAYS[2]))
    with pytest.raises(ValueError, match="rematerialize ctr_model"):
        evaluate_model(trained.warehouse, SPEC, [], other, trained.split, None, None)


def test_seen_ads_and_the_historical_baseline(trained: Trained) -> None:
    ads = training_ads(set_path(trained.warehouse, TRAINING_SET))
    train = pq.read_table(set_path(trained.warehouse, TRAINING_SET)).to_pandas()
    assert ads == set(train.loc[train["split"] == "train", "ad_id"])  # never the validation day's
    assert historical_ctr_feature(SPEC) == "hist_ad_ctr"
    assert historical_ctr_feature(replace(SPEC, entities=())) is None
    assert contender_labels("4", None)[BASE_RATE] == "base rate (training CTR)"
    with pytest.raises(FileNotFoundError, match="materialize model_evaluation first"):
        read_evaluation(Warehouse(trained.warehouse.root / "nowhere"))
