"""Drift: is today's traffic like the traffic the model learned from? (Evidently)

An Evidently report of day D against a reference sample: data drift of every model feature (a
``ValueDrift`` each, and ``DriftedColumnsCount`` for their share), prediction drift (what the serving
policy predicted) and target drift (the click label). These are the metrics Evidently's
``DataDriftPreset`` generates, without the preset's summary table: that table computes every
column's drift a third time and renders it again, a third of the report's time (8.8 s against 5.8 s
on a scenario day here), and each column's drift, method, score and distribution stay in the report. The reference is the training window of the model that served D when it is known,
else the window of the latest training set, else the ``reference_days`` days before D; only days
before D that exist are used (:func:`choose_reference`). Current and reference are fixed-size
samples (a seeded hash of the impression id, so a rerun picks the same rows and the cost does not
grow with traffic). ``weekday`` is left out: day D has one weekday by construction.

Scores follow Evidently's methods: distances (Wasserstein, Jensen-Shannon: higher = more drift) for
the features and the prediction by default; a two-proportion z-test for the click label (the score
is a p-value, lower = more drift), because a distance barely moves when a 3 % CTR halves. Whether a
score counts as drift is Evidently's own verdict (its per-column drift test), stored next to the
score, so the sensors need not know each method's direction.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from clickloop.contract import IMPRESSION_ID, LABEL, PREDICTED_CTR
from clickloop.features import WEEKDAY, FeatureSpec
from clickloop.model import read_model_manifest, served_version
from clickloop.presentation import REPORTS_FOLDER, figure_png, markdown_table, new_figure
from clickloop.split import FEATURES, read_split_manifest
from clickloop.storage import Warehouse, atomic_write_text, parquet_list_sql, parquet_sql, seeded_sample_sql

if TYPE_CHECKING:  # Evidently takes seconds to import: only where a report is computed
    from evidently.core.report import Snapshot

#: Left out of the drift report: one value per day by construction (always "drifts").
DRIFT_EXCLUDED: tuple[str, ...] = (WEEKDAY,)
#: Label of a missing categorical value (so a surge of nulls shows as drift).
MISSING = "(missing)"
REPORT_NAME = "drift_report.html"
_VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
_DRIFTED_COLUMNS_COUNT = "evidently:metric_v2:DriftedColumnsCount"


@dataclass(frozen=True)
class DriftParams:
    #: rows sampled from day D and from the reference (each): bounds the cost
    sample_rows: int = 20_000
    #: seed of the sampling hash
    seed: int = 7
    #: days before D used as reference when no training window is known
    reference_days: int = 7
    #: share of drifted features that makes the dataset drift
    drift_share: float = 0.5
    #: Evidently drift method for the served prediction (None: Evidently's default)
    prediction_method: str | None = None
    #: Evidently drift method for the click label (default: two-proportion z-test)
    target_method: str | None = "z"


@dataclass(frozen=True)
class DriftColumns:
    """What the report compares: the model's features (but weekday), the served prediction (when
    the logs carry one) and the label."""

    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    prediction: str | None = PREDICTED_CTR
    target: str | None = LABEL

    @classmethod
    def of(cls, spec: FeatureSpec, has_prediction: bool = True) -> DriftColumns:
        return cls(
            categorical=tuple(c for c in spec.categorical if c not in DRIFT_EXCLUDED),
            numeric=tuple(c for c in spec.numeric if c not in DRIFT_EXCLUDED),
            prediction=PREDICTED_CTR if has_prediction else None,
        )

    @property
    def features(self) -> tuple[str, ...]:
        return self.categorical + self.numeric


@dataclass(frozen=True)
class ReferenceChoice:
    """The partitions day D is compared with, and where the choice came from."""

    keys: tuple[str, ...]
    source: str


def choose_reference(
    day: str,
    partition_keys: Sequence[str],
    available: Sequence[str],
    training_keys: Sequence[str] | None = None,
    fallback_days: int = 7,
    training_source: str = "training window",
) -> ReferenceChoice:
    """The reference partitions of ``day``.

    The training window (``training_keys``) when it is known and lies wholly before ``day``: the
    days that exist of it. Otherwise the ``fallback_days`` partition keys just before ``day`` (by
    position in ``partition_keys``, no date arithmetic) that exist. Never ``day`` itself or a later
    day; an empty choice (the first day) has source ``"none"``.
    """
    if fallback_days < 1:
        raise ValueError(f"fallback_days must be >= 1, not {fallback_days}")
    present = set(available)
    if training_keys and max(training_keys) < day:
        keys = tuple(k for k in sorted(training_keys) if k in present)
        if keys:
            return ReferenceChoice(keys, training_source)
    keys_list = list(partition_keys)
    if day not in keys_list:
        raise ValueError(f"{day} is not a partition key")
    position = keys_list.index(day)
    before = keys_list[max(0, position - fallback_days) : position]
    keys = tuple(k for k in before if k in present)
    if keys:
        return ReferenceChoice(keys, f"{fallback_days} days before")
    return ReferenceChoice((), "none")


def known_training_window(
    warehouse: Warehouse, served_versions: Sequence[str]
) -> tuple[tuple[str, ...], str] | None:
    """The training days of the model that served the day (the model manifest, when its version
    is among ``served_versions``), else those of the latest training set (the split manifest);
    None when neither was materialized."""
    try:
        model = read_model_manifest(warehouse)
        if served_version(model.version) in served_versions:
            return tuple(model.split.train), f"training window of {served_version(model.version)}"
    except FileNotFoundError:
        pass
    try:
        split = read_split_manifest(warehouse).split
    except FileNotFoundError:
        return None
    return tuple(split.train), "training window of the latest training set"


def reference_for(
    warehouse: Warehouse,
    con: duckdb.DuckDBPyConnection,
    day: str,
    partition_keys: Sequence[str],
    fallback_days: int,
) -> ReferenceChoice:
    """The reference of ``day`` given what the warehouse holds: the served versions of the day,
    the manifests of the model and the training set, and the ``features`` partitions present."""
    (path,) = warehouse.require_partition_paths(FEATURES, [day])
    columns = con.sql(f"SELECT * FROM {parquet_sql(path)} LIMIT 0").columns
    served = (
        [str(v) for (v,) in con.sql(f"SELECT DISTINCT model_version FROM {parquet_sql(path)}").fetchall()]
        if "model_version" in columns
        else []
    )
    window = known_training_window(warehouse, served)
    return choose_reference(
        day,
        partition_keys,
        [k for k in partition_keys if warehouse.has_partition(FEATURES, k)],
        training_keys=window[0] if window else None,
        fallback_days=fallback_days,
        training_source=window[1] if window else "training window",
    )


# --- Samples ------------------------------------------------------------------------------------


def sample_sql(paths: Sequence[Path], n: int, seed: int, columns: DriftColumns) -> str:
    """A deterministic uniform sample of at most ``n`` rows of the given partitions: the rows with
    the smallest seeded hash of the impression id (the same rows on every run, whatever the file
    order or thread count). Categoricals and the label become strings, numbers doubles."""
    select = []
    wanted = [*columns.features, *(c for c in (columns.prediction, columns.target) if c)]
    for name in dict.fromkeys(wanted):
        if name in columns.categorical:
            select.append(f"coalesce(CAST({name} AS VARCHAR), '{MISSING}') AS {name}")
        elif name == columns.target:
            select.append(f"CAST({name} AS VARCHAR) AS {name}")
        else:
            select.append(f"CAST({name} AS DOUBLE) AS {name}")
    order = seeded_sample_sql(IMPRESSION_ID, n, seed)
    return f"SELECT {', '.join(select)} FROM {parquet_list_sql(paths)} {order}"


def read_sample(
    con: duckdb.DuckDBPyConnection, paths: Sequence[Path], n: int, seed: int, columns: DriftColumns
) -> pd.DataFrame:
    """The sample of :func:`sample_sql` as a pandas frame."""
    return con.sql(sample_sql(paths, n, seed, columns)).df()


def cap_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most ``max_rows`` rows of ``frame``: a seeded uniform sample when it has more."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, not {max_rows}")
    if len(frame) <= max_rows:
        return frame
    return frame.sample(n=max_rows, random_state=seed).sort_index()


# --- Drift (Evidently) --------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnDrift:
    """Evidently's verdict on one column: the score, its method and threshold, and whether the
    column drifted (the method knows whether high or low scores mean drift)."""

    column: str
    score: float
    method: str
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftSummary:
    """What one drift report found; ``snapshot`` is the Evidently run (for the HTML)."""

    features: tuple[ColumnDrift, ...]
    prediction: ColumnDrift | None
    target: ColumnDrift | None
    share_drifted_columns: float
    current_rows: int
    reference_rows: int
    suppressed_warnings: int = 0
    snapshot: Snapshot | None = field(default=None, repr=False, compare=False)

    @property
    def drifted(self) -> tuple[ColumnDrift, ...]:
        """The drifted feature columns, highest score first."""
        return tuple(sorted((c for c in self.features if c.drifted), key=lambda c: -c.score))

    def html(self) -> str:
        if self.snapshot is None:
            raise ValueError("this summary has no Evidently snapshot")
        return self.snapshot.get_html_str(as_iframe=False)


@contextmanager
def quiet_evidently() -> Iterator[list[warnings.WarningMessage]]:
    """Keep Evidently's (and scipy's, pandas') warnings and INFO chatter out of the run logs; the
    caught warnings are yielded so the caller can count them."""
    logger = logging.getLogger("evidently")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        logger.setLevel(level)


def _column_drifts(snapshot: Snapshot) -> tuple[dict[str, ColumnDrift], float | None]:
    """Per-column drift (ValueDrift scores + their drift tests) and DriftedColumnsCount's share,
    from the snapshot's exported dict."""
    exported = snapshot.dict()
    verdicts = {
        t["metric_config"]["metric_id"]: str(getattr(t["status"], "value", t["status"])) == "FAIL"
        for t in exported["tests"]
        if t["metric_config"]["params"].get("type") == _VALUE_DRIFT
    }
    drifts: dict[str, ColumnDrift] = {}
    share = None
    for metric in exported["metrics"]:
        config = metric["config"]
        if config["type"] == _DRIFTED_COLUMNS_COUNT:
            share = float(metric["value"]["share"])
        elif config["type"] == _VALUE_DRIFT:
            if metric["id"] not in verdicts:
                raise RuntimeError(f"Evidently gave no drift verdict for {config['column']}")
            drifts[config["column"]] = ColumnDrift(
                column=config["column"],
                score=float(metric["value"]),
                method=str(config["method"]),
                threshold=float(config["threshold"]),
                drifted=verdicts[metric["id"]],
            )
    return drifts, share


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: DriftColumns,
    params: DriftParams = DriftParams(),
) -> DriftSummary:
    """Evidently drift of ``current`` against ``reference``: ValueDrift on every feature column (and
    DriftedColumnsCount for their share), on the prediction and on the target (treated as a
    category).

    Each frame is first capped to ``params.sample_rows`` (seeded sample), so the cost is bounded
    whatever the inputs' size. Methods are Evidently's defaults unless given (the target's defaults
    to the two-proportion z-test, see the module docstring). Logs without predictions (the
    prediction column empty on either side) get no prediction drift (``prediction`` None).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    categorical, numeric = list(columns.categorical), list(columns.numeric)
    prediction, target = columns.prediction, columns.target
    features_ = [*categorical, *numeric]
    if not features_:
        raise ValueError("compute_drift needs at least one feature column")
    needed = features_ + [c for c in (prediction, target) if c is not None]
    for name, frame in (("reference", reference), ("current", current)):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} frame lacks columns {missing}")
        if frame.empty:
            raise ValueError(f"{name} frame has no rows")
    if prediction is not None and (reference[prediction].isna().all() or current[prediction].isna().all()):
        needed.remove(prediction)
        prediction = None
    reference = cap_rows(reference[needed], params.sample_rows, params.seed)
    current = cap_rows(current[needed], params.sample_rows, params.seed + 1)
    definition = DataDefinition(
        numerical_columns=[*numeric, *([prediction] if prediction else [])],
        categorical_columns=[*categorical, *([target] if target else [])],
    )
    metrics: list[Any] = [
        DriftedColumnsCount(columns=features_, drift_share=params.drift_share),
        *(ValueDrift(column=column) for column in features_),
    ]
    if prediction is not None:
        metrics.append(ValueDrift(column=prediction, method=params.prediction_method))
    if target is not None:
        metrics.append(ValueDrift(column=target, method=params.target_method))
    with quiet_evidently() as caught:
        snapshot = Report(metrics, include_tests=True).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
        drifts, share = _column_drifts(snapshot)
    columns = tuple(drifts[c] for c in features_)
    if share is None:
        share = sum(c.drifted for c in columns) / len(columns) if columns else 0.0
    return DriftSummary(
        features=columns,
        prediction=drifts.get(prediction) if prediction else None,
        target=drifts.get(target) if target else None,
        share_drifted_columns=share,
        current_rows=len(current),
        reference_rows=len(reference),
        suppressed_warnings=len(caught),
        snapshot=snapshot,
    )


def drift_markdown(summary: DriftSummary) -> str:
    """The drifted feature columns, then the prediction and the target, as a Markdown table."""
    rows = list(summary.drifted)
    rows += [c for c in (summary.prediction, summary.target) if c is not None]
    table = markdown_table(
        ["column", "score", "method", "threshold", "drifted"],
        [
            (c.column, f"{c.score:.4g}", c.method, f"{c.threshold:g}", "yes" if c.drifted else "no")
            for c in rows
        ],
        right=(1, 3),
    )
    head = (
        f"{len(summary.drifted)} of {len(summary.features)} features drifted "
        f"(share {summary.share_drifted_columns:.2f})."
    )
    return head + "\n\n" + table


def drift_png(summary: DriftSummary) -> bytes:
    """A PNG of each column's drift score (features, then prediction and target) with its
    threshold; the drifted columns in red. Scores are p-values or distances (the method is in the
    label), mostly in [0, 1]; the axis widens for a larger one."""
    columns = [*summary.features, *(c for c in (summary.prediction, summary.target) if c is not None)]
    figure = new_figure(7.0, 1.2 + 0.32 * len(columns))
    ax = figure.add_subplot(1, 1, 1)
    rows = range(len(columns))
    colors = ["tab:red" if c.drifted else "tab:blue" for c in columns]
    ax.barh(rows, [c.score for c in columns], color=colors, height=0.6)
    ax.scatter([c.threshold for c in columns], rows, marker="|", s=250, color="black", label="threshold")
    ax.set_yticks(list(rows), [f"{c.column} ({c.method})" for c in columns], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, *(c.score for c in columns), *(c.threshold for c in columns)))
    ax.set_xlabel("drift score: a distance (drifts above its threshold) or a p-value (below); red: drifted")
    ax.set_title(
        f"{len(summary.drifted)} of {len(summary.features)} features drifted "
        f"(share {summary.share_drifted_columns:.2f})"
    )
    ax.legend(loc="lower right", fontsize=8)
    return figure_png(figure)


@dataclass(frozen=True)
class DriftRow:
    """The drift scores of one day against its reference sample (what the monitoring store keeps)."""

    share_drifted_columns: float
    prediction_drift_score: float | None
    target_drift_score: float | None
    prediction_drifted: bool | None
    target_drifted: bool | None
    #: drifted feature columns: name -> {"score", "method", "threshold"}
    drifted_columns: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    reference_days: Sequence[str] = ()
    current_rows: int = 0
    reference_rows: int = 0
    report_path: str | None = None


def drift_row(summary: DriftSummary, reference: ReferenceChoice, report_path: Path | None) -> DriftRow:
    """The monitoring store's row of a drift summary."""
    prediction, target = summary.prediction, summary.target
    return DriftRow(
        share_drifted_columns=summary.share_drifted_columns,
        prediction_drift_score=prediction.score if prediction else None,
        target_drift_score=target.score if target else None,
        prediction_drifted=prediction.drifted if prediction else None,
        target_drifted=target.drifted if target else None,
        drifted_columns={
            c.column: {"score": c.score, "method": c.method, "threshold": c.threshold}
            for c in summary.drifted
        },
        reference_days=reference.keys,
        current_rows=summary.current_rows,
        reference_rows=summary.reference_rows,
        report_path=None if report_path is None else str(report_path),
    )


def report_path(warehouse: Warehouse, day: str) -> Path:
    """Where the HTML drift report of ``day`` lands."""
    return warehouse.root / REPORTS_FOLDER / "drift" / f"date={day}" / REPORT_NAME


@dataclass(frozen=True)
class DriftOutcome:
    """A day's drift report: its reference, its summary and the HTML written."""

    reference: ReferenceChoice
    summary: DriftSummary | None
    path: Path | None


def drift_of_day(
    warehouse: Warehouse,
    day: str,
    partition_keys: Sequence[str],
    columns: DriftColumns,
    params: DriftParams = DriftParams(),
    before_reading: Callable[[ReferenceChoice], None] | None = None,
) -> DriftOutcome:
    """Day D's drift against its reference: the samples, the Evidently report and its HTML
    (written atomically). ``before_reading`` is called with the reference before any partition is
    read (a caller may refuse partitions that failed their checks). No earlier day: no report."""
    (current_path,) = warehouse.require_partition_paths(FEATURES, [day])
    with warehouse.duckdb() as con:
        reference = reference_for(warehouse, con, day, partition_keys, params.reference_days)
        if not reference.keys:
            return DriftOutcome(reference, None, None)
        if before_reading is not None:
            before_reading(reference)
        reference_paths = warehouse.require_partition_paths(FEATURES, reference.keys)
        current = read_sample(con, [current_path], params.sample_rows, params.seed, columns)
        ref = read_sample(con, reference_paths, params.sample_rows, params.seed, columns)
    summary = compute_drift(ref, current, columns, params)
    path = atomic_write_text(report_path(warehouse, day), summary.html())
    return DriftOutcome(reference, summary, path)
