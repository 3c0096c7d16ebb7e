"""The one time axis of the loop: daily partitions of UTC days."""

from __future__ import annotations

import os

from dagster import DailyPartitionsDefinition

#: First day with logs. Partition definitions are fixed when the code location loads, so this is read
#: from the environment at import time (``CLICKLOOP_START_DATE``), not from run config.
START_DATE = os.getenv("CLICKLOOP_START_DATE", "2026-10-01")

daily_partitions = DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC")
