"""Drift: the reference a day is compared with, deterministic bounded samples, and real Evidently
reports on small hand-made ``features`` days."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clickloop.drift import (
    DRIFT_EXCLUDED,
    MISSING,
    DriftColumns,
    DriftParams,
    ReferenceChoice,
    cap_rows,
    choose_reference,
    compute_drift,
    drift_markdown,
    drift_of_day,
    drift_png,
    drift_row,
    known_training_window,
    read_sample,
    report_path,
)
from clickloop.model import ModelManifest, write_model_manifest
from clickloop.split import SplitManifest, TimeSplit, split_manifest_path
from clickloop.storage import Warehouse, atomic_write_text
from tests.core.synthetic import KEYS, SPEC, monitoring_frame, write_monitoring_day
from tests.core.test_presentation import TAB_RED, count_color, decode_png

COLUMNS = DriftColumns.of(SPEC)
DAYS = KEYS[:5]


def drift_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame as :func:`read_sample` returns it: categoricals and the label as strings."""
    out = frame.copy()
    for c in [*COLUMNS.categorical, "clicked"]:
        out[c] = out[c].astype(str)
    return out


def test_drift_columns_are_the_features_but_weekday() -> None:
    assert "weekday" in DRIFT_EXCLUDED and "weekday" not in COLUMNS.features
    assert COLUMNS.features == tuple(c for c in SPEC.columns if c != "weekday")
    assert (COLUMNS.prediction, COLUMNS.target) == ("predicted_ctr", "clicked")
    assert DriftColumns.of(SPEC, has_prediction=False).prediction is None


# --- Reference window and samples -----------------------------------------------------------


def test_reference_is_the_training_window_else_the_days_before() -> None:
    keys = KEYS[:12]
    day = keys[10]
    training = keys[2:7]
    choice = choose_reference(day, keys, keys, training_keys=training, fallback_days=3)
    assert choice == ReferenceChoice(tuple(training), "training window")
    # missing days of the window are skipped, never replaced
    gone = choose_reference(day, keys, [k for k in keys if k != keys[3]], training_keys=training)
    assert gone.keys == tuple(k for k in training if k != keys[3])
    # a window reaching day D (or after it) is not a reference for D: the days before D are
    fallback = choose_reference(keys[5], keys, keys, training_keys=training, fallback_days=3)
    assert fallback == ReferenceChoice(tuple(keys[2:5]), "3 days before")
    assert choose_reference(day, keys, keys[:9], fallback_days=3).keys == (keys[7], keys[8])
    assert choose_reference(keys[0], keys, keys) == ReferenceChoice((), "none")
    with pytest.raises(ValueError, match="not a partition key"):
        choose_reference("1999-01-01", keys, keys)
    with pytest.raises(ValueError, match="fallback_days"):
        choose_reference(day, keys, keys, fallback_days=0)


def test_training_window_from_the_model_and_split_manifests(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path)
    assert known_training_window(warehouse, ["random-v0"]) is None
    latest = TimeSplit(train=tuple(DAYS[1:3]), validation=DAYS[3], test=DAYS[4])
    split = SplitManifest(latest, negative_downsampling_rate=1.0, seed=7, train_base_rate=0.03)
    atomic_write_text(split_manifest_path(warehouse), split.to_json())
    assert known_training_window(warehouse, ["random-v0"]) == (
        tuple(DAYS[1:3]),
        "training window of the latest training set",
    )
    served = TimeSplit(train=(DAYS[0],), validation=DAYS[1], test=DAYS[2])
    write_model_manifest(warehouse, ModelManifest("3", "run", "model.ubj", served, 1.0, 10, 0.1, {}))
    assert known_training_window(warehouse, ["ctr_model-v3"]) == (
        (DAYS[0],),
        "training window of ctr_model-v3",
    )
    assert known_training_window(warehouse, ["ctr_model-v2"])[0] == tuple(DAYS[1:3])


def test_sample_is_bounded_deterministic_and_typed(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path)
    frame = monitoring_frame(DAYS[0], 3_000, seed=3)
    frame.loc[:99, "country"] = None
    path = write_monitoring_day(warehouse, DAYS[0], frame)
    with warehouse.duckdb() as con:
        first = read_sample(con, [path], 500, seed=7, columns=COLUMNS)
        again = read_sample(con, [path], 500, seed=7, columns=COLUMNS)
        other = read_sample(con, [path], 500, seed=8, columns=COLUMNS)
        everything = read_sample(con, [path], 10_000, seed=7, columns=COLUMNS)
        with pytest.raises(ValueError, match="sample size"):
            read_sample(con, [path], 0, seed=7, columns=COLUMNS)
    assert len(first) == 500 and len(everything) == 3_000
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)
    assert list(first.columns) == [*COLUMNS.features, "predicted_ctr", "clicked"]
    assert first["device_type"].dtype == object and set(first["clicked"]) <= {"0", "1"}
    assert first["hour"].dtype == np.float64
    assert (everything["country"] == MISSING).sum() == 100  # a surge of nulls would show as drift
    assert cap_rows(frame, 10_000, 1) is frame
    capped = cap_rows(frame, 100, 1)
    assert (
        len(capped) == 100 and capped.equals(cap_rows(frame, 100, 1)) and capped.index.is_monotonic_increasing
    )


# --- Drift (real Evidently) --------------------------------------------------------------------


def test_device_shift_drifts_and_the_same_distribution_does_not() -> None:
    reference = drift_columns(monitoring_frame(DAYS[0], 3_000, seed=10))
    same = drift_columns(monitoring_frame(DAYS[1], 3_000, seed=11))
    shifted = drift_columns(monitoring_frame(DAYS[1], 3_000, seed=11, smart_tv=0.4))

    calm = compute_drift(reference, same, COLUMNS)
    assert calm.share_drifted_columns == 0.0 and calm.drifted == ()
    assert not calm.prediction.drifted and calm.prediction.score == 0.0
    assert {c.column for c in calm.features} == set(COLUMNS.features)

    few = DriftColumns(categorical=("device_type", "country"), numeric=("hour", "hist_ad_ctr"))
    identical = compute_drift(reference, reference.copy(), few)
    assert identical.drifted == () and identical.share_drifted_columns == 0.0 and not identical.target.drifted
    assert identical.target.method == "z" and identical.target.score == pytest.approx(1.0)

    drift = compute_drift(reference, shifted, COLUMNS)
    assert [c.column for c in drift.drifted] == ["device_type"]
    (device,) = drift.drifted
    assert device.score > device.threshold and device.method == "Jensen-Shannon distance"
    assert drift.share_drifted_columns == pytest.approx(1 / len(COLUMNS.features))
    assert "<html" in drift.html()[:1000].lower()
    assert drift_markdown(drift).startswith(f"1 of {len(COLUMNS.features)} features drifted")
    # the plot: a bar per column, the drifted one in red (none in the calm day's)
    assert count_color(drift_png(drift), TAB_RED) > 100 and count_color(drift_png(calm), TAB_RED) == 0
    tall = decode_png(drift_png(drift)).shape[0]
    assert tall > decode_png(drift_png(identical)).shape[0]  # a row per column
    row = drift_row(drift, ReferenceChoice((DAYS[0],), "training window"), Path("/tmp/r.html"))
    assert list(row.drifted_columns) == ["device_type"] and row.reference_days == (DAYS[0],)
    assert row.drifted_columns["device_type"]["score"] == device.score
    assert (row.current_rows, row.reference_rows, row.report_path) == (3_000, 3_000, "/tmp/r.html")


def test_prediction_and_click_rate_shifts_drift() -> None:
    reference = drift_columns(monitoring_frame(DAYS[0], 3_000, seed=12))
    current = reference.copy()
    rng = np.random.default_rng(0)
    current["predicted_ctr"] = rng.beta(2, 60, len(current))  # a model replaces the constant prior
    current["clicked"] = np.where(rng.random(len(current)) < 0.01, "1", "0")  # CTR 3 % -> 1 %
    few = DriftColumns(categorical=("device_type",), numeric=("hour",))
    summary = compute_drift(reference, current, few)
    assert summary.prediction.drifted and summary.target.drifted
    assert summary.target.score < 0.05  # the z-test's p-value
    assert summary.drifted == ()
    current["predicted_ctr"] = np.nan  # logs without predictions: no prediction drift
    unscored = compute_drift(reference, current, few)
    assert unscored.prediction is None and unscored.target.drifted


def test_compute_drift_samples_large_frames() -> None:
    reference = drift_columns(monitoring_frame(DAYS[0], 6_000, seed=13))
    current = drift_columns(monitoring_frame(DAYS[1], 9_000, seed=14))
    few = DriftColumns(categorical=("device_type",), numeric=("hour",))
    summary = compute_drift(reference, current, few, DriftParams(sample_rows=2_000))
    assert (summary.current_rows, summary.reference_rows) == (2_000, 2_000)
    with pytest.raises(ValueError, match="lacks columns"):
        compute_drift(reference.drop(columns=["hour"]), current, COLUMNS)
    with pytest.raises(ValueError, match="has no rows"):
        compute_drift(reference.iloc[:0], current, few)
    with pytest.raises(ValueError, match="at least one feature"):
        compute_drift(reference, current, DriftColumns((), ()))


def test_drift_of_a_day_against_the_days_before(tmp_path: Path) -> None:
    """Days 0-2 are alike; day 3 has a new device in 40 % of its traffic."""
    warehouse = Warehouse(tmp_path / "data")
    for i, day in enumerate(DAYS[:4]):
        write_monitoring_day(
            warehouse, day, monitoring_frame(day, 2_000, seed=20 + i, smart_tv=0.4 if i == 3 else 0.0)
        )
    params = DriftParams(sample_rows=1_500)
    seen: list[ReferenceChoice] = []
    calm = drift_of_day(warehouse, DAYS[2], DAYS, COLUMNS, params)
    shifted = drift_of_day(warehouse, DAYS[3], DAYS, COLUMNS, params, before_reading=seen.append)
    assert calm.reference == ReferenceChoice(tuple(DAYS[:2]), "7 days before")
    assert shifted.reference == ReferenceChoice(tuple(DAYS[:3]), "7 days before") == seen[0]
    assert (shifted.summary.current_rows, shifted.summary.reference_rows) == (1_500, 1_500)  # sampled
    assert calm.summary.share_drifted_columns == 0.0
    assert shifted.summary.share_drifted_columns == pytest.approx(1 / len(COLUMNS.features))
    assert [c.column for c in shifted.summary.drifted] == ["device_type"]
    assert shifted.summary.prediction.score == 0.0
    assert shifted.path == report_path(warehouse, DAYS[3])
    assert shifted.path.read_text().lstrip().lower().startswith("<!doctype html")

    first = drift_of_day(warehouse, DAYS[0], DAYS, COLUMNS, params)
    assert first.reference.source == "none" and first.summary is None and first.path is None

    def refuse(reference: ReferenceChoice) -> None:
        raise RuntimeError(f"refused {reference.keys}")

    with pytest.raises(RuntimeError, match="refused"):
        drift_of_day(warehouse, DAYS[3], DAYS, COLUMNS, params, before_reading=refuse)
    with pytest.raises(FileNotFoundError, match="features"):
        drift_of_day(warehouse, DAYS[4], DAYS, COLUMNS, params)
