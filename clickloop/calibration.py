"""Recalibration of the champion: Platt scaling of its scores on the newest labelled day (pooled
with the days before it while the version has not served one).

A CTR model's ranking ages slower than its probabilities. The champion's predictions drift away from
the observed click rate when the traffic moves (a CTR drop), and even on a stable stream, because the
champion ranks the traffic its own history features are then computed from. Every day the loop fits
``p = sigmoid(a · logit(s) + b)`` on the newest day whose labels are final, where ``s`` is the
champion's score of each impression exactly as the ad server computed it (the day's point-in-time
features at the reference slot, corrected for downsampling) and the label is the click. The served
probability is then calibrated to the impressions as they were shown (their slots, their ads), which is
what the online calibration measures and what a CTR × bid auction needs.

The day is scored with the newest statistics that do not hold it. The ad server serves D with the
statistics of D-8 … D-2; D-2's own features were computed with those of D-10 … D-4, and when the
history moves (the champion's own traffic entering the window, the days before a drift leaving it) a
calibration fitted on them is two days of statistics behind what it corrects. Re-featured with the
statistics of D-1 (D-9 … D-3, D-2 left out: no row sees its own click), it is one day behind. Replayed
offline on runs at 20,000 requests a day (weekday already out of the model's inputs): on ``ctr_drop``
the served calibration's days outside 1 ± 0.1 from the third day on went from two (0.886, 0.926) to
none (largest deviation 0.067); on ``stable``, from its third served day on, the mean absolute
deviation from 1 fell from 0.043 to 0.033.

A version's first two served days are fitted on traffic it did not serve (D-2 was its predecessor's),
and one such day is a poor guide to its level on its own traffic: the model is under-confident at
the top of its scores (on the random policy's days its raw score over true CTR falls from 1.47 in the
lowest fifth of scores to 1.02 in the highest), the champion serves mostly that top (a mean score of
0.18 in its highest fifth against 0.067 on random traffic), and a single day's few hundred clicks
leave the Platt slope that extrapolates there uncertain (1.18 on one random day, 1.06 on the next).
So a version that did not serve D-2 is fitted on up to :data:`POOLED_DAYS` labelled days pooled, from
its validation day on (never a training day). Replayed offline on the stable stream (the served
day's predictions against the simulator's true CTR): 0.923 and 0.803 with D-2 alone became 0.959
and 0.904 at 5,000 requests a day, 0.926 and 0.895 became 0.956 and 0.932 at 20,000.

The fitted map is then carried to the statistics D is served with. The calibration is fitted on
scores computed with D-1's statistics, the ad server scores D with D's, and the two differ by a day
of history: while a version's own traffic fills the window the statistics move fast (on the stable
stream at 20,000 requests a day the prior CTR went from 0.030 to 0.036, 0.049, 0.062 and 0.075 on
every other day from the champion's first served day, as the days it ranked entered: it shows each ad
where it suits the request, so every ad's CTR on its traffic is higher), and the model's scores with
them. So the intercept is moved until the impressions of D-1 (the newest, held by neither statistics
file: no row counts itself), scored with D's entity statistics, get the calibrated total they get
with D-1's (:func:`to_serving_statistics`; the user's activity stays that of D-1's statistics, as a
day's own activity would count the row itself). A version's own impressions when it served enough of
them, since its scores move with the ads it chose. On the stable stream over 14 served days, run
before and after: at 20,000 requests a day the champion's third to fifth served days went from
1.112, 1.065, 1.030 to 1.063, 1.023, 0.995 (the shift -0.056, -0.047, -0.038 in the logit, within
± 0.015 from the sixth day on, once the window is the champion's), every day now within 1 ± 0.1
(0.954–1.063); at 5,000 the third day went from 0.964 to 1.059, the others by 0.025 or less, every
day within 1 ± 0.1 before and after (0.913–1.074). The shift measured on D-1 falls short of the one
on D's own impressions (scores up 4.8 % against 9.5 % on that third day at 20,000): D's were chosen
by the ranking with D's statistics.

Platt scaling, not isotonic regression: two numbers, monotone (the champion's ranking of one ad against
another at the same bid is kept), stable on a day of a few hundred clicks, and small enough to live in
the registry as tags of the model version. With too few clicks the day keeps the identity
(:data:`MIN_CLICKS`). A calibration is only ever applied to the version it was fitted for.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xgboost as xgb

from clickloop.contract import IMPRESSION_ID, LABEL, MODEL_VERSION, POSITION, require_columns
from clickloop.features import USER_ACTIVITY, FeatureSpec, add_features, events_features_sql
from clickloop.metrics import calibration as calibration_ratio
from clickloop.model import predict_ctr, served_version
from clickloop.storage import StoragePath, Warehouse, parquet_sql

#: the ad server serving day D is recalibrated on D-2, the newest day whose labels are final when D
#: begins: a version's own traffic calibrates it from its third served day on
CALIBRATION_LAG_DAYS = 2
#: D-2's rows are scored with the statistics of D-1, the newest that leave D-2 out
CALIBRATION_STATS_LAG_DAYS = CALIBRATION_LAG_DAYS - 1
#: a version that has not served D-2 is fitted on up to this many labelled days (D-4 … D-2) of the
#: traffic before it, pooled, those from its validation day on (never its training days)
POOLED_DAYS = 3
#: fewer clicks than this on the day: the fit is not trusted, the identity is kept
MIN_CLICKS = 30
#: the impressions the intercept is carried to the serving statistics on are a version's own when
#: it served at least this many of them on D-1, else every impression of the day
MIN_SHIFT_ROWS = 1_000
#: scores are clipped away from 0 and 1 before the logit
_EPS = 1e-6
#: registry tags of a model version: the calibration fitted at its promotion (on the test day; never
#: changed afterwards, so a served day can always be re-scored) and the newest daily one (to read)
PROMOTION_TAGS = "calibration."
DAILY_TAGS = "daily_calibration."


@dataclass(frozen=True)
class Calibration:
    """``p = sigmoid(slope · logit(score) + intercept)`` for one model version."""

    model_version: str
    slope: float = 1.0
    intercept: float = 0.0
    #: the labelled day it was fitted on ("" for the identity)
    fitted_on: str = ""
    rows: int = 0
    clicks: int = 0
    #: Σ score / Σ clicks on the fitting day, before and after the fit (1 is calibrated; the fit's
    #: own intercept, before it is carried to the serving day's statistics)
    calibration_before: float | None = None
    calibration_after: float | None = None
    #: how far the intercept was moved to the statistics of the serving day (included in it)
    statistics_shift: float = 0.0

    @classmethod
    def identity(cls, model_version: str) -> Calibration:
        return cls(model_version)

    @property
    def is_identity(self) -> bool:
        return self.slope == 1.0 and self.intercept == 0.0

    def apply(self, scores: np.ndarray) -> np.ndarray:
        if self.is_identity:
            return np.asarray(scores, dtype=np.float64)
        return _sigmoid(self.slope * _logit(scores) + self.intercept)

    def to_tags(self, prefix: str) -> dict[str, str]:
        """The registry tags (strings) of this calibration, under ``prefix``."""
        return {f"{prefix}{k}": json.dumps(v) for k, v in asdict(self).items() if k != "model_version"}

    @classmethod
    def from_tags(cls, model_version: str, tags: Mapping[str, str], prefix: str) -> Calibration | None:
        """The calibration stored under ``prefix`` in a version's tags, None when there is none."""
        values = {k[len(prefix) :]: json.loads(v) for k, v in tags.items() if k.startswith(prefix)}
        return cls(model_version=model_version, **values) if values else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        return cls(**json.loads(text))

    def summary(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "slope": round(self.slope, 4),
            "intercept": round(self.intercept, 4),
            "fitted_on": self.fitted_on or "-",
            "rows": self.rows,
            "clicks": self.clicks,
            "calibration_before": None
            if self.calibration_before is None
            else round(self.calibration_before, 3),
            "calibration_after": None if self.calibration_after is None else round(self.calibration_after, 3),
            "statistics_shift": round(self.statistics_shift, 4),
        }


def fit_platt(
    scores: np.ndarray, labels: np.ndarray, model_version: str, day: str, min_clicks: int = MIN_CLICKS
) -> Calibration:
    """The Platt map from ``scores`` to ``labels`` (the identity, with the day's figures, when the
    day has fewer than ``min_clicks`` clicks or only one class)."""
    s = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1.0 - _EPS)
    y = np.asarray(labels, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape} vs {y.shape}")
    clicks = int(y.sum())
    before = _ratio(y, s)
    if clicks < min_clicks or clicks == len(y):
        return Calibration(
            model_version, fitted_on=day, rows=len(y), clicks=clicks, calibration_before=before
        )
    from sklearn.linear_model import LogisticRegression  # (a second to import: only when fitting)

    logits = _logit(s).reshape(-1, 1)
    # (nearly) unregularised maximum likelihood: two parameters, thousands of rows
    fit = LogisticRegression(C=1e6, solver="lbfgs", max_iter=200).fit(logits, y)
    slope, intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope <= 0.0:
        # a flat or inverted fit says the scores carry no signal today: never invert the ranking
        return Calibration(
            model_version, fitted_on=day, rows=len(y), clicks=clicks, calibration_before=before
        )
    fitted = Calibration(model_version, slope, intercept, day, len(y), clicks, before)
    return Calibration(**{**asdict(fitted), "calibration_after": _ratio(y, fitted.apply(s))})


def _logit(scores: np.ndarray) -> np.ndarray:
    """``log(s / (1 - s))`` of scores clipped away from 0 and 1."""
    s = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(s / (1.0 - s))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _ratio(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    value = calibration_ratio(labels, probabilities)
    return None if math.isnan(value) else float(value)


def at_reference_slot(table: pa.Table, spec: FeatureSpec) -> pa.Table:
    """The rows as the ad server scored them: every impression at the reference slot."""
    if not spec.has_position or spec.reference_position is None or POSITION not in table.column_names:
        return table
    column = pa.array(
        np.full(table.num_rows, spec.reference_position), type=table.schema.field(POSITION).type
    )
    return table.set_column(table.column_names.index(POSITION), POSITION, column)


def served_scores(booster: xgb.Booster, table: pa.Table, spec: FeatureSpec) -> np.ndarray:
    """The uncalibrated score the ad server computed for each impression of a features table."""
    return predict_ctr(booster, at_reference_slot(table, spec))


def served_by(table: pa.Table, logged_version: str) -> pa.Table:
    """The impressions ``logged_version`` served, when it served enough clicks to fit on; else every
    impression of the day (a version not yet served is calibrated on the traffic of its predecessor)."""
    if MODEL_VERSION not in table.column_names:
        return table
    own = table.filter(pc.equal(table.column(MODEL_VERSION), logged_version))
    return own if (pc.sum(own.column(LABEL)).as_py() or 0) >= MIN_CLICKS else table


def rescored_features(
    con: duckdb.DuckDBPyConnection, spec: FeatureSpec, events_path: StoragePath, stats_path: StoragePath
) -> pa.Table:
    """A labelled day's events with the features of a newer statistics file (that of the day after
    it: :data:`CALIBRATION_STATS_LAG_DAYS`), as the table :func:`fit_day` fits on."""
    return con.sql(events_features_sql(con, spec, events_path, stats_path)).to_arrow_table()


def impressions_features(
    con: duckdb.DuckDBPyConnection, spec: FeatureSpec, impressions_path: StoragePath, stats_path: StoragePath
) -> pa.Table:
    """A day's impressions (labelled or not) with the features of a statistics file, in their order."""
    needed = [*spec.input_columns, IMPRESSION_ID, *((POSITION,) if spec.has_position else ())]
    present = con.sql(f"SELECT * FROM {parquet_sql(impressions_path)} LIMIT 0").columns
    columns = list(dict.fromkeys([*needed, *(c for c in (MODEL_VERSION,) if c in present)]))
    require_columns(present, columns, str(impressions_path))
    rows = f"SELECT {', '.join(columns)} FROM {parquet_sql(impressions_path)}"
    return add_features(con, spec, rows, stats_path)


def _scores_and_labels(
    booster: xgb.Booster, tables: Sequence[pa.Table], spec: FeatureSpec
) -> tuple[np.ndarray, np.ndarray]:
    """The served scores and the clicks of the rows of ``tables``, one after the other."""
    scores = np.concatenate([served_scores(booster, t, spec) for t in tables])
    labels = np.concatenate(
        [t.column(LABEL).to_numpy(zero_copy_only=False).astype(np.float64) for t in tables]
    )
    return scores, labels


def fit_day(
    booster: xgb.Booster, table: pa.Table, spec: FeatureSpec, model_version: str, day: str
) -> Calibration:
    """Fit a version's calibration on one labelled day of features (the impressions it served)."""
    own = served_by(table, served_version(model_version))
    return fit_platt(*_scores_and_labels(booster, [own], spec), model_version, day)


def fit_serving_day(
    booster: xgb.Booster,
    spec: FeatureSpec,
    model_version: str,
    days: Sequence[str],
    features_of: Callable[[str], pa.Table],
    first_unseen_day: str | None,
) -> Calibration:
    """A version's calibration for a serving day, from the labelled ``days`` before it (newest
    first; ``features_of(day)`` re-scores one). The newest day alone when the version served it
    (or the log does not name the serving version); else (its first served days: the traffic is
    its predecessor's) the days from ``first_unseen_day`` (its validation day: never a training
    day) on, pooled, up to :data:`POOLED_DAYS`. A day of another policy's traffic tells the
    version's level on its own traffic less well than a day of its own (it shows the ads that policy
    chose), and a single one adds its count's noise on top."""
    newest = features_of(days[0])
    own = served_by(newest, served_version(model_version))
    if own is not newest or MODEL_VERSION not in newest.column_names:
        return fit_platt(*_scores_and_labels(booster, [own], spec), model_version, days[0])
    pooled = [d for d in days[1:POOLED_DAYS] if first_unseen_day is not None and d >= first_unseen_day]
    tables = [newest, *(features_of(d) for d in pooled)]
    fitted_on = ", ".join(sorted([days[0], *pooled]))  # each day named: ``days`` may skip one
    return fit_platt(*_scores_and_labels(booster, tables, spec), model_version, fitted_on)


# --- Carried to the serving day's statistics ------------------------------------------------------


def to_serving_statistics(
    fitted: Calibration, fitted_scores: np.ndarray, serving_scores: np.ndarray
) -> Calibration:
    """``fitted`` with its intercept moved so that the same impressions, scored with the statistics
    of the serving day (``serving_scores``), get the calibrated total they get with the statistics it
    was fitted with (``fitted_scores``). The identity (no fit) is kept as it is."""
    fitted_scores, serving_scores = (np.asarray(s, dtype=np.float64) for s in (fitted_scores, serving_scores))
    if fitted_scores.shape != serving_scores.shape:
        raise ValueError(f"scores of different rows: {fitted_scores.shape} vs {serving_scores.shape}")
    if fitted.is_identity or len(fitted_scores) == 0:
        return fitted
    target = float(fitted.apply(fitted_scores).sum())
    x = fitted.slope * _logit(serving_scores)
    intercept = fitted.intercept
    for _ in range(50):  # Newton on a monotone function of one variable: a few steps
        p = _sigmoid(x + intercept)
        gap = float(p.sum()) - target
        if abs(gap) <= 1e-10 * target:
            break
        intercept -= gap / float((p * (1.0 - p)).sum())
    shift = intercept - fitted.intercept
    return Calibration(**{**asdict(fitted), "intercept": intercept, "statistics_shift": shift})


def with_user_activity_of(table: pa.Table, other: pa.Table) -> pa.Table:
    """``table`` with the user-activity feature of ``other`` (the same impressions, in the same order,
    featured with another statistics file)."""
    if not table.column(IMPRESSION_ID).equals(other.column(IMPRESSION_ID)):
        raise ValueError("the two feature tables hold different impressions or a different order")
    if USER_ACTIVITY not in table.column_names:
        return table
    index = table.column_names.index(USER_ACTIVITY)
    return table.set_column(index, USER_ACTIVITY, other.column(USER_ACTIVITY))


def carried_to_serving_statistics(
    booster: xgb.Booster, spec: FeatureSpec, fitted: Calibration, fitted_with: pa.Table, served_with: pa.Table
) -> Calibration:
    """``fitted`` carried to the serving day's statistics on D-1's impressions, featured with the
    statistics it was fitted with (``fitted_with``) and with the serving day's (``served_with``, the
    user's activity taken from ``fitted_with``); the version's own impressions when it served at least
    :data:`MIN_SHIFT_ROWS` of them."""
    served_with = with_user_activity_of(served_with, fitted_with)
    if MODEL_VERSION in fitted_with.column_names:
        mine = pc.fill_null(
            pc.equal(fitted_with.column(MODEL_VERSION), served_version(fitted.model_version)), False
        )
        if (pc.sum(mine).as_py() or 0) >= MIN_SHIFT_ROWS:
            fitted_with, served_with = fitted_with.filter(mine), served_with.filter(mine)
    return to_serving_statistics(
        fitted, served_scores(booster, fitted_with, spec), served_scores(booster, served_with, spec)
    )


# --- Stored per serving day -----------------------------------------------------------------------

#: the daily table of calibrations: partition D holds the one the ad server applies on day D
SERVING_CALIBRATION = "serving_calibration"


def write_serving_calibration(warehouse: Warehouse, day: str, fitted: Calibration) -> StoragePath:
    return warehouse.write_partition(SERVING_CALIBRATION, day, pa.Table.from_pylist([asdict(fitted)]))


def read_serving_calibration(warehouse: Warehouse, day: str) -> Calibration:
    return Calibration(**warehouse.read_partition(SERVING_CALIBRATION, day).to_pylist()[0])


def calibration_for(warehouse: Warehouse, day: str, model_version: str) -> Calibration | None:
    """The newest calibration of ``model_version`` for serving ``day`` (a partition on or before it),
    None when the version has none there (a version promoted since: its registry tags hold the
    calibration fitted at promotion)."""
    for key in reversed(warehouse.partition_keys(SERVING_CALIBRATION)):
        if key > day:
            continue
        stored = read_serving_calibration(warehouse, key)
        if stored.model_version == model_version:
            return stored
    return None


def newest_from_tags(model_version: str, tags: Mapping[str, str]) -> Calibration:
    """What a service that serves "now" applies: the newest daily calibration of the version, else
    the one fitted at its promotion, else the identity."""
    return (
        Calibration.from_tags(model_version, tags, DAILY_TAGS)
        or Calibration.from_tags(model_version, tags, PROMOTION_TAGS)
        or Calibration.identity(model_version)
    )


def calibration_served(
    warehouse: Warehouse, day: str, model_version: str, tags: Mapping[str, str]
) -> Calibration:
    """The calibration the ad server applies to ``model_version`` on ``day``: the newest daily one on
    or before the day, else the one fitted at the version's promotion, else the identity. The same
    answer for the same day whenever it is asked (the skew check re-scores a served day with it)."""
    return (
        calibration_for(warehouse, day, model_version)
        or Calibration.from_tags(model_version, tags, PROMOTION_TAGS)
        or Calibration.identity(model_version)
    )
