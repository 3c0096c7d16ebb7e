"""The cost of staleness computed from two arms' served days (clickloop/staleness.py)."""

from datetime import date, timedelta

import pytest

from clickloop.staleness import ArmDay, compare_arms, cost_per_day_of_age, markdown, report, weekly

START = date(2026, 10, 14)


def arm(captures: list[float | None], version: str, first: date = START) -> list[ArmDay]:
    return [
        ArmDay(str(first + timedelta(days=i)), version, c, 0.9 + i / 100, 1.1) for i, c in enumerate(captures)
    ]


def test_a_frozen_champion_losing_a_point_a_day_costs_a_point_per_day_of_age() -> None:
    frozen = arm([None, 0.86, *[0.85 - i / 100 for i in range(14)]], "v1", START - timedelta(days=2))
    loop = arm([0.85] * 14, "v2")
    days = compare_arms(frozen, loop, str(START), str(START - timedelta(days=2)))
    assert [d.drift_day for d in days] == list(range(14))
    assert [d.age for d in days] == list(range(2, 16))
    assert days[0].capture_lost == pytest.approx(0.0) and days[-1].capture_lost == pytest.approx(0.13)
    cost = cost_per_day_of_age(days)
    assert cost["frozen_capture"] == pytest.approx(-0.01)
    assert cost["capture_lost"] == pytest.approx(0.01)

    first, second = weekly(days)
    assert (first.week, first.days, first.first_day, second.last_day) == (1, 7, str(START), days[-1].day)
    assert first.frozen_capture == pytest.approx(0.82) and first.capture_lost == pytest.approx(0.03)
    assert second.capture_lost == pytest.approx(0.10) and second.loop_calibration == pytest.approx(1.1)

    payload = report(days)
    assert payload["mean_capture_lost"] == pytest.approx(0.065)
    assert payload["days"][-1]["capture_lost"] == pytest.approx(0.13)
    text = markdown(days)
    assert "+13.0" in text and "-1.00 points per day of age" in text and "+1.00 points" in text


def test_undefined_days_are_skipped_and_missing_days_are_refused() -> None:
    frozen = arm([0.8, None, 0.7], "v1")
    loop = arm([0.8, 0.8, None], "v2")
    days = compare_arms(frozen, loop, str(START), str(START))
    assert [d.capture_lost for d in days] == [pytest.approx(0.0), None, None]
    assert cost_per_day_of_age(days) == {"frozen_capture": pytest.approx(-0.05), "capture_lost": None}
    with pytest.raises(ValueError, match=str(START + timedelta(days=2))):
        compare_arms(frozen, loop[:2], str(START), str(START))
