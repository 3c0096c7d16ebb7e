"""Does every feature earn its place? A permutation ablation on the test day.

For each model input, the test day's column is shuffled (its link to the click broken, its
distribution kept) and the model scores the day again; the normalized entropy lost is what the model
draws from that feature. A feature whose shuffle costs less than :data:`MIN_NE_GAIN` is flagged: it
does not improve the model, yet it costs its computation, its storage and a surface for drift and
skew. Beside it, what the feature costs the model: the trees' splits on it and its share of the gain
(from :func:`clickloop.training.feature_importance`).

Retraining without each feature would measure the same question more exactly, at one training per
feature; the shuffle needs one prediction per feature and repetition, on a sample of the day.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import xgboost as xgb

from clickloop.contract import LABEL
from clickloop.metrics import normalized_entropy
from clickloop.model import model_frame_for, predict_frame
from clickloop.presentation import markdown_table
from clickloop.training import feature_importance

#: A feature whose shuffle costs less NE than this (0.2 % of a typical NE) does not improve the model.
MIN_NE_GAIN = 0.002
#: Shuffles per feature (their mean is reported, and their spread).
REPEATS = 3
#: Rows of the test day the ablation scores (a seeded sample beyond it).
MAX_ROWS = 200_000


@dataclass(frozen=True)
class Ablation:
    """NE of the model on the day, and per feature what shuffling it costs."""

    base_ne: float
    rows: int
    table: pd.DataFrame  # feature, ne_shuffled, ne_gain, ne_gain_spread, splits, gain_share, flagged

    @property
    def flagged(self) -> list[str]:
        return self.table.loc[self.table["flagged"], "feature"].tolist()


def feature_ablation(
    booster: xgb.Booster,
    frame: pd.DataFrame,
    labels: np.ndarray,
    importance: pd.DataFrame | None = None,
    *,
    seed: int = 7,
    repeats: int = REPEATS,
    min_gain: float = MIN_NE_GAIN,
    max_rows: int = MAX_ROWS,
) -> Ablation:
    """Shuffle each column of ``frame`` (the model frame of the test day) ``repeats`` times and
    score again; ``importance`` (feature, splits, gain_share) joins what each feature costs."""
    labels = np.asarray(labels, dtype=np.float64)
    if len(frame) != len(labels) or len(frame) == 0:
        raise ValueError(
            f"the ablation needs rows and one label per row ({len(frame)} rows, {len(labels)} labels)"
        )
    rng = np.random.default_rng(seed)
    if len(frame) > max_rows:
        keep = np.sort(rng.choice(len(frame), max_rows, replace=False))
        frame, labels = frame.iloc[keep].reset_index(drop=True), labels[keep]
    base = normalized_entropy(labels, predict_frame(booster, frame))
    rows = []
    for feature in frame.columns:
        scores = []
        for _ in range(repeats):
            shuffled = frame.copy(deep=False)
            shuffled[feature] = frame[feature].to_numpy()[rng.permutation(len(frame))]
            if isinstance(frame[feature].dtype, pd.CategoricalDtype):
                shuffled[feature] = pd.Categorical(shuffled[feature], dtype=frame[feature].dtype)
            scores.append(normalized_entropy(labels, predict_frame(booster, shuffled)))
        gains = np.asarray(scores) - base
        rows.append((feature, float(np.mean(scores)), float(gains.mean()), float(gains.std())))
    table = pd.DataFrame(rows, columns=["feature", "ne_shuffled", "ne_gain", "ne_gain_spread"])
    costs = (
        importance.set_index("feature")[["splits", "gain_share"]]
        if importance is not None
        else pd.DataFrame(columns=["splits", "gain_share"])
    )
    table = table.join(costs, on="feature")
    table[["splits", "gain_share"]] = table[["splits", "gain_share"]].fillna(0)
    table["flagged"] = table["ne_gain"] < min_gain
    table = table.sort_values("ne_gain", ascending=False, ignore_index=True)
    return Ablation(float(base), len(frame), table)


def ablation_markdown(ablation: Ablation, min_gain: float = MIN_NE_GAIN) -> str:
    """The table the evaluation shows: NE lost per shuffled feature, its cost, and the verdict."""
    rows: Sequence[Sequence[object]] = [
        (
            f"`{r.feature}`",
            f"{r.ne_gain:+.4f} ± {r.ne_gain_spread:.4f}",
            int(r.splits),
            f"{r.gain_share:.1%}",
            "does not improve NE" if r.flagged else "",
        )
        for r in ablation.table.itertuples()
    ]
    head = (
        f"NE on {ablation.rows:,} test rows: {ablation.base_ne:.4f}. NE lost when a feature is shuffled "
        f"(mean ± spread of {REPEATS}); flagged below {min_gain:g}.\n\n"
    )
    return head + markdown_table(["feature", "NE lost", "splits", "gain share", "verdict"], rows)


def ablate_test_set(booster: xgb.Booster, test: pa.Table, **kwargs: object) -> Ablation:
    """:func:`feature_ablation` of a model on its test set (a features table with the label)."""
    frame = model_frame_for(booster, test)
    labels = test.column(LABEL).to_numpy()
    return feature_ablation(booster, frame, labels, feature_importance(booster), **kwargs)  # type: ignore[arg-type]
