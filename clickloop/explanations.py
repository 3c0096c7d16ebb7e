"""Global explanations of a model: mean |SHAP value| per feature (XGBoost's ``pred_contribs``).

XGBoost computes exact tree SHAP values itself (``Booster.predict(..., pred_contribs=True)``): per
row, one contribution per feature in log-odds plus the bias, adding up to the margin. Their mean
absolute value over a sample of test rows ranks the features by how much they move predictions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import xgboost as xgb

from clickloop.model import model_features, model_frame_for
from clickloop.presentation import figure_png, new_figure

#: test rows explained for the summary (tree SHAP costs about a prediction per feature)
DEFAULT_SHAP_ROWS = 5_000


def mean_abs_contributions(
    booster: xgb.Booster, table: pa.Table, sample_rows: int = DEFAULT_SHAP_ROWS, seed: int = 0
) -> pd.Series:
    """Mean |contribution| per feature over a sample of ``table``'s rows, largest first."""
    if table.num_rows > sample_rows:
        rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, sample_rows, replace=False))
        table = table.take(pa.array(rows))
    frame = model_frame_for(booster, table)
    contributions = booster.predict(xgb.DMatrix(frame, enable_categorical=True), pred_contribs=True)
    names, _ = model_features(booster)
    values = np.abs(np.asarray(contributions, dtype=np.float64)[:, :-1]).mean(axis=0)
    return pd.Series(values, index=names, name="mean_abs_shap").sort_values(ascending=False)


def shap_summary_png(importance: pd.Series, title: str) -> bytes:
    """A horizontal bar chart of :func:`mean_abs_contributions`, the largest on top."""
    figure = new_figure(6.5, max(3.0, 0.3 * len(importance) + 1.2))
    ax = figure.add_subplot(1, 1, 1)
    ordered = importance.iloc[::-1]
    ax.barh(list(ordered.index), ordered.to_numpy(), color="tab:blue")
    ax.set_xlabel("mean |SHAP value| (log-odds)")
    ax.set_title(title)
    return figure_png(figure)


def shap_markdown(importance: pd.Series) -> str:
    lines = ["| feature | mean abs SHAP |", "|---|---:|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in importance.items()]
    return "\n".join(lines)
