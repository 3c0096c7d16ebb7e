"""The parameter search of the CTR model, and the rule that keeps it honest.

A small Optuna (TPE) search over :data:`TUNED`: the configured parameters are always the first
trial (trial 0). Every trial is scored on the same validation day, and the trial of lowest
validation log loss takes over only when it beats trial 0 by more than ``min_gain_se`` standard
errors of the paired per-row difference (:func:`choose_trial`). A validation day of a few thousand
rows ranks configurations by its noise as much as by their quality, and it is the champion's own
traffic, whose log loss is not the revenue of a ranking: on the ``new_campaigns`` scenario at 3,000
requests a day, trials that won by 0.00013 and 0.0013 of log loss per row served 1.5-3.4 points of
oracle capture below the configured parameters they replaced (README, *Retraining variance*).

The trainer is a parameter (:func:`search_with`), so one machine and a Dask cluster search alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import optuna

TUNED = ("max_depth", "learning_rate", "min_child_weight", "subsample", "colsample_bytree", "reg_lambda")


def suggest_params(trial: optuna.Trial) -> dict[str, Any]:
    """The search space of the tuned parameters."""
    return {
        "max_depth": trial.suggest_int("max_depth", 3, 8),
        "learning_rate": trial.suggest_float("learning_rate", 0.03, 0.3, log=True),
        "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 500.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.6, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.5, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 0.1, 20.0, log=True),
    }


class Fitted(Protocol):
    """What a trainer returns for a trial (:class:`clickloop.training.TrainedBooster`)."""

    valid_logloss: float
    best_iteration: int
    seconds: float


F = TypeVar("F", bound=Fitted)


class NonFiniteModelError(ArithmeticError):
    """Training gave a non-finite loss or non-finite predictions: the model must not be saved."""


@dataclass(frozen=True)
class TrialResult:
    """One trial: its parameters, validation log loss, best iteration and training time."""

    number: int
    params: dict[str, Any]
    valid_logloss: float
    best_iteration: int
    seconds: float


@dataclass(frozen=True)
class SearchChoice:
    """The trial whose parameters the final model takes, and the evidence: the best trial's mean
    per-row validation log-loss gain over the configured parameters (trial 0) and its standard
    error, paired on the same validation rows."""

    trial: int
    best_trial: int
    gain: float
    standard_error: float
    min_gain_se: float

    def text(self) -> str:
        if self.best_trial == 0:
            return "the configured parameters (trial 0) had the lowest validation log loss"
        verdict = "took" if self.trial == self.best_trial else "kept the configured parameters: not"
        return (
            f"{verdict} trial {self.best_trial}: validation log loss lower by {self.gain:.5f} per row, "
            f"{self.gain / self.standard_error if self.standard_error > 0 else math.inf:.1f} standard "
            f"errors (needs > {self.min_gain_se:g})"
        )


def choose_trial(losses: Mapping[int, np.ndarray], min_gain_se: float) -> SearchChoice:
    """The configured parameters (trial 0) unless the trial of lowest mean validation loss beats
    them by more than ``min_gain_se`` standard errors of the paired per-row difference."""
    best = min(losses, key=lambda n: float(losses[n].mean()))
    if best == 0 or 0 not in losses:
        return SearchChoice(best, best, 0.0, 0.0, min_gain_se)
    difference = losses[0].astype(np.float64) - losses[best]
    gain = float(difference.mean())
    se = float(difference.std(ddof=1) / math.sqrt(len(difference))) if len(difference) > 1 else math.inf
    chosen = best if gain > min_gain_se * se else 0
    return SearchChoice(chosen, best, gain, se, min_gain_se)


def search_with(
    fit: Callable[[dict[str, Any], int], F],
    losses_of: Callable[[F], np.ndarray],
    start: Mapping[str, Any],
    n_trials: int,
    num_boost_round: int,
    seed: int,
    min_gain_se: float,
) -> tuple[dict[str, Any], list[TrialResult], SearchChoice | None]:
    """The search with any trainer: ``fit(params, num_boost_round)`` and the per-row
    validation losses ``losses_of(trained)`` (one machine, or a Dask cluster, see
    :mod:`clickloop.dask_training`).

    Returns the chosen parameters (``start`` when ``n_trials`` is 0, when every trial diverged, or
    when no trial beats it beyond the noise: :func:`choose_trial`), every trial, and the choice.
    """
    if n_trials == 0:
        return dict(start), [], None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({k: start[k] for k in TUNED})
    results: list[TrialResult] = []
    losses: dict[int, np.ndarray] = {}

    def objective(trial: optuna.Trial) -> float:
        params = {**start, **suggest_params(trial)}
        try:
            fitted = fit(params, num_boost_round)
        except NonFiniteModelError as diverged:  # a diverging trial is skipped, not the search
            raise optuna.TrialPruned(str(diverged)) from diverged
        results.append(
            TrialResult(trial.number, params, fitted.valid_logloss, fitted.best_iteration, fitted.seconds)
        )
        losses[trial.number] = losses_of(fitted).astype(np.float32)
        return fitted.valid_logloss

    study.optimize(objective, n_trials=n_trials)
    if not losses:  # every trial diverged: the configured parameters, as without a search
        return dict(start), results, None
    choice = choose_trial(losses, min_gain_se)
    chosen = next(r.params for r in results if r.number == choice.trial)
    return {**start, **chosen}, results, choice


def trials_markdown(trials: Sequence[TrialResult], choice: SearchChoice | None = None) -> str:
    """The trials as a table, the chosen one marked, and why it was chosen."""
    lines = ["| trial | valid log loss | best iter | " + " | ".join(TUNED) + " |"]
    lines.append("|---:|---:|---:|" + "---:|" * len(TUNED))
    for t in trials:
        values = " | ".join(f"{t.params[k]:.4g}" for k in TUNED)
        mark = " (chosen)" if choice is not None and t.number == choice.trial else ""
        lines.append(f"| {t.number}{mark} | {t.valid_logloss:.5f} | {t.best_iteration} | {values} |")
    if choice is not None:
        lines += ["", f"Chosen: {choice.text()}."]
    return "\n".join(lines)
