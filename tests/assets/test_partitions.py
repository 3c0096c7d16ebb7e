"""The loop's day windows: the days each asset reads around day D, cut at the partitions' edges,
built without the Dagster beta warning every command would otherwise print."""

import warnings

import pytest
from dagster import BetaWarning

from assets.partitions import (
    CLICKS_FOR_EVENTS,
    IMPRESSIONS_FOR_EVENTS,
    IMPRESSIONS_OF_STATISTICS_SHIFT,
    STATISTICS_OF_LABELLED_DAY,
    Calendar,
    days_around,
)

CALENDAR = Calendar(start_date="2026-10-01", feature_window_days=7)


def upstream_days(mapping, day: str) -> tuple[list[str], list[str]]:
    """The days ``mapping`` reads for ``day`` and those it asked for outside the partitions."""
    partitions = CALENDAR.partitions
    result = mapping.get_upstream_mapped_partitions_result_for_partitions(
        partitions.subset_with_partition_keys([day]), partitions, partitions
    )
    return sorted(result.partitions_subset.get_partition_keys()), sorted(
        result.required_but_nonexistent_subset.get_partition_keys()
    )


def test_windows_read_the_days_around_d_and_skip_those_before_the_first() -> None:
    assert upstream_days(CLICKS_FOR_EVENTS, "2026-10-05")[0] == ["2026-10-04", "2026-10-05", "2026-10-06"]
    read, missing = upstream_days(CLICKS_FOR_EVENTS, "2026-10-01")
    assert read == ["2026-10-01", "2026-10-02"] and missing == []
    window = upstream_days(CALENDAR.history_window, "2026-10-20")[0]
    assert window == [f"2026-10-{day:02d}" for day in range(12, 19)]
    assert upstream_days(CALENDAR.history_window, "2026-10-02") == ([], [])
    # the recalibration of D: D-4 … D-2, each with the statistics of the day after it, carried to
    # D's statistics on the impressions of D-1
    assert upstream_days(CALENDAR.recalibration_days, "2026-10-20")[0] == [
        "2026-10-16",
        "2026-10-17",
        "2026-10-18",
    ]
    assert upstream_days(CALENDAR.statistics_of_recalibration, "2026-10-20")[0] == [
        "2026-10-17",
        "2026-10-18",
        "2026-10-19",
        "2026-10-20",
    ]
    assert upstream_days(IMPRESSIONS_OF_STATISTICS_SHIFT, "2026-10-20")[0] == ["2026-10-19"]


def test_the_days_that_read_a_day_are_the_windows_seen_from_the_other_side() -> None:
    # the raw logs of D are read by the events of D and D+1 (impressions), D-1 … D+1 (clicks)
    assert CALENDAR.downstream_days(IMPRESSIONS_FOR_EVENTS, "2026-10-05") == ["2026-10-05", "2026-10-06"]
    assert CALENDAR.downstream_days(CLICKS_FOR_EVENTS, "2026-10-05") == [
        "2026-10-04",
        "2026-10-05",
        "2026-10-06",
    ]
    assert CALENDAR.downstream_days(CLICKS_FOR_EVENTS, "2026-10-01") == ["2026-10-01", "2026-10-02"]
    last = CALENDAR.keys()[-1]  # no partition after it yet
    assert CALENDAR.downstream_days(CLICKS_FOR_EVENTS, last) == CALENDAR.keys()[-2:]
    # a labelled day is re-scored with the statistics of the day after it
    assert CALENDAR.upstream_days(STATISTICS_OF_LABELLED_DAY, "2026-10-05") == ["2026-10-06"]
    assert CALENDAR.upstream_days(STATISTICS_OF_LABELLED_DAY, last) == []


def test_the_days_up_to_a_day_end_with_it_and_start_no_earlier_than_the_first() -> None:
    assert CALENDAR.days_up_to("2026-10-20", 3) == ["2026-10-18", "2026-10-19", "2026-10-20"]
    assert CALENDAR.days_up_to("2026-10-02", 30) == ["2026-10-01", "2026-10-02"]
    assert CALENDAR.days_up_to("2026-10-02", 1) == ["2026-10-02"]
    with pytest.raises(ValueError, match="at least one day"):
        CALENDAR.days_up_to("2026-10-02", 0)


def test_building_a_window_prints_no_beta_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        days_around(-1, 1)
        CALENDAR.history_window  # noqa: B018 (a property that builds a mapping)
    assert [w for w in caught if issubclass(w.category, BetaWarning)] == []
