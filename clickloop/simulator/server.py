"""The ad server as a plain object: simulates days on demand into a landing folder.

:class:`SimulatorConfig` is everything that determines the simulated logs but the ranking policy;
:class:`AdServer` plays the server over a landing folder: a day is simulated and written once (its
manifest is written last), and later asked-for files are served from the folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from clickloop.contract import LOG_KINDS, LogKind
from clickloop.landing import list_log_files
from clickloop.simulator.allocation import ServingPlan
from clickloop.simulator.clock import as_date
from clickloop.simulator.faults import FaultRates
from clickloop.simulator.logs import manifest_path, read_manifest, write_day
from clickloop.simulator.traffic import RandomPolicy, RankingPolicy, simulate_day
from clickloop.simulator.vocabulary import SCENARIOS
from clickloop.simulator.world import Scenario, World


def check_scenario(value: str) -> str:
    """``value`` if it names a scenario, else a ValueError listing the known ones."""
    if value not in SCENARIOS:
        raise ValueError(f"unknown scenario {value!r}; expected one of {SCENARIOS}")
    return value


def check_date(value: date | str, name: str) -> str:
    """``value`` as an ISO 'YYYY-MM-DD' string; a ValueError names the setting ``name``."""
    try:
        return as_date(value).isoformat()
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def check_rate(value: float, name: str) -> float:
    """``value`` if it is a probability; a ValueError names the setting ``name``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fault rate {name}={value} must lie in [0, 1]")
    return value


@dataclass(frozen=True)
class SimulatorConfig:
    """What determines the simulated logs, but the ranking policy (dates are ISO strings)."""

    seed: int = 7
    requests_per_day: int = 50_000
    candidates_per_request: int = 32
    n_ads: int = 3_000
    n_users: int = 200_000
    n_sites: int = 300
    scenario: str = "stable"
    #: the first day the scenario changes the world; None = never
    scenario_start: str | None = None
    #: the first day with traffic
    start_date: str = "2026-10-01"
    faults: FaultRates = FaultRates()
    #: the share of requests ranked uniformly at random, with their propensity and candidates
    #: logged (0 = no exploration; :mod:`clickloop.simulator.allocation`)
    exploration_share: float = 0.0

    def __post_init__(self) -> None:
        check_scenario(self.scenario)
        if self.scenario_start is not None:
            object.__setattr__(self, "scenario_start", check_date(self.scenario_start, "scenario_start"))
        object.__setattr__(self, "start_date", check_date(self.start_date, "start_date"))
        if not 0.0 <= self.exploration_share <= 1.0:
            raise ValueError(f"exploration_share={self.exploration_share} must lie in [0, 1]")
        if not isinstance(self.faults, FaultRates):
            raise ValueError(f"faults: expected FaultRates, got {type(self.faults).__name__}")

    def as_scenario(self) -> Scenario:
        """The configured scenario (it is active from its start on)."""
        return Scenario(self.scenario, None if self.scenario_start is None else as_date(self.scenario_start))

    def settings(self) -> dict:
        """The configuration as recorded in a manifest (fault rates as ``<fault>_rate``)."""
        values = {name: value for name, value in asdict(self).items() if name != "faults"}
        return {**values, **{f"{name}_rate": rate for name, rate in asdict(self.faults).items()}}


@functools.lru_cache(maxsize=4)
def _cached_world(
    seed: int, n_users: int, n_sites: int, n_ads: int, scenario: str, scenario_start: str | None
) -> World:
    """One World per configuration and process."""
    return World(
        seed, n_users=n_users, n_sites=n_sites, n_ads=n_ads, scenario=scenario, scenario_start=scenario_start
    )


@contextlib.contextmanager
def _landing_lock(landing_dir: str | Path) -> Iterator[None]:
    """An exclusive lock on the landing folder (fcntl, released when the process dies)."""
    folder = Path(landing_dir) / "_simulator"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class AdServer:
    """Simulates ad-server days on demand into ``landing_dir``.

    ``policy_for(day)`` gives the ranking policy serving a day (e.g. the promoted champion), or
    None to serve it with the random policy.
    """

    def __init__(
        self,
        landing_dir: str | Path,
        config: SimulatorConfig | None = None,
        policy_for: Callable[[date], RankingPolicy | None] | None = None,
    ) -> None:
        self.landing_dir = Path(landing_dir)
        self.config = config if config is not None else SimulatorConfig()
        self._policy_for = policy_for

    def world(self) -> World:
        """The simulated world of this configuration (built once per process)."""
        c = self.config
        return _cached_world(c.seed, c.n_users, c.n_sites, c.n_ads, c.scenario, c.scenario_start)

    def settings(self) -> dict:
        """The whole configuration, as :meth:`settings_for` records it on days the scenario is on."""
        return self.config.settings()

    def settings_for(self, day: date | str) -> dict:
        """The settings that determine ``day``'s files (recorded in its manifest).

        A scenario does not touch the days before its start: on those days (and always under
        ``stable``) the scenario is recorded as ``stable`` without a start, so a landing folder
        simulated under ``stable`` can be continued under a scenario that starts later.
        """
        settings = self.settings()
        if not self.config.as_scenario().active(as_date(day)):
            settings.update(scenario="stable", scenario_start=None)
        return settings

    def policy(self, day: date | str) -> RankingPolicy:
        """The ranking policy serving ``day``: ``policy_for(day)`` (a policy or a
        :class:`ServingPlan` with a challenger), else the random policy; with the configured
        exploration share when there is one."""
        chosen = self._policy_for(as_date(day)) if self._policy_for is not None else None
        if chosen is None:
            chosen = RandomPolicy(prior_ctr=self.world().average_ctr)
        share = self.config.exploration_share
        if share > 0 and isinstance(chosen, ServingPlan):
            return dataclasses.replace(chosen, exploration_share=share)
        if share > 0:
            return ServingPlan(champion=chosen, exploration_share=share)
        return chosen

    def _check_served(self, day: date) -> None:
        if day < as_date(self.config.start_date):
            raise ValueError(f"no traffic on {day}: the simulator starts on {self.config.start_date}")

    def ensure_day(self, day: date | str, policy: RankingPolicy | None = None) -> bool:
        """Simulate and write ``day`` unless its manifest exists; True if it simulated now."""
        day = as_date(day)
        self._check_served(day)
        # the steps of a run (separate processes) may ask for the same day at once: one simulates
        with _landing_lock(self.landing_dir):
            return self._ensure_day_locked(day, policy)

    def _ensure_day_locked(self, day: date, policy: RankingPolicy | None) -> bool:
        settings = self.settings_for(day)
        existing = manifest_path(self.landing_dir, day)
        if existing.exists():
            recorded = json.loads(existing.read_text()).get("settings", {})
            if recorded != settings:
                raise ValueError(
                    f"{existing} was simulated with different settings; use a fresh landing_dir "
                    f"(recorded {recorded}, now {settings})"
                )
            return False
        traffic = simulate_day(
            self.world(),
            day,
            requests_per_day=self.config.requests_per_day,
            candidates_per_request=self.config.candidates_per_request,
            policy=policy if policy is not None else self.policy(day),
        )
        write_day(traffic, self.landing_dir, self.config.faults, settings=settings)
        return True

    def partition_files(self, kind: LogKind, day: date | str) -> list[Path]:
        """The landed files of partition ``day`` of ``kind``, simulating what they need first.

        Impressions need day D; clicks need days D-1 (when served) and D.
        """
        if kind not in LOG_KINDS:
            raise ValueError(f"kind must be 'impressions' or 'clicks', got {kind!r}")
        day = as_date(day)
        self._check_served(day)
        if kind == "clicks" and day - timedelta(days=1) >= as_date(self.config.start_date):
            self.ensure_day(day - timedelta(days=1))
        self.ensure_day(day)
        return list_log_files(self.landing_dir, kind, day)

    def manifest(self, day: date | str) -> dict:
        """The manifest of simulated ``day``."""
        return read_manifest(self.landing_dir, as_date(day))

    def ground_truth_ctr(self, impressions: pd.DataFrame) -> np.ndarray:
        """True click probability of logged impressions (see :meth:`World.ground_truth_ctr`)."""
        return self.world().ground_truth_ctr(impressions)

    def oracle_revenue(self, day: date | str) -> float | None:
        """Expected revenue of the oracle policy on ``day``'s requests and candidates (compare it
        with the manifest's ``expected_revenue`` of the served policy); None when the day was
        not simulated or its manifest predates the oracle."""
        path = manifest_path(self.landing_dir, as_date(day))
        if not path.exists():
            return None
        value = json.loads(path.read_text()).get("oracle_expected_revenue")
        return None if value is None else float(value)
