"""`make scenario name=rollout`: two challengers earn (or lose) their traffic on online evidence.

On a stable simulated stream whose ad server explores a share of its requests (uniformly random
rankings with their propensity and candidate sets logged), after a warm-up and a first, deliberately
modest champion (a shallow model):

1. a deliberately worse model (deep trees, full steps, no regularisation: it learns the noise) is
   trained, refused by the offline gate, and put in shadow by hand, as a person would try one; the
   rollout sensor moves it to the canary after its shadow day, and rolls it back once its canary
   revenue or CTR is below the champion's beyond the interval;
2. a better model (deeper trees than the champion's stumps) passes the gate and becomes the
   challenger; it goes through shadow and canary in the same way and is promoted when its canary is
   above the champion's beyond the interval on revenue or CTR, and below on neither.

Each step is a ``rollout_decision`` materialization requested by ``rollout_sensor`` (the runs and
their metadata are on the scenario's own instance: ``make ui`` with ``DAGSTER_HOME`` pointed at
``<data dir>/scenarios/rollout/dagster_home``). The retraining sensors are switched off (their
thresholds out of reach) so the rollout is the only thing that changes the served models. The
output puts each challenger's counterfactual estimate (from the exploration logs, before it took
any traffic) next to what it earned in canary, and what the champion earned on the same days.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dagster import RunRequest, build_resources, build_sensor_context

from assets.partitions import Calendar
from assets.rollout import ROLLOUT_DECISION
from pipelines.cli.scenario import ScenarioRun
from pipelines.rollout_sensor import ROLLOUT_SENSOR
from pipelines.settings import Settings
from resources.tracking import ModelRegistry

ROLLOUT_DEFAULTS = {"requests": 4_000, "warmup": 9, "exploration": 0.05, "canary_share": 0.5}
#: retraining thresholds out of reach: only the rollout changes the served models
NO_RETRAINING = {
    "drift_share_threshold": 1.0,
    "calibration_tolerance": 1e6,
    "normalized_entropy_tolerance": 1e6,
    "cold_start_tolerance": 1.0,
    "max_champion_age_days": 10_000,
}
_SPLIT = {"training_and_test_sets": {"config": {"train_days": 5}}}
#: the first champion: stumps, no interaction between user and ad (modest, so a better model can show)
MODEST = {
    **_SPLIT,
    "ctr_model": {"config": {"n_trials": 0, "max_depth": 1, "num_boost_round": 40, "learning_rate": 0.2}},
}
#: the deliberately worse model: deep trees, full steps, no regularisation: it learns the training
#: days' noise (the offline gate refuses it)
WORSE = {
    **_SPLIT,
    "ctr_model": {
        "config": {
            "n_trials": 0,
            "max_depth": 12,
            "num_boost_round": 30,
            "early_stopping_rounds": 30,
            "learning_rate": 1.0,
            "min_child_weight": 0.0,
            "reg_lambda": 0.0,
        }
    },
}
#: the better model: deeper trees, more rounds
BETTER = {
    **_SPLIT,
    "ctr_model": {"config": {"n_trials": 0, "max_depth": 6, "num_boost_round": 300, "learning_rate": 0.1}},
}


@dataclass
class Step:
    """One rollout decision as the scenario saw it."""

    after_day: str
    challenger: str
    action: str
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


class RolloutRun(ScenarioRun):
    """The scenario on its own instance, driven as the daemon would, plus a person's two actions."""

    def __init__(self, settings: Settings, keys: list[str]) -> None:
        super().__init__(settings, keys)
        self.steps: list[Step] = []

    def registry(self) -> ModelRegistry:
        with build_resources({"r": self.repo.get_top_level_resources()["model_registry"]}) as built:
            return built.r

    def warm_up_modest(self, warmup: int) -> None:
        """The random-policy days (every request explored) and a modest first champion."""
        for i in range(warmup + 1):
            self.runner.run("feature_stats_job", self.keys[i], echo=False)
            self.runner.run("ingest_job", self.keys[i], echo=False)
            if i > 0:
                self.runner.run("events_job", self.keys[i - 1], echo=False)
        self._train(MODEST, "first champion (modest)")
        self.runner.run("feature_stats_job", self.keys[warmup + 1], echo=False)

    def _train(self, ops: dict[str, Any], what: str) -> dict[str, Any]:
        report = self.runner.run("training_job", ops=ops, echo=False)
        if not report.success:
            raise SystemExit(f"training of the {what} failed: {report.failures}")
        gate = report.metadata.get("champion_model", {})
        print(f"  trained {what}: v{gate.get('candidate_version')} -> {gate.get('decision')}", flush=True)
        return gate

    def try_worse_challenger(self) -> str:
        """A person trains a deliberately worse model and puts it in shadow by hand (the gate
        refuses it, as it should)."""
        gate = self._train(WORSE, "deliberately worse model")
        version = str(gate["candidate_version"])
        self.registry().set_challenger(version, "shadow", "by hand")
        return version

    def train_better_challenger(self) -> str:
        gate = self._train(BETTER, "better model")
        if gate.get("decision") != "challenger":
            raise SystemExit(f"the better model did not become the challenger: {gate}")
        return str(gate["candidate_version"])

    def decide(self, key: str) -> Step | None:
        """Evaluate the rollout sensor and execute the decision it asks for."""
        sensor_def = self.repo.get_sensor_def(ROLLOUT_SENSOR)
        with build_sensor_context(
            instance=self.instance,
            repository_def=self.repo,
            resources=self.repo.get_top_level_resources(),
            sensor_name=ROLLOUT_SENSOR,
        ) as ctx:
            evaluation = sensor_def.evaluate_tick(ctx)
        for request in evaluation.run_requests or []:
            assert isinstance(request, RunRequest)
            if request.run_key in self.launched:
                continue
            self.launched.add(request.run_key)
            report = self.runner.run("rollout_job", tags=request.tags, echo=False)
            if not report.success:
                raise SystemExit(f"rollout_job failed after {key}: {report.failures}")
            numbers = report.metadata[ROLLOUT_DECISION]
            step = Step(
                key, str(numbers["challenger_version"]), numbers["action"], numbers["reason"], numbers
            )
            self.steps.append(step)
            print(f"  {key}: v{step.challenger} {step.action}: {step.reason}", flush=True)
            return step
        return None

    def serve_until(self, first: int, last: int, until: set[str]) -> int:
        """Serve days ``first``.. until a decision in ``until`` is taken; the day index after it."""
        for i in range(first, last + 1):
            self.serve(self.keys[i])
            step = self.decide(self.keys[i])
            if step is not None and step.action in until:
                return i + 1
        raise SystemExit(f"no {sorted(until)} decision by {self.keys[last]}")


def rollout_settings(base: Settings, requests: int, exploration: float, canary_share: float) -> Settings:
    # one process per run: the scenario drives every run in this process anyway
    settings = replace(base, data_dir=base.data_dir / "scenarios" / "rollout", executor="in_process")
    settings = settings.with_resource("simulator", requests_per_day=requests, exploration_share=exploration)
    settings = settings.with_resource(
        "rollout",
        enabled=True,
        canary_share=canary_share,
        shadow_days=1,
        min_canary_days=1,
        max_canary_days=4,
        offpolicy_days=30,
    )
    return settings.with_resource("retrain_policy", **NO_RETRAINING)


def run_rollout(
    base: Settings, warmup: int, requests: int, exploration: float, canary_share: float
) -> list[Step]:
    """The whole scenario; its decisions in order."""
    calendar = Calendar(base.start_date, base.feature_window_days)
    keys = calendar.keys()[: warmup + 40]
    run = RolloutRun(rollout_settings(base, requests, exploration, canary_share), keys)
    run.warm_up_modest(warmup)
    day = warmup + 1
    run.serve(keys[day])
    run.try_worse_challenger()
    day = run.serve_until(day + 1, len(keys) - 2, {"rollback", "promote"})
    run.train_better_challenger()
    run.serve_until(day, len(keys) - 2, {"rollback", "promote"})
    return run.steps


def summary(steps: list[Step]) -> str:
    """Per challenger: the counterfactual estimate before any traffic, what it earned in canary,
    what the champion earned on the same days, and the decision."""
    lines = [
        "| challenger | counterfactual rev/1000 req (SNIPS, 95 %) | champion counterfactual | "
        "canary rev/1000 req | champion rev/1000 req (same days) | difference [95 %] | decision |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    estimates: dict[str, dict[str, Any]] = {}
    for step in steps:
        if step.action == "to_canary":
            estimates[step.challenger] = step.numbers
        if step.action not in ("promote", "rollback"):
            continue
        est = estimates.get(step.challenger, {})
        n = step.numbers

        def interval(prefix: str, numbers: dict[str, Any] = est) -> str:
            value = numbers.get(prefix)
            if value is None:
                return "-"
            return f"{value:.1f} [{numbers[prefix + '_low']:.1f}, {numbers[prefix + '_high']:.1f}]"

        lines.append(
            f"| v{step.challenger} | {interval('offpolicy_challenger_snips_revenue_per_1000')} | "
            f"{interval('offpolicy_champion_snips_revenue_per_1000')} | "
            f"{n.get('challenger_revenue_per_1000_requests', float('nan')):.1f} | "
            f"{n.get('champion_revenue_per_1000_requests', float('nan')):.1f} | "
            f"{interval('diff_revenue_per_1000_requests', n)} | {step.action} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warmup-days", type=int, default=ROLLOUT_DEFAULTS["warmup"])
    parser.add_argument("--requests-per-day", type=int, default=ROLLOUT_DEFAULTS["requests"])
    parser.add_argument("--exploration-share", type=float, default=ROLLOUT_DEFAULTS["exploration"])
    parser.add_argument("--canary-share", type=float, default=ROLLOUT_DEFAULTS["canary_share"])
    parser.add_argument("--json", type=Path, help="also write the decisions to this file")
    args = parser.parse_args(argv)
    steps = run_rollout(
        Settings.from_env(),
        args.warmup_days,
        args.requests_per_day,
        args.exploration_share,
        args.canary_share,
    )
    print("\nrollout decisions\n")
    for step in steps:
        print(f"- after {step.after_day}: v{step.challenger} {step.action} — {step.reason}")
    print()
    print(summary(steps))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([step.__dict__ for step in steps], indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
