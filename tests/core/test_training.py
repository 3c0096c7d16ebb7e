"""Training the CTR model: early stopping at the best iteration, the small search then the final model,
recalibration after negative downsampling, and feature importance; real XGBoost on synthetic days
whose true click probability is known."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from clickloop.contract import LABEL
from clickloop.features import WEEKDAY
from clickloop.metrics import log_loss
from clickloop.model import DOWNSAMPLING_ATTR, model_categories, predict_ctr, to_model_frame
from clickloop.search import TUNED, NonFiniteModelError, choose_trial, trials_markdown
from clickloop.split import SPLIT_COLUMN, TRAIN, VALIDATION, TimeSplit, build_training_set
from clickloop.storage import Warehouse
from clickloop.training import (
    WEEKDAY_MIN_TRAIN_DAYS,
    TrainingParams,
    base_params,
    build_matrices,
    feature_importance,
    fit_ctr_model,
    importance_markdown,
    inputs_left_out,
    leaf_min_weight,
    model_data,
    read_training_data,
    recency_weights,
    sample_rows,
    train_booster,
    training_frames,
    training_spec,
)
from tests.core.synthetic import KEYS, SPEC, features_day, truth_of, write_features_days


@pytest.fixture(scope="module")
def frames() -> tuple[pa.Table, pa.Table, pa.Table]:
    return features_day(KEYS[0], 6000), features_day(KEYS[1], 3000), features_day(KEYS[2], 3000)


@pytest.fixture(scope="module")
def searched(frames: tuple[pa.Table, pa.Table, pa.Table]):
    train, valid, _ = frames
    params = TrainingParams(
        n_trials=2, search_num_boost_round=40, num_boost_round=80, search_max_rows=4000, nthread=1
    )
    return params, fit_ctr_model(SPEC, train, valid, params, rate=1.0)


def test_early_stopping_keeps_the_best_iteration(frames: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    train, valid, _ = frames
    train_data, valid_data = training_frames(SPEC, train, valid)
    params = TrainingParams(learning_rate=0.8, max_depth=8, min_child_weight=0.1, max_bin=64, nthread=1)
    matrices = build_matrices(train_data, valid_data, max_bin=params.max_bin, rate=1.0)
    fitted = train_booster(matrices, base_params(params), num_boost_round=300, early_stopping_rounds=5)
    curve = fitted.curves["validation_logloss"]
    assert fitted.best_iteration < len(curve) - 1 < 299  # stopped early, well before 300 rounds
    assert fitted.booster.num_boosted_rounds() == fitted.best_iteration + 1
    assert fitted.valid_logloss == pytest.approx(min(curve))
    assert len(fitted.curves["train_logloss"]) == len(curve)


def test_a_rows_prediction_does_not_depend_on_the_rows_scored_with_it(
    frames: tuple[pa.Table, pa.Table, pa.Table],
) -> None:
    """The booster cut at its best iteration still knows its training categories: a test day, a
    serving chunk of one device or one new advertiser score each row the same."""
    train, valid, test = frames
    train_data, valid_data = training_frames(SPEC, train, valid)
    params = TrainingParams(learning_rate=0.3, min_child_weight=5.0, nthread=1)
    fitted = train_booster(build_matrices(train_data, valid_data, 256, 1.0), base_params(params), 200, 5)
    assert fitted.booster.num_boosted_rounds() < 200  # cut at the best iteration
    assert model_categories(fitted.booster)["device_type"] == ["desktop", "mobile", "tablet"]
    everything = predict_ctr(fitted.booster, test)
    devices = np.array(test["device_type"].to_pylist())
    for device in ("mobile", "tablet"):
        chunk = test.filter(pc.equal(test["device_type"], device))
        np.testing.assert_array_equal(predict_ctr(fitted.booster, chunk), everything[devices == device])
    first = test.slice(0, 5)
    newcomer = first.set_column(
        first.column_names.index("advertiser_id"), "advertiser_id", pa.array(["adv-new"] * 5)
    )
    missing = first.set_column(
        first.column_names.index("advertiser_id"), "advertiser_id", pa.nulls(5, pa.string())
    )
    np.testing.assert_array_equal(predict_ctr(fitted.booster, newcomer), predict_ctr(fitted.booster, missing))


def test_search_then_final_model_finds_the_signal(frames, searched) -> None:
    _, _, test = frames
    params, fit = searched
    assert len(fit.trials) == 2 and fit.train_rows == 6000 and fit.valid_rows == 3000  # searched on 4000
    assert fit.trials[0].params["max_depth"] == params.max_depth  # the configured point is tried first
    assert fit.trials[1].params != fit.trials[0].params  # then the sampler explores
    assert fit.final.valid_logloss <= min(t.valid_logloss for t in fit.trials) + 5e-3
    importance = feature_importance(fit.final.booster)
    assert set(importance["feature"]) == set(SPEC.columns)
    assert importance["gain_share"].sum() == pytest.approx(1.0)
    assert importance["feature"][0] == "hist_ad_ctr"  # the strongest single signal
    never_split = importance[importance["splits"] == 0]
    assert (never_split["total_gain"] == 0).all() and (never_split["mean_gain"] == 0).all()
    assert "hist_site_ctr" in set(never_split["feature"])  # a constant column carries nothing
    p = predict_ctr(fit.final.booster, test)
    y = test[LABEL].to_numpy().astype(float)
    base = y.mean()
    base_loss = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert log_loss(y, p) < 0.95 * base_loss  # the model found the signal
    assert "| hist_ad_ctr |" in importance_markdown(importance, top=3)
    table = trials_markdown(fit.trials)
    assert table.count("\n") == 3 and all(name in table.splitlines()[0] for name in TUNED)


def test_a_trial_replaces_the_configured_parameters_only_beyond_the_noise() -> None:
    """Paired on the same validation rows: a gain far below its standard error keeps trial 0, a
    gain of many standard errors takes the trial; the lowest mean loss is always the one weighed."""
    rng = np.random.default_rng(3)
    configured = rng.exponential(0.2, 5000)
    noise = rng.normal(0.0, 0.05, 5000)
    losses = {0: configured, 1: configured + noise - 0.0002, 2: configured + noise * 0.1 - 0.004}
    assert choose_trial({0: configured, 1: losses[1]}, 2.0).trial == 0  # 0.0002 against an SE of 0.0007
    chosen = choose_trial({0: configured, 1: losses[1]}, 0.0)
    assert (chosen.trial, chosen.best_trial) == (1, 1)  # 0: the lowest loss wins
    choice = choose_trial(losses, 2.0)
    assert (choice.trial, choice.best_trial) == (2, 2)
    assert choice.gain == pytest.approx(0.004, abs=2e-4)
    assert choice.gain > 2.0 * choice.standard_error > 0
    assert "took trial 2" in choice.text()
    assert choose_trial({0: configured, 1: configured + 0.01}, 2.0).text().startswith("the configured")


def test_the_final_model_takes_the_chosen_trials_parameters(frames) -> None:
    """With the noise rule off, the final model has the lowest-loss trial's parameters; with a rule
    no trial can pass, the configured ones, whatever the trials scored."""
    train, valid, _ = frames
    base = TrainingParams(
        n_trials=3, search_num_boost_round=40, num_boost_round=80, search_max_rows=4000, nthread=1
    )
    greedy = fit_ctr_model(SPEC, train, valid, replace(base, search_min_gain_se=0.0), rate=1.0)
    lowest = min(greedy.trials, key=lambda t: t.valid_logloss)
    assert greedy.choice is not None and greedy.choice.trial == lowest.number
    assert all(greedy.final.params[k] == lowest.params[k] for k in TUNED)
    strict = fit_ctr_model(SPEC, train, valid, replace(base, search_min_gain_se=1e9), rate=1.0)
    assert strict.choice is not None and strict.choice.trial == 0
    assert strict.trials[0].params["max_depth"] == base.max_depth  # trial 0: the configured ones
    assert all(strict.final.params[k] == strict.trials[0].params[k] for k in TUNED)
    assert [t.valid_logloss for t in strict.trials] == [t.valid_logloss for t in greedy.trials]
    assert lowest.number != 0  # on these days a searched trial beats the configured one (5 SE)
    # the choice's gain is the trials' validation loss difference, paired per row
    gain = greedy.trials[0].valid_logloss - lowest.valid_logloss
    assert greedy.choice.gain == pytest.approx(gain, rel=1e-3, abs=1e-6)
    assert "(chosen)" in trials_markdown(strict.trials, strict.choice)


def test_a_leaf_holds_the_same_share_of_the_data_at_any_scale(frames) -> None:
    """Unset, ``min_child_weight`` is 1 % of the training rows' hessian: 10× the rows, 10× the
    weight; a configured one is kept; the final model is trained with the resolved value."""
    params = TrainingParams()
    assert params.min_child_weight is None
    small, large = leaf_min_weight(params, 40_000, 0.035), leaf_min_weight(params, 400_000, 0.035)
    assert small == pytest.approx(0.01 * 40_000 * 0.035 * 0.965) and large == pytest.approx(10 * small)
    assert leaf_min_weight(params, 50, 0.01) == 1.0  # never below one
    assert leaf_min_weight(replace(params, min_child_weight=7.0), 400_000, 0.035) == 7.0
    with pytest.raises(ValueError, match="min_child_weight is unset"):
        base_params(params)
    train, valid, _ = frames
    fit = fit_ctr_model(SPEC, train, valid, replace(params, n_trials=0, num_boost_round=20, nthread=1), 1.0)
    labels = train[LABEL].to_numpy().astype(float)
    expected = 0.01 * len(labels) * labels.mean() * (1 - labels.mean())
    assert fit.final.params["min_child_weight"] == pytest.approx(max(1.0, expected))


def test_downsampled_model_is_recalibrated(tmp_path: Path) -> None:
    """Trained on 20 % of the negatives, the raw prediction is far too high; corrected, the mean
    prediction on real traffic matches the true click rate."""
    warehouse = Warehouse(tmp_path / "data")
    paths = write_features_days(warehouse, KEYS[:3], n=6000)
    split = TimeSplit(train=(KEYS[0],), validation=KEYS[1], test=KEYS[2])
    target = tmp_path / "training_set.parquet"
    with warehouse.duckdb() as con:
        build_training_set(con, split, paths, 0.2, 3, target)
    train, valid = read_training_data(target)
    assert set(train[SPLIT_COLUMN].to_pylist()) == {TRAIN} and set(valid[SPLIT_COLUMN].to_pylist()) == {
        VALIDATION
    }
    params = TrainingParams(n_trials=0, num_boost_round=60, learning_rate=0.2, nthread=1)
    fit = fit_ctr_model(SPEC, train, valid, params, rate=0.2)
    test = pq.read_table(paths[split.test])
    corrected = predict_ctr(fit.final.booster, test)
    raw = fit.final.booster.inplace_predict(
        to_model_frame(test, SPEC.columns, SPEC.categorical, model_categories(fit.final.booster))
    )
    truth = truth_of(test)
    assert raw.mean() > 2.5 * truth.mean()
    assert abs(corrected.mean() / truth.mean() - 1.0) < 0.1
    assert fit.final.booster.attr(DOWNSAMPLING_ATTR) == "0.2"
    # early stopping judged the corrected probability: its validation log loss is the real one
    valid_p = predict_ctr(fit.final.booster, valid)
    assert fit.final.valid_logloss == pytest.approx(log_loss(valid[LABEL].to_numpy(), valid_p), rel=1e-3)


def test_sampling_and_empty_sets() -> None:
    data = model_data(SPEC, features_day(KEYS[0], 100))
    sample = sample_rows(data, 30, seed=1)
    assert sample.rows == 30 and sample_rows(data, 30, seed=1).features.equals(sample.features)
    assert sample_rows(data, 0, seed=1) is data and sample_rows(data, 500, seed=1) is data
    assert list(sample.features["device_type"].cat.categories) == list(
        data.features["device_type"].cat.categories
    )
    empty = features_day(KEYS[1], 10).slice(0, 0)
    with pytest.raises(ValueError, match="must not be empty"):
        fit_ctr_model(SPEC, features_day(KEYS[0], 100), empty, TrainingParams(n_trials=0), rate=1.0)


def test_training_twice_gives_identical_model_bytes(frames: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    """Same data, same parameters (threads included): the saved UBJSON is the same, byte for byte."""
    train, valid, _ = frames
    params = TrainingParams(n_trials=1, search_num_boost_round=20, num_boost_round=30, nthread=2)
    first, second = (fit_ctr_model(SPEC, train, valid, params, rate=0.5) for _ in range(2))
    raw = [bytes(fit.final.booster.save_raw("ubj")) for fit in (first, second)]
    assert raw[0] == raw[1]
    changed = fit_ctr_model(SPEC, train, valid, TrainingParams(**{**params.__dict__, "seed": 8}), rate=0.5)
    assert bytes(changed.final.booster.save_raw("ubj")) != raw[0]  # the comparison can fail


def test_training_fails_on_a_diverging_loss(frames: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    train, valid, _ = frames
    train_data, valid_data = training_frames(SPEC, train, valid)
    matrices = build_matrices(train_data, valid_data, max_bin=64, rate=1.0)
    diverging = {
        **base_params(TrainingParams(nthread=1, max_bin=64), min_child_weight=1.0),
        "learning_rate": float("inf"),
    }
    with pytest.raises(NonFiniteModelError, match=r"training diverged: \w+ logloss is nan from round \d"):
        train_booster(matrices, diverging, num_boost_round=5, early_stopping_rounds=5)


def test_recency_weights_halve_per_half_life_and_average_one() -> None:
    times = np.array(["2026-10-01T23:00", "2026-10-02T01:00", "2026-10-03T12:00"], dtype="datetime64[s]")
    weights = recency_weights(times, half_life_days=1.0)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[2] / weights[1] == pytest.approx(2.0) and weights[2] / weights[0] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="positive number of days"):
        recency_weights(times, half_life_days=0.0)


def with_rule(table: pa.Table, clicking_device: str, seed: int) -> pa.Table:
    """The rows with new labels: 30 % of the impressions on ``clicking_device`` click, none other."""
    rng = np.random.default_rng(seed)
    device = table.column("device_type").to_numpy(zero_copy_only=False)
    labels = ((device == clicking_device) & (rng.random(table.num_rows) < 0.3)).astype(np.int8)
    return table.set_column(table.column_names.index(LABEL), LABEL, pa.array(labels))


def test_recency_weights_make_the_model_follow_the_newest_day() -> None:
    # the world changed between the two training days: the older one clicks on mobile, the newer on desktop
    train = pa.concat_tables(
        [
            with_rule(features_day(KEYS[0], 4000), "mobile", 1),
            with_rule(features_day(KEYS[1], 2000), "desktop", 2),
        ]
    )
    valid = with_rule(features_day(KEYS[2], 3000), "desktop", 3)
    params = TrainingParams(n_trials=0, num_boost_round=60, nthread=1, min_child_weight=5.0)
    uniform = fit_ctr_model(SPEC, train, valid, params, rate=1.0).final
    recent = fit_ctr_model(SPEC, train, valid, replace(params, recency_half_life_days=0.25), rate=1.0).final
    # the weighted model learned the newest day's rule; the uniform one is stuck between the two
    assert recent.valid_logloss < 0.95 * uniform.valid_logloss
    p = predict_ctr(recent.booster, valid)
    device = valid.column("device_type").to_numpy(zero_copy_only=False)
    assert p[device == "desktop"].mean() > 5 * p[device == "mobile"].mean()


def test_a_week_of_training_days_leaves_weekday_out() -> None:
    # a week of training days, one of them (a Sunday) clicked 2.5 times as often for a reason of its
    # own (the policy that served it, a drift that began on it); the world has no weekday effect
    train_days, sunday = KEYS[:7], KEYS[3]
    rng = np.random.default_rng(5)
    tables = []
    for day in train_days:
        table = features_day(day, 4000)
        if day == sunday:
            p = np.minimum(1.0, 2.5 * truth_of(table))
            labels = pa.array((rng.random(table.num_rows) < p).astype(np.int8))
            table = table.set_column(table.column_names.index(LABEL), LABEL, labels)
        tables.append(table)
    train, valid = pa.concat_tables(tables), features_day(KEYS[7], 3000)
    next_saturday, next_sunday = features_day(KEYS[9], 6000), features_day(KEYS[10], 6000)
    params = TrainingParams(n_trials=0, num_boost_round=150, learning_rate=0.2, nthread=1)

    def sunday_against_saturday(spec) -> float:
        booster = fit_ctr_model(spec, train, valid, params, rate=1.0).final.booster
        over = [predict_ctr(booster, t).sum() / truth_of(t).sum() for t in (next_sunday, next_saturday)]
        return over[0] / over[1]

    # with the weekday as an input, that Sunday's level is the weekday's and comes back a week later
    assert sunday_against_saturday(SPEC) > 1.4
    # the training spec of a week leaves weekday out: both days are predicted alike
    week = training_spec(SPEC, len(train_days))
    assert WEEKDAY in SPEC.columns and WEEKDAY not in week.columns
    assert set(SPEC.columns) - set(week.columns) == {WEEKDAY}
    assert sunday_against_saturday(week) == pytest.approx(1.0, abs=0.08)
    assert (
        inputs_left_out(SPEC, 7)
        == "weekday (7 training days hold each weekday at most once: it would name a day)"
    )
    # two weeks hold each weekday twice: it is an input again
    assert training_spec(SPEC, WEEKDAY_MIN_TRAIN_DAYS) == SPEC
    assert inputs_left_out(SPEC, WEEKDAY_MIN_TRAIN_DAYS) == "none"
