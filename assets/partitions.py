"""The one time axis of the loop: daily partitions of UTC days, and how days depend on each other.

Which days an asset reads is a Dagster partition mapping, never date arithmetic in code: the events
of day D need the clicks of D+1 (late clicks) and the impressions of D-1 (duplicates across
midnight); the statistics of day D use the days whose labels were final when D began.
"""

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetChecksDefinition,
    BetaWarning,
    DailyPartitionsDefinition,
    PreviewWarning,
    TimeWindowPartitionMapping,
    asset_check,
)

from clickloop.calibration import CALIBRATION_LAG_DAYS, CALIBRATION_STATS_LAG_DAYS, POOLED_DAYS


def days_around(start_offset: int, end_offset: int) -> TimeWindowPartitionMapping:
    """The days ``start_offset`` … ``end_offset`` around day D; those outside the partitions (before
    the first day with logs, after today) are skipped rather than an error.

    ``allow_nonexistent_upstream_partitions`` is a beta parameter of Dagster 1.13 (the version is
    pinned); its warning is silenced here, where it is used on purpose, so that it is not printed by
    every command that loads the definitions.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return TimeWindowPartitionMapping(
            start_offset=start_offset, end_offset=end_offset, allow_nonexistent_upstream_partitions=True
        )


#: the impressions of D-1 and D: clicks logged on D may belong to either day.
IMPRESSIONS_FOR_EVENTS = days_around(-1, 0)
#: the clicks of D-1 (to rank duplicates of D-1's impressions), D, and D+1 (late clicks).
CLICKS_FOR_EVENTS = days_around(-1, 1)
#: the impressions the recalibration of D is carried to D's statistics on: those of D-1, the newest,
#: in neither D-1's statistics nor D's.
IMPRESSIONS_OF_STATISTICS_SHIFT = days_around(-CALIBRATION_STATS_LAG_DAYS, -CALIBRATION_STATS_LAG_DAYS)
#: the statistics a labelled day is re-scored with to recalibrate: those of the day after it, the
#: newest whose window leaves the day itself out (no row sees its own click).
STATISTICS_OF_LABELLED_DAY = days_around(
    CALIBRATION_LAG_DAYS - CALIBRATION_STATS_LAG_DAYS, CALIBRATION_LAG_DAYS - CALIBRATION_STATS_LAG_DAYS
)


@dataclass(frozen=True)
class Calendar:
    """The daily partitions from the first day with logs, and the history window of the features."""

    start_date: str
    feature_window_days: int

    def __post_init__(self) -> None:
        if self.feature_window_days < 1:
            raise ValueError(f"the feature window is at least one day, not {self.feature_window_days}")

    @property
    def partitions(self) -> DailyPartitionsDefinition:
        return DailyPartitionsDefinition(start_date=self.start_date, timezone="UTC")

    @property
    def history_window(self) -> TimeWindowPartitionMapping:
        """``ad_events`` of the W days whose labels were final when day D began: D-1-W … D-2.

        The labels of D-1 are not: its clicks keep arriving during D (the attribution window). The
        ad server ranking on day D can only know what this window holds, so training uses the
        same window and serving has no skew. Days before the first partition are skipped.
        """
        return days_around(-(self.feature_window_days + 1), -2)

    @property
    def recalibration_days(self) -> TimeWindowPartitionMapping:
        """The labelled days the champion is recalibrated on before it serves D: the newest whose
        labels were final when D began (D-2, the end of the history window), and the
        :data:`POOLED_DAYS` - 1 before it, pooled for a version that did not serve D-2."""
        return days_around(-CALIBRATION_LAG_DAYS - POOLED_DAYS + 1, -CALIBRATION_LAG_DAYS)

    @property
    def statistics_of_recalibration(self) -> TimeWindowPartitionMapping:
        """The statistics each recalibration day is re-scored with: those of the day after it (D-1
        for D-2), the newest whose window leaves it out; and D's own, the calibration is carried to."""
        return days_around(-CALIBRATION_STATS_LAG_DAYS - POOLED_DAYS + 1, 0)

    def daily_check(self, **kwargs: Any) -> Callable[[Callable[..., Any]], AssetChecksDefinition]:
        """``@asset_check(**kwargs)`` on these daily partitions: a check of each day of its asset.

        A partitioned asset check is a preview feature of Dagster 1.13 (the version is pinned); its
        warning is silenced here, where it is used on purpose, as for :func:`days_around`.
        """

        def decorate(function: Callable[..., Any]) -> AssetChecksDefinition:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PreviewWarning)
                return asset_check(partitions_def=self.partitions, **kwargs)(function)

        return decorate

    def keys(self) -> list[str]:
        return self.partitions.get_partition_keys()

    def upstream_days(self, mapping: TimeWindowPartitionMapping, key: str) -> list[str]:
        """The days ``mapping`` maps day ``key`` to (what an asset of day ``key`` reads through it),
        oldest first; those outside the partitions are skipped."""
        partitions = self.partitions
        upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
            partitions.subset_with_partition_keys([key]), partitions, partitions
        )
        return sorted(upstream.partitions_subset.get_partition_keys())

    def downstream_days(self, mapping: TimeWindowPartitionMapping, key: str) -> list[str]:
        """The days whose asset reads day ``key`` through ``mapping``, oldest first; those outside
        the partitions (after today) are skipped."""
        partitions = self.partitions
        return sorted(
            mapping.get_downstream_partitions_for_partitions(
                partitions.subset_with_partition_keys([key]), partitions, partitions
            ).get_partition_keys()
        )

    def days_up_to(self, key: str, days: int) -> list[str]:
        """The ``days`` daily partitions ending with ``key``, oldest first (those before the first
        day skipped): the window a plot of the recent days shows, read through the same partition
        mapping as the loop's other windows."""
        if days < 1:
            raise ValueError(f"a window of days is at least one day, not {days}")
        return self.upstream_days(days_around(-(days - 1), 0), key)

    def completed_by(self, mappings: Sequence[TimeWindowPartitionMapping], key: str | None) -> str | None:
        """The day whose newest input through ``mappings`` (each a window of the days an asset
        reads) is day ``key``: the day that ``key`` completes, None outside the partitions."""
        return self.neighbour(key, -max(mapping.end_offset for mapping in mappings))

    def neighbour(self, key: str | None, offset: int) -> str | None:
        """The daily partition ``offset`` places from ``key``, or None outside the partitions."""
        keys = self.keys()
        if key not in keys:
            return None
        index = keys.index(key) + offset
        return keys[index] if 0 <= index < len(keys) else None
