"""The ad-server simulator as a Dagster resource: the embedded default log source of clickloop.

The simulator itself is :mod:`clickloop.simulator` (no Dagster); :class:`AdServerSimulator` holds
its configuration as resource fields and delegates every call to a
:class:`clickloop.simulator.AdServer`.
"""

from dataclasses import fields
from datetime import date
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import ValidationInfo, field_validator

from clickloop.online import OracleTruth
from clickloop.simulator import (
    SCENARIOS,
    AdServer,
    FaultRates,
    RandomPolicy,
    RankingPolicy,
    SimulatorConfig,
    World,
    candidate_frame,
    draw_context,
    read_manifest,
    simulate_day,
    write_day,
)
from clickloop.simulator.server import check_date, check_rate, check_scenario
from resources.landing import LogSource
from resources.serving import ChampionServing

# The resource, and the simulator's names other modules still import from here (re-exported for
# now: they move to clickloop.simulator).
__all__ = [
    "SCENARIOS",
    "AdServerSimulator",
    "FaultRates",
    "RandomPolicy",
    "World",
    "candidate_frame",
    "draw_context",
    "read_manifest",
    "simulate_day",
    "write_day",
]

_DEFAULTS = SimulatorConfig()
_FAULTS = FaultRates()
_FAULT_NAMES = tuple(f.name for f in fields(FaultRates))
_CONFIG_NAMES = tuple(f.name for f in fields(SimulatorConfig) if f.name != "faults")


class AdServerSimulator(LogSource):
    """The embedded log source: simulates ad-server days on demand into ``landing_dir``."""

    seed: int = _DEFAULTS.seed
    requests_per_day: int = _DEFAULTS.requests_per_day
    candidates_per_request: int = _DEFAULTS.candidates_per_request
    n_ads: int = _DEFAULTS.n_ads
    n_users: int = _DEFAULTS.n_users
    n_sites: int = _DEFAULTS.n_sites
    scenario: str = _DEFAULTS.scenario
    scenario_start: str | None = _DEFAULTS.scenario_start
    start_date: str = _DEFAULTS.start_date
    duplicate_impression_rate: float = _FAULTS.duplicate_impression
    duplicate_click_rate: float = _FAULTS.duplicate_click
    orphan_click_rate: float = _FAULTS.orphan_click
    click_before_impression_rate: float = _FAULTS.click_before_impression
    malformed_line_rate: float = _FAULTS.malformed_line
    wrong_type_rate: float = _FAULTS.wrong_type
    null_field_rate: float = _FAULTS.null_field
    #: the share of requests ranked uniformly at random with their propensity and candidates logged
    exploration_share: float = _DEFAULTS.exploration_share
    #: where the champion comes from; None serves with the random policy forever
    serving: ChampionServing | None = None

    @field_validator("scenario", mode="before")
    @classmethod
    def _known_scenario(cls, value: str) -> str:
        """Reject unknown scenario names (an ``EnvVar`` is checked once Dagster resolves it)."""
        return value if isinstance(value, dg.EnvVar) else check_scenario(value)

    @field_validator("scenario_start", "start_date", mode="before")
    @classmethod
    def _iso_date(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Dates are ISO 'YYYY-MM-DD' (an ``EnvVar`` is checked once Dagster resolves it)."""
        if value is None or isinstance(value, dg.EnvVar):
            return value
        return check_date(value, info.field_name)

    @field_validator(*(f"{name}_rate" for name in _FAULT_NAMES), mode="before")
    @classmethod
    def _rate(cls, value: float, info: ValidationInfo) -> float:
        """Fault rates are probabilities (an ``EnvVar`` is checked once Dagster resolves it)."""
        return value if isinstance(value, dg.EnvVar) else check_rate(value, info.field_name)

    def fault_rates(self) -> FaultRates:
        """The configured fault rates."""
        return FaultRates(**{name: getattr(self, f"{name}_rate") for name in _FAULT_NAMES})

    def _server(self) -> AdServer:
        config = SimulatorConfig(
            **{name: getattr(self, name) for name in _CONFIG_NAMES}, faults=self.fault_rates()
        )
        serving = self.serving
        return AdServer(self.landing_dir, config, serving.policy_for if serving is not None else None)

    def world(self) -> World:
        """The simulated world of this configuration (built once per process)."""
        return self._server().world()

    def settings(self, day: date | str | None = None) -> dict:
        """What determines a day's files but the landing folder: the whole configuration, or
        what ``day``'s manifest records (the scenario only when it is active on ``day``)."""
        server = self._server()
        return server.settings() if day is None else server.settings_for(day)

    def policy_for(self, day: date | str) -> RankingPolicy:
        """The ranking policy serving ``day``: the champion when one has been promoted (and
        ``serving`` is set), the random policy until then."""
        return self._server().policy(day)

    def ensure_day(self, day: date | str, policy: RankingPolicy | None = None) -> bool:
        """Simulate and write ``day`` unless its manifest exists; True if it simulated now."""
        return self._server().ensure_day(day, policy)

    def partition_files(self, kind: Literal["impressions", "clicks"], day: date | str) -> list[Path]:
        """The landed files of partition ``day`` of ``kind``, simulating what they need first."""
        return self._server().partition_files(kind, day)

    def manifest(self, day: date | str) -> dict:
        """The manifest of simulated ``day``."""
        return self._server().manifest(day)

    def ground_truth_ctr(self, impressions: pd.DataFrame) -> np.ndarray:
        """True click probability of logged impressions (see :meth:`World.ground_truth_ctr`)."""
        return self._server().ground_truth_ctr(impressions)

    def ground_truth(self, rows: pa.Table) -> np.ndarray:
        """True click probability of logged rows (a features or events table)."""
        return np.asarray(self.ground_truth_ctr(rows.to_pandas()), dtype=np.float64)

    def oracle_revenue(self, day: date | str) -> float | None:
        """Expected revenue of the oracle policy on ``day``; None when it was not simulated."""
        return self._server().oracle_revenue(day)

    def oracle_truth(self, day: str) -> OracleTruth | None:
        """The oracle's expected revenue of ``day`` and the served policy's, from its manifest."""
        oracle = self.oracle_revenue(day)
        if oracle is None:
            return None
        manifest = self.manifest(day)
        served = manifest.get("expected_revenue")
        return OracleTruth(
            float(oracle), None if served is None else float(served), manifest.get("policy_version")
        )
