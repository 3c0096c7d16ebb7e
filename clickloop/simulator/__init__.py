"""A deterministic ad-server simulator: the embedded default log source of clickloop.

The simulator owns a hidden *world* (users, sites, ads and the true click-through rate of every
impression, :mod:`~clickloop.simulator.world`) and plays an ad server inside it
(:mod:`~clickloop.simulator.traffic`). Each simulated day is written to a landing folder exactly
as a real ad server would hand its logs over (:mod:`~clickloop.simulator.logs`), with injected
dirt whose every instance the day's manifest counts (:mod:`~clickloop.simulator.faults`).
:class:`AdServer` (:mod:`~clickloop.simulator.server`) simulates the days a reader asks for.

A day's output depends only on (seed, world and scenario settings, day, ranking policy): the
per-day random streams are spawned from ``np.random.SeedSequence([seed, day.toordinal()])``.
Nothing here depends on Dagster: ``resources.simulator`` wraps :class:`AdServer` as a resource.
"""

from clickloop.simulator.clock import as_date, iso_ms
from clickloop.simulator.faults import FaultRates
from clickloop.simulator.logs import clicks_path, impressions_path, manifest_path, read_manifest, write_day
from clickloop.simulator.server import AdServer, SimulatorConfig
from clickloop.simulator.traffic import (
    CANDIDATE_FIELDS,
    CLICK_FIELDS,
    IMPRESSION_FIELDS,
    DayTraffic,
    RandomPolicy,
    RankingPolicy,
    RequestContext,
    candidate_frame,
    day_streams,
    draw_candidates,
    draw_context,
    oracle_expected_revenue,
    rank_top_two,
    simulate_day,
)
from clickloop.simulator.vocabulary import (
    CATEGORIES,
    COUNTRIES,
    DEVICES,
    OPERATING_SYSTEMS,
    POSITION_FACTOR,
    SCENARIOS,
    SEGMENTS,
    TARGET_CTR,
)
from clickloop.simulator.world import Scenario, World

__all__ = [
    "CANDIDATE_FIELDS",
    "CATEGORIES",
    "CLICK_FIELDS",
    "COUNTRIES",
    "DEVICES",
    "IMPRESSION_FIELDS",
    "OPERATING_SYSTEMS",
    "POSITION_FACTOR",
    "SCENARIOS",
    "SEGMENTS",
    "TARGET_CTR",
    "AdServer",
    "DayTraffic",
    "FaultRates",
    "RandomPolicy",
    "RankingPolicy",
    "RequestContext",
    "Scenario",
    "SimulatorConfig",
    "World",
    "as_date",
    "candidate_frame",
    "clicks_path",
    "day_streams",
    "draw_candidates",
    "draw_context",
    "impressions_path",
    "iso_ms",
    "manifest_path",
    "oracle_expected_revenue",
    "rank_top_two",
    "read_manifest",
    "simulate_day",
    "write_day",
]
