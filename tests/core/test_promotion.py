"""The promotion gate: as a pure function of the numbers, and on real evaluation records of trained
models (the weak first model, a stronger one, the weak one again)."""

from dataclasses import replace

import pytest

from clickloop.evaluation import BASE_RATE, HISTORICAL_CTR, Evaluation, evaluate_model
from clickloop.promotion import (
    CheckReport,
    GatePolicy,
    SliceComparison,
    decide_promotion,
    gate_decision,
    important,
    slice_comparisons,
)
from tests.core.conftest import Trained
from tests.core.synthetic import CONTRACT, SPEC, truth_of

BASELINES = {BASE_RATE: 1.0, HISTORICAL_CTR: 0.95}
POLICY = GatePolicy(ne_margin=0.005, slice_tolerance=0.01, slice_min_rows=1000, slice_min_clicks=20)


def a_slice(candidate: float, champion: float, rows: int = 5000, value: str = "mobile") -> SliceComparison:
    return SliceComparison("device_type", value, rows, 200, candidate, champion)


# --- The gate as a pure function ------------------------------------------------------------------


def test_gate_promotes_a_better_model() -> None:
    decision = decide_promotion(0.85, BASELINES, 0.87, [a_slice(0.84, 0.86)], [], POLICY)
    assert decision.promote and not decision.failed
    assert "✅ pass" in decision.markdown() and "❌" not in decision.markdown()
    assert [c.name for c in decision.criteria] == [
        "upstream blocking checks passed",
        f"beats {BASE_RATE} on NE",
        f"beats {HISTORICAL_CTR} on NE",
        "beats champion on NE",
        "slice device_type=mobile not worse than champion",
    ]


def test_gate_promotes_the_first_model_against_the_baselines_only() -> None:
    first = decide_promotion(0.9, BASELINES, None, [], [], POLICY)
    assert first.promote and "no champion yet" in first.markdown()
    refused = decide_promotion(0.948, BASELINES, None, [], [], POLICY)
    assert not refused.promote
    assert [c.name for c in refused.failed] == [f"beats {HISTORICAL_CTR} on NE"]
    assert "needs ≤ 0.9450" in refused.failed[0].detail
    assert not decide_promotion(0.5, {}, None, [], [], POLICY).promote  # no baseline: no evidence


def test_gate_refuses_a_worse_model_and_one_within_the_margin() -> None:
    worse = decide_promotion(0.88, BASELINES, 0.87, [a_slice(0.88, 0.87)], [], POLICY)
    assert not worse.promote
    assert "beats champion on NE" in [c.name for c in worse.failed]
    assert not decide_promotion(0.868, BASELINES, 0.87, [], [], POLICY).promote  # gain < margin
    assert not decide_promotion(float("nan"), BASELINES, None, [], [], POLICY).promote


def test_gate_refuses_when_a_blocking_check_failed() -> None:
    problem = "features:features_expectations on 2026-10-03: failed"
    decision = decide_promotion(0.80, BASELINES, 0.87, [], [problem], POLICY, checks_verified=5)
    assert not decision.promote
    (failed,) = decision.failed
    assert failed.name == "upstream blocking checks passed" and problem in failed.detail
    assert "(5 check evaluations verified)" in failed.detail


def test_gate_refuses_a_slice_regression_but_ignores_small_slices() -> None:
    slices = [a_slice(0.80, 0.85), a_slice(0.90, 0.87, value="tablet")]
    decision = decide_promotion(0.84, BASELINES, 0.87, slices, [], POLICY)
    assert not decision.promote
    (failed,) = decision.failed
    assert failed.name == "slice device_type=tablet not worse than champion"
    tiny = [a_slice(0.80, 0.85), a_slice(0.99, 0.87, rows=50, value="tablet")]
    assert decide_promotion(0.84, BASELINES, 0.87, tiny, [], POLICY).promote
    within = [a_slice(0.875, 0.87, value="tablet")]
    assert decide_promotion(0.84, BASELINES, 0.87, within, [], POLICY).promote
    few_clicks = SliceComparison("device_type", "tv", 5000, 19, 0.99, 0.87)
    assert (
        not important(few_clicks, POLICY)
        and decide_promotion(0.84, BASELINES, 0.87, [few_clicks], [], POLICY).promote
    )


# --- The gate on real evaluations ---------------------------------------------------------------------

#: the small test data: every NE gain counts, slices of 400 rows are important
LOOP_POLICY = GatePolicy(ne_margin=0.0, slice_min_rows=400)
ALL_PASSED = CheckReport(verified=5, failed=[])


def evaluate(trained: Trained, version: str, champion: str | None) -> Evaluation:
    booster = None if champion is None else (champion, trained.booster(champion))
    return evaluate_model(
        trained.warehouse,
        SPEC,
        CONTRACT.evaluation_slices,
        trained.models[version],
        trained.split,
        booster,
        truth_of,
    ).evaluation


def test_promote_better_models_and_refuse_a_worse_one(trained: Trained) -> None:
    first = gate_decision(evaluate(trained, "1", None), ALL_PASSED, None, LOOP_POLICY)
    assert first.promote, first.markdown()  # beats both baselines; no champion yet

    better_evaluation = evaluate(trained, "2", "1")
    assert slice_comparisons(better_evaluation.slices)  # the champion is compared slice by slice
    better = gate_decision(better_evaluation, ALL_PASSED, "1", LOOP_POLICY)
    assert better.promote, better.markdown()  # the search and more rounds beat the weak champion

    worse = gate_decision(evaluate(trained, "3", "2"), ALL_PASSED, "2", LOOP_POLICY)
    assert not worse.promote
    assert "beats champion on NE" in [c.name for c in worse.failed]
    assert "| beats champion on NE | ❌ fail | NE" in worse.markdown()


def test_refuse_on_failed_checks_a_stale_evaluation_or_an_unscored_champion(trained: Trained) -> None:
    evaluation = evaluate(trained, "2", "1")
    failed_check = CheckReport(
        5, [f"features:features_expectations on {trained.split.split.train[0]}: failed"]
    )
    blocked = gate_decision(evaluation, failed_check, "1", LOOP_POLICY)
    assert not blocked.promote and [c.name for c in blocked.failed] == ["upstream blocking checks passed"]
    assert failed_check.failed[0] in blocked.failed[0].detail

    stale = gate_decision(evaluation, ALL_PASSED, "3", LOOP_POLICY)  # the champion changed since
    assert [c.name for c in stale.failed] == ["evaluated against the current champion"]
    assert "evaluated against 1, champion is now 3" in stale.failed[0].detail

    unscored = replace(evaluation, champion_error="champion v1 cannot score the test set: x")
    refused = gate_decision(unscored, ALL_PASSED, "1", LOOP_POLICY)
    assert [c.name for c in refused.failed] == ["champion scored on the test set"]


def test_slice_comparisons_need_a_champion() -> None:
    rows = [
        {"slice": "country", "value": "US", "rows": 10, "clicks": 1, "model_ne": 0.9, "champion_ne": 0.95},
        {"slice": "country", "value": "DE", "rows": 10, "clicks": 1, "model_ne": 0.9},
    ]
    assert slice_comparisons(rows) == [SliceComparison("country", "US", 10, 1, 0.9, 0.95)]
    assert slice_comparisons(rows[1:]) == []


@pytest.mark.parametrize("margin", [0.0, 0.001])
def test_a_tie_passes_only_without_margin(margin: float) -> None:
    decision = decide_promotion(0.9, {BASE_RATE: 1.0}, 0.9, [], [], GatePolicy(ne_margin=margin))
    assert decision.promote is (margin == 0.0)
