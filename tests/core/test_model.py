"""The model as XGBoost sees it: the input frame and categories it has not seen, the downsampling
correction stored in the model file, the file format (never a pickle) and the manifest."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb

from clickloop.contract import LABEL
from clickloop.model import (
    DOWNSAMPLING_ATTR,
    ModelManifest,
    correct_downsampled,
    downsampling_rate_of,
    load_booster,
    manifest_path,
    model_categories,
    model_features,
    predict_ctr,
    read_model_manifest,
    save_booster,
    served_version,
    to_model_frame,
    write_model_manifest,
)
from clickloop.split import TimeSplit
from clickloop.storage import Warehouse
from clickloop.training import TrainingParams, fit_ctr_model
from tests.core.synthetic import KEYS, SPEC, features_day

CATEGORICAL, COLUMNS = SPEC.categorical, SPEC.columns


def replaced(table: pa.Table, **columns: pa.Array) -> pa.Table:
    for name, values in columns.items():
        table = table.set_column(table.column_names.index(name), name, values)
    return table


def test_correction_inverts_downsampling_exactly() -> None:
    p = np.array([0.001, 0.01, 0.05, 0.3, 0.9])
    w = 0.1
    q = p / (p + (1 - p) * w)  # the click probability among the kept rows
    np.testing.assert_allclose(correct_downsampled(q, w), p, rtol=1e-12)
    np.testing.assert_allclose(correct_downsampled(q, 1.0), q)
    assert correct_downsampled(0.5, 0.5) == pytest.approx(1 / 3)
    for rate in (0.0, 1.5):
        with pytest.raises(ValueError):
            correct_downsampled(q, rate)


def test_model_frame_and_unseen_categories() -> None:
    train = pa.concat_tables([features_day(k, 500) for k in KEYS[6:9]])
    country = train.column("country").to_pylist()
    country[::7] = [None] * len(country[::7])
    train = replaced(train, country=pa.array(country))
    frame = to_model_frame(train, COLUMNS, CATEGORICAL)
    assert list(frame.columns) == list(COLUMNS)
    assert all(str(frame[c].dtype) == "category" for c in CATEGORICAL)
    assert all(str(frame[c].dtype) == "float32" for c in SPEC.numeric)
    assert frame["country"].isna().sum() == len(country[::7])  # null context stays missing
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "max_cat_to_onehot": 1},
        xgb.DMatrix(frame, label=train.column(LABEL).to_numpy(), enable_categorical=True),
        num_boost_round=8,
    )
    categories = model_categories(booster)
    assert categories["device_type"] == ["desktop", "mobile", "tablet"]
    assert model_features(booster) == (list(COLUMNS), list(CATEGORICAL))

    rows = features_day(KEYS[9], 6)
    novel = replaced(rows, device_type=pa.array(["smartwatch"] * 6), advertiser_id=pa.array(["new"] * 6))
    with pytest.raises(xgb.core.XGBoostError, match="not in the training set"):
        booster.inplace_predict(to_model_frame(novel, COLUMNS, CATEGORICAL))  # the hazard categories avoid
    missing = replaced(novel, device_type=pa.nulls(6, pa.string()), advertiser_id=pa.nulls(6, pa.string()))
    np.testing.assert_array_equal(
        booster.inplace_predict(to_model_frame(novel, COLUMNS, CATEGORICAL, categories)),
        booster.inplace_predict(to_model_frame(missing, COLUMNS, CATEGORICAL, categories)),
    )
    # predict_ctr pins the frame to the model's own categories: unseen values score as missing
    np.testing.assert_allclose(predict_ctr(booster, novel), predict_ctr(booster, missing), rtol=1e-6)
    # Known categories are re-coded by name: alone, "mobile" and "US" get code 0 (training: 1), yet
    # the frame scores exactly like the one pinned to the training categories.
    known = replaced(rows, device_type=pa.array(["mobile"] * 6), country=pa.array(["US"] * 6))
    alone = to_model_frame(known, COLUMNS, CATEGORICAL)
    pinned = to_model_frame(known, COLUMNS, CATEGORICAL, categories)
    assert (alone["device_type"].cat.codes == 0).all() and (pinned["device_type"].cat.codes == 1).all()
    np.testing.assert_array_equal(booster.inplace_predict(alone), booster.inplace_predict(pinned))
    with pytest.raises(ValueError, match="no value"):
        to_model_frame(missing, COLUMNS, CATEGORICAL)  # XGBoost cannot take a column without categories
    with pytest.raises(ValueError, match="model's categories"):
        to_model_frame(rows, COLUMNS, CATEGORICAL, {})
    with pytest.raises(ValueError, match="the features table lack"):
        to_model_frame(rows.drop_columns(["hour"]), COLUMNS, CATEGORICAL)


@pytest.fixture(scope="module")
def downsampled_model() -> tuple[xgb.Booster, pa.Table]:
    """A small model trained with half the negatives, and rows to score."""
    train, valid, test = (features_day(k, 1500) for k in KEYS[:3])
    params = TrainingParams(n_trials=0, num_boost_round=20, nthread=1)
    return fit_ctr_model(SPEC, train, valid, params, rate=0.5).final.booster, test


def test_model_saved_in_xgboost_format_reloads_identically(
    downsampled_model: tuple[xgb.Booster, pa.Table], tmp_path: Path
) -> None:
    booster, test = downsampled_model
    expected = predict_ctr(booster, test)
    raw = booster.inplace_predict(to_model_frame(test, COLUMNS, CATEGORICAL, model_categories(booster)))
    np.testing.assert_allclose(expected, correct_downsampled(raw, 0.5))  # corrected wherever it is loaded
    assert downsampling_rate_of(booster) == 0.5
    for name in ("model.ubj", "model.json"):
        path = save_booster(booster, tmp_path / name)
        reloaded = load_booster(path)
        np.testing.assert_array_equal(predict_ctr(reloaded, test), expected)
        assert reloaded.attr(DOWNSAMPLING_ATTR) == "0.5"
        assert model_categories(reloaded) == model_categories(booster)
    assert (tmp_path / "model.json").read_text().startswith("{")
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="model files are .ubj or .json"):
        save_booster(booster, tmp_path / "model.pkl")
    untagged = xgb.train({"nthread": 1}, xgb.DMatrix(np.eye(3), label=[0, 1, 0]), 1)
    assert downsampling_rate_of(untagged) == 1.0


def test_model_manifest_round_trip(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path)
    with pytest.raises(FileNotFoundError, match="materialize ctr_model first"):
        read_model_manifest(wh)
    split = TimeSplit(train=(KEYS[0], KEYS[1]), validation=KEYS[2], test=KEYS[3])
    manifest = ModelManifest(
        "3", "run-1", "models/ctr_model/model-v3.ubj", split, 0.5, 41, 0.12, {"max_depth": 5}
    )
    assert write_model_manifest(wh, manifest) == manifest_path(wh)
    assert read_model_manifest(wh) == manifest
    assert served_version(manifest.version) == "ctr_model-v3"
