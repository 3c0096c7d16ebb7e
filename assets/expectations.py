"""Great Expectations suites on the raw and joined logs, run as blocking Dagster asset checks.

Three suites guard the data that training is built from: ``raw_impressions``, ``raw_clicks`` and
``ad_events``. Each suite is a plain function of the partition's ``[start, end)`` UTC bounds that
returns a ``great_expectations.ExpectationSuite``; :func:`validate` runs any suite against a pandas
DataFrame and returns a small :class:`SuiteOutcome`. Neither needs Dagster, so tests and notebooks
call them directly.

The asset checks read one partition through the :class:`~resources.warehouse.Warehouse`, validate
it and report every expectation (✅/❌, unexpected rows, examples) as Markdown in the UI. They are
blocking with severity ERROR: a failed suite stops the downstream assets of the run, so a model is
never trained on a partition that failed its contract.

What blocks and what does not:

* Hard contracts (no ``mostly``): identifiers present, ``position`` in {1, 2}, ``bid_cpc > 0``,
  ``predicted_ctr`` a probability, one row per impression in ``ad_events``, ``clicked`` in {0, 1}
  and consistent with ``click_id``, no click before its impression. A single violation is a bug in
  the code upstream (parsing, quarantine or the join), not noise in the logs.
* Tolerant rules (``mostly=0.999``): timestamps inside the partition and prices inside the plausible
  range. A real log holds a handful of stray lines (log rotation around midnight, one odd price);
  a systematic bug (a whole file of the wrong day, prices logged in cents) moves far more than
  0.1 % of the rows and fails.
* The daily CTR band [0.1 %, 30 %] is wide on purpose: a real change in user response passes and
  is left to drift monitoring; a broken join (CTR 0 or 1) fails.
"""

import copy
import datetime as dt
import functools
import math
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import great_expectations as gx
import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.data_context import AbstractDataContext
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.expectations.expectation import Expectation
from great_expectations.expectations.row_conditions import Column

from assets.partitions import daily_partitions
from resources.warehouse import Warehouse

# --- Thresholds -------------------------------------------------------------------------------

#: Ad slots on a page.
POSITIONS: tuple[int, ...] = (1, 2)
#: Plausible price per click, in currency units. A price logged in cents is 100x too high and fails.
BID_CPC_MIN: float = 0.01
BID_CPC_MAX: float = 20.0
#: Plausible daily click-through rate: a broken join (CTR 0 or 1) fails, a real drop does not.
CTR_MIN: float = 0.001
CTR_MAX: float = 0.3
#: Share of rows that must follow a tolerant rule; the rest are stray log lines.
STRAY_ROWS_MOSTLY: float = 0.999
#: How many unexpected values each expectation keeps as examples.
EXAMPLE_COUNT: int = 5

# --- Column contracts (kept independent of the asset modules on purpose) ---------------------

RAW_IMPRESSION_COLUMNS: tuple[str, ...] = (
    "impression_id",
    "ts",
    "request_id",
    "user_id",
    "user_segment",
    "ad_id",
    "campaign_id",
    "advertiser_id",
    "ad_category",
    "site_id",
    "site_category",
    "device_type",
    "os",
    "country",
    "position",
    "bid_cpc",
    "model_version",
    "predicted_ctr",
    "source_file",
    "line_number",
)
RAW_CLICK_COLUMNS: tuple[str, ...] = (
    "click_id",
    "impression_id",
    "ts",
    "source_file",
    "line_number",
)
AD_EVENT_COLUMNS: tuple[str, ...] = tuple(
    c for c in RAW_IMPRESSION_COLUMNS if c not in ("source_file", "line_number")
) + ("clicked", "click_id", "click_ts", "click_delay_s")

#: Builds a suite from the partition's [start, end) bounds.
SuiteBuilder = Callable[[dt.datetime, dt.datetime], gx.ExpectationSuite]

_IMPRESSION_KEYS: tuple[str, ...] = ("impression_id", "request_id", "user_id", "ad_id", "ts")
_CLICK_KEYS: tuple[str, ...] = ("click_id", "impression_id", "ts")


# --- Suites -----------------------------------------------------------------------------------


def _utc_bounds(start: dt.datetime, end: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The partition bounds as timezone-aware UTC datetimes; naive or inverted bounds are errors."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError(f"partition bounds must be timezone-aware, got {start!r} and {end!r}")
    start_utc, end_utc = start.astimezone(dt.timezone.utc), end.astimezone(dt.timezone.utc)
    if not start_utc < end_utc:
        raise ValueError(f"partition start {start_utc} is not before its end {end_utc}")
    return start_utc, end_utc


def named_expectation(name: str, description: str, expectation: Expectation) -> Expectation:
    """Give an expectation a stable short name (in ``meta``) and a sentence for the UI."""
    expectation.meta = {**(expectation.meta or {}), "name": name}
    expectation.description = description
    return expectation


def _columns_present(columns: Sequence[str]) -> Expectation:
    """Every contract column exists; extra columns are allowed."""
    return named_expectation(
        "columns_present",
        "every contract column is present (extra columns allowed)",
        gx.expectations.ExpectTableColumnsToMatchSet(column_set=list(columns), exact_match=False),
    )


def _not_null(column: str) -> Expectation:
    """No null in ``column`` (no tolerance: the raw assets quarantine lines without ids)."""
    return named_expectation(
        f"{column}_not_null",
        f"`{column}` is never null",
        gx.expectations.ExpectColumnValuesToNotBeNull(column=column),
    )


def _ts_in_partition(column: str, start: dt.datetime, end: dt.datetime) -> Expectation:
    """``column`` inside ``[start, end)`` for all but a handful of stray rows (nulls ignored)."""
    return named_expectation(
        f"{column}_in_partition",
        f"`{column}` in [{start.isoformat()}, {end.isoformat()}) "
        f"for ≥ {STRAY_ROWS_MOSTLY:.1%} of rows",
        gx.expectations.ExpectColumnValuesToBeBetween(
            column=column,
            min_value=start,
            max_value=end,
            strict_max=True,
            mostly=STRAY_ROWS_MOSTLY,
        ),
    )


def _position_in_slots() -> Expectation:
    """``position`` is one of the page's ad slots."""
    return named_expectation(
        "position_in_slots",
        f"`position` in {set(POSITIONS)}",
        gx.expectations.ExpectColumnValuesToBeInSet(column="position", value_set=list(POSITIONS)),
    )


def raw_impressions_suite(start: dt.datetime, end: dt.datetime) -> gx.ExpectationSuite:
    """Expectations on one day of typed impressions, ``ts`` in ``[start, end)`` UTC.

    Duplicated ``impression_id``s are expected in the raw log (they are removed in ``ad_events``),
    so there is no uniqueness rule here.
    """
    start, end = _utc_bounds(start, end)
    return gx.ExpectationSuite(
        name="raw_impressions",
        expectations=[
            _columns_present(RAW_IMPRESSION_COLUMNS),
            named_expectation(
                "has_rows",
                "at least one impression",
                gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
            ),
            *(_not_null(c) for c in _IMPRESSION_KEYS),
            _ts_in_partition("ts", start, end),
            _position_in_slots(),
            named_expectation(
                "bid_cpc_positive",
                "`bid_cpc` > 0",
                gx.expectations.ExpectColumnValuesToBeBetween(
                    column="bid_cpc", min_value=0, strict_min=True
                ),
            ),
            named_expectation(
                "bid_cpc_plausible",
                f"`bid_cpc` in [{BID_CPC_MIN}, {BID_CPC_MAX}] per click for "
                f"≥ {STRAY_ROWS_MOSTLY:.1%} of rows (prices logged in cents fail)",
                gx.expectations.ExpectColumnValuesToBeBetween(
                    column="bid_cpc",
                    min_value=BID_CPC_MIN,
                    max_value=BID_CPC_MAX,
                    mostly=STRAY_ROWS_MOSTLY,
                ),
            ),
            named_expectation(
                "predicted_ctr_probability",
                "`predicted_ctr` in [0, 1] where logged",
                gx.expectations.ExpectColumnValuesToBeBetween(
                    column="predicted_ctr", min_value=0, max_value=1
                ),
            ),
        ],
    )


def raw_clicks_suite(start: dt.datetime, end: dt.datetime) -> gx.ExpectationSuite:
    """Expectations on one day of typed clicks (partitioned by the click's own ``ts``)."""
    start, end = _utc_bounds(start, end)
    return gx.ExpectationSuite(
        name="raw_clicks",
        expectations=[
            _columns_present(RAW_CLICK_COLUMNS),
            *(_not_null(c) for c in _CLICK_KEYS),
            _ts_in_partition("ts", start, end),
        ],
    )


def ad_events_suite(start: dt.datetime, end: dt.datetime) -> gx.ExpectationSuite:
    """Expectations on one day of impressions joined to their clicks, one row per impression."""
    start, end = _utc_bounds(start, end)
    return gx.ExpectationSuite(
        name="ad_events",
        expectations=[
            _columns_present(AD_EVENT_COLUMNS),
            named_expectation(
                "has_rows",
                "at least one event",
                gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
            ),
            named_expectation(
                "impression_id_unique",
                "one row per `impression_id` (duplicates removed)",
                gx.expectations.ExpectColumnValuesToBeUnique(column="impression_id"),
            ),
            *(_not_null(c) for c in (*_IMPRESSION_KEYS, "clicked")),
            _ts_in_partition("ts", start, end),
            _position_in_slots(),
            named_expectation(
                "clicked_binary",
                "`clicked` in {0, 1}",
                gx.expectations.ExpectColumnValuesToBeInSet(column="clicked", value_set=[0, 1]),
            ),
            named_expectation(
                "click_id_when_clicked",
                "`click_id` is set on every clicked row",
                gx.expectations.ExpectColumnValuesToNotBeNull(
                    column="click_id", row_condition=Column("clicked") == 1
                ),
            ),
            named_expectation(
                "no_click_id_when_not_clicked",
                "`click_id` is null on every row not clicked",
                gx.expectations.ExpectColumnValuesToBeNull(
                    column="click_id", row_condition=Column("clicked") == 0
                ),
            ),
            named_expectation(
                "click_delay_not_negative",
                "`click_delay_s` ≥ 0 where there is a click",
                gx.expectations.ExpectColumnValuesToBeBetween(column="click_delay_s", min_value=0),
            ),
            named_expectation(
                "daily_ctr_plausible",
                f"daily CTR (mean of `clicked`) in [{CTR_MIN:.1%}, {CTR_MAX:.0%}]",
                gx.expectations.ExpectColumnMeanToBeBetween(
                    column="clicked", min_value=CTR_MIN, max_value=CTR_MAX
                ),
            ),
        ],
    )


# --- Running a suite --------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectationOutcome:
    """How one expectation of a suite fared on one batch.

    ``unexpected_count`` / ``unexpected_percent`` are None for expectations on the whole table or
    on an aggregate (they have an ``observed_value`` instead); the percent is of non-null values.
    """

    name: str
    expectation_type: str
    column: str | None
    description: str
    success: bool
    unexpected_count: int | None
    unexpected_percent: float | None
    observed_value: Any
    unexpected_examples: tuple[Any, ...]
    mostly: float | None
    error: str | None = None


@dataclass(frozen=True)
class SuiteOutcome:
    """The result of one suite on one DataFrame: overall success and one row per expectation."""

    suite_name: str
    success: bool
    element_count: int
    expectations: tuple[ExpectationOutcome, ...]

    @property
    def failed(self) -> tuple[ExpectationOutcome, ...]:
        """The expectations that did not pass, in suite order."""
        return tuple(e for e in self.expectations if not e.success)

    @property
    def failed_names(self) -> tuple[str, ...]:
        """The short names of the expectations that did not pass, in suite order."""
        return tuple(e.name for e in self.failed)

    def __getitem__(self, name: str) -> ExpectationOutcome:
        """The outcome of the expectation with this short name (e.g. ``"bid_cpc_plausible"``)."""
        for outcome in self.expectations:
            if outcome.name == name:
                return outcome
        raise KeyError(f"{self.suite_name} has no expectation named {name!r}")


@dataclass(frozen=True)
class _GxRuntime:
    """One ephemeral GX context per process with a pandas DataFrame batch definition."""

    context: AbstractDataContext
    batch_definition: BatchDefinition


_GX_LOCK = threading.Lock()


@functools.cache
def _gx_runtime() -> _GxRuntime:
    """Build (once per process) the ephemeral context; progress bars off so logs stay readable."""
    context = gx.get_context(mode="ephemeral")
    # GX wraps metric computation in tqdm bars on stderr unless the context's progress_bars
    # setting says otherwise (Validator._determine_progress_bars reads it).
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    data_source = context.data_sources.add_pandas(name="clickloop")
    data_asset = data_source.add_dataframe_asset(name="partition")
    batch_definition = data_asset.add_batch_definition_whole_dataframe(name="whole_partition")
    return _GxRuntime(context=context, batch_definition=batch_definition)


def _plain(value: Any) -> Any:
    """A JSON-friendly version of a value from GX or pandas (numpy scalars, timestamps, NaN)."""
    if value is None:
        return None
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date)):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _exception_message(exception_info: Any) -> str | None:
    """The message of an exception GX caught while computing an expectation, if any.

    GX reports it either flat (``{"raised_exception": True, "exception_message": ...}``) or keyed
    by the metric that failed (``{"MetricConfigurationID(...)": {...}}``).
    """
    if not isinstance(exception_info, Mapping):
        return None
    entries = [exception_info] if "raised_exception" in exception_info else exception_info.values()
    messages = [
        str(e.get("exception_message"))
        for e in entries
        if isinstance(e, Mapping) and e.get("raised_exception")
    ]
    return "; ".join(dict.fromkeys(messages)) or None


def _outcome_of(expectation: Expectation, result: Any) -> ExpectationOutcome:
    """Translate one GX ExpectationValidationResult into an :class:`ExpectationOutcome`."""
    config = result.expectation_config
    details: Mapping[str, Any] = result.result or {}
    observed = details.get("observed_value")
    mismatched = (details.get("details") or {}).get("mismatched")
    if mismatched:  # schema expectation: show what is missing rather than every column
        observed = mismatched
    elif config.type == "expect_table_columns_to_match_set" and isinstance(observed, list):
        observed = f"{len(observed)} columns"
    unexpected_count = details.get("unexpected_count")
    unexpected_percent = details.get("unexpected_percent")
    return ExpectationOutcome(
        name=(expectation.meta or {}).get("name", config.type),
        expectation_type=config.type,
        column=config.kwargs.get("column"),
        description=expectation.description or config.type,
        success=bool(result.success),
        unexpected_count=None if unexpected_count is None else int(unexpected_count),
        unexpected_percent=None if unexpected_percent is None else float(unexpected_percent),
        observed_value=_plain(observed),
        unexpected_examples=tuple(
            _plain(v) for v in (details.get("partial_unexpected_list") or [])[:EXAMPLE_COUNT]
        ),
        mostly=config.kwargs.get("mostly"),
        error=_exception_message(result.exception_info),
    )


def validate(df: pd.DataFrame, suite: gx.ExpectationSuite) -> SuiteOutcome:
    """Run ``suite`` on ``df`` through a ValidationDefinition of a per-process ephemeral context.

    The caller's suite is left untouched: a copy under a unique name is registered, run and removed
    again (with its stored result), so the context does not grow over a long backfill.
    """
    with _GX_LOCK:
        runtime = _gx_runtime()
        context = runtime.context
        run_name = f"{suite.name}.{uuid.uuid4().hex}"
        originals = list(suite.expectations)
        registered = context.suites.add(
            gx.ExpectationSuite(name=run_name, expectations=[copy.copy(e) for e in originals])
        )
        try:
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(
                    name=run_name, data=runtime.batch_definition, suite=registered
                )
            )
            try:
                result = definition.run(
                    batch_parameters={"dataframe": df},
                    result_format={
                        "result_format": "SUMMARY",
                        "partial_unexpected_count": EXAMPLE_COUNT,
                    },
                )
            finally:
                context.validation_definitions.delete(run_name)
        finally:
            context.suites.delete(run_name)
            store = context.validation_results_store
            for key in store.list_keys():
                store.remove_key(key)

    # GX groups results by metric, not by suite order: put them back in the order of the suite.
    by_id = {r.expectation_config.id: r for r in result.results}
    outcomes = tuple(
        _outcome_of(original, by_id[registered_copy.id])
        for original, registered_copy in zip(originals, registered.expectations, strict=True)
    )
    return SuiteOutcome(
        suite_name=suite.name,
        success=bool(result.success),
        element_count=len(df),
        expectations=outcomes,
    )


# --- Presenting an outcome --------------------------------------------------------------------


def _cell(value: Any, limit: int = 80) -> str:
    """A value as a Markdown table cell: short, and without characters that break the table."""
    text = "" if value is None else str(value)
    text = text.replace("|", "¦").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def outcome_markdown(outcome: SuiteOutcome) -> str:
    """Every expectation of the outcome as a Markdown table, failures marked ❌."""
    lines = [
        "| | expectation | column | unexpected rows | unexpected % | observed / examples |",
        "|---|---|---|---:|---:|---|",
    ]
    for e in outcome.expectations:
        if e.error:
            shown = f"error: {e.error}"
        elif e.unexpected_count:
            shown = f"e.g. {list(e.unexpected_examples)}"
        else:
            shown = e.observed_value
        lines.append(
            "| {mark} | {desc} | {col} | {count} | {pct} | {shown} |".format(
                mark="✅" if e.success else "❌",
                desc=_cell(e.description, 120),
                col=_cell(e.column or "(table)"),
                count="" if e.unexpected_count is None else f"{e.unexpected_count:,}",
                pct="" if e.unexpected_percent is None else f"{e.unexpected_percent:.3f} %",
                shown=_cell(shown),
            )
        )
    return "\n".join(lines)


def outcome_metadata(outcome: SuiteOutcome) -> dict[str, Any]:
    """The metadata an asset check shows: the table, the counts and the names of failures."""
    return {
        "expectations": MetadataValue.md(outcome_markdown(outcome)),
        "failed_expectations": len(outcome.failed),
        "evaluated_expectations": len(outcome.expectations),
        "rows_checked": outcome.element_count,
        "failed": MetadataValue.json(list(outcome.failed_names)),
    }


# --- Dagster asset checks ---------------------------------------------------------------------


def check_partition(
    context: AssetCheckExecutionContext,
    warehouse: Warehouse,
    asset_name: str,
    suite_builder: SuiteBuilder,
) -> AssetCheckResult:
    """Validate one partition of ``asset_name`` with the suite for its time window."""
    window = context.partition_time_window
    suite = suite_builder(window.start, window.end)
    frame = warehouse.read_partition(asset_name, context.partition_key).to_pandas()
    outcome = validate(frame, suite)
    if not outcome.success:
        context.log.warning(
            f"{asset_name} {context.partition_key}: {len(outcome.failed)} expectation(s) failed: "
            + ", ".join(
                f"{e.name}"
                + ("" if e.unexpected_count is None else f" ({e.unexpected_count:,} rows)")
                for e in outcome.failed
            )
        )
    return AssetCheckResult(
        passed=outcome.success,
        severity=AssetCheckSeverity.ERROR,
        metadata=outcome_metadata(outcome),
    )


@asset_check(
    asset="raw_impressions",
    partitions_def=daily_partitions,
    blocking=True,
    description="Great Expectations suite on the typed impressions of the day: schema, ids, "
    "position, price range and unit, timestamps inside the day.",
)
def raw_impressions_expectations(
    context: AssetCheckExecutionContext, warehouse: Warehouse
) -> AssetCheckResult:
    """Blocking: a failed raw_impressions suite stops everything downstream of the partition."""
    return check_partition(context, warehouse, "raw_impressions", raw_impressions_suite)


@asset_check(
    asset="raw_clicks",
    partitions_def=daily_partitions,
    blocking=True,
    description="Great Expectations suite on the typed clicks of the day: schema, ids, "
    "timestamps inside the day.",
)
def raw_clicks_expectations(
    context: AssetCheckExecutionContext, warehouse: Warehouse
) -> AssetCheckResult:
    """Blocking: a failed raw_clicks suite stops everything downstream of the partition."""
    return check_partition(context, warehouse, "raw_clicks", raw_clicks_suite)


@asset_check(
    asset="ad_events",
    partitions_def=daily_partitions,
    blocking=True,
    description="Great Expectations suite on the joined events of the day: one row per "
    "impression, clicks consistent, no negative delays, daily CTR in a plausible band.",
)
def ad_events_expectations(
    context: AssetCheckExecutionContext, warehouse: Warehouse
) -> AssetCheckResult:
    """Blocking: a failed ad_events suite stops features and training for the partition."""
    return check_partition(context, warehouse, "ad_events", ad_events_suite)


#: Every expectation check of the loop, for the one ``Definitions``.
expectation_checks: list[AssetChecksDefinition] = [
    raw_impressions_expectations,
    raw_clicks_expectations,
    ad_events_expectations,
]
