"""Time in the simulator: UTC days, epoch milliseconds and their ISO-8601 text.

Every timestamp inside the simulator is an ``int64`` of milliseconds since the Unix epoch (UTC);
the logged frames hold tz-aware UTC datetimes at millisecond resolution and the written logs hold
ISO-8601 text like ``2026-10-01T08:15:02.123Z``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd

MS_PER_DAY = 86_400_000
MS_PER_HOUR = 3_600_000
EPOCH = date(1970, 1, 1)


def as_date(value: date | str) -> date:
    """Return ``value`` as a date; strings must be ISO ``YYYY-MM-DD`` (a Dagster partition key)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"expected a date 'YYYY-MM-DD', got {value!r}") from exc


def day_start_ms(day: date) -> int:
    """Milliseconds since the Unix epoch at midnight UTC of ``day``."""
    return (day - EPOCH).days * MS_PER_DAY


@functools.cache
def _time_of_day_strings() -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables ``HH:MM:SS`` for every second of a day and ``.mmmZ`` for every millisecond."""
    seconds = np.array(
        [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86_400)], dtype=object
    )
    millis = np.array([f".{m:03d}Z" for m in range(1000)], dtype=object)
    return seconds, millis


def iso_ms(ts_ms: np.ndarray) -> np.ndarray:
    """Format epoch milliseconds as ISO-8601 UTC strings like ``2026-10-01T08:15:02.123Z``.

    Vectorised with lookup tables: about ten times faster than pandas' own ISO formatting.
    """
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    if ts_ms.size == 0:
        return np.array([], dtype=object)
    days, ms_of_day = np.divmod(ts_ms, MS_PER_DAY)
    seconds, millis = np.divmod(ms_of_day, 1000)
    unique_days, day_pos = np.unique(days, return_inverse=True)
    prefixes = np.array(
        [(EPOCH + timedelta(days=int(d))).isoformat() + "T" for d in unique_days], dtype=object
    )
    second_strings, milli_strings = _time_of_day_strings()
    return prefixes[day_pos] + second_strings[seconds] + milli_strings[millis]


def to_datetime(ts_ms: np.ndarray) -> pd.DatetimeIndex:
    """Epoch milliseconds as a tz-aware (UTC) millisecond-resolution datetime index."""
    return pd.DatetimeIndex(np.asarray(ts_ms, dtype="datetime64[ms]")).tz_localize("UTC")


def epoch_ms(parsed: pd.Series) -> np.ndarray:
    """Epoch milliseconds of a tz-aware datetime series."""
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64)


def timestamps_ms(values: pd.Series | Sequence) -> np.ndarray:
    """Epoch milliseconds of datetimes (naive = UTC, or tz-aware) or ISO-8601 strings."""
    series = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        parsed = pd.to_datetime(series, utc=True)
    else:
        parsed = pd.to_datetime(series, utc=True, format="ISO8601")
    if parsed.isna().any():
        raise ValueError("ts has missing values; ground truth needs every impression's time")
    return epoch_ms(parsed)
