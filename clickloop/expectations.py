"""Great Expectations, run on bounded input: a suite of rules over a day's profile.

A day is judged by rules (:class:`Rule`): a named metric, the DuckDB aggregate that computes it over
the whole partition, exactly, and the bounds it must lie in. The metrics of a day are one row (its
*profile*, :func:`profile_frame`), whatever the day's size; the rules become a Great Expectations
suite (:func:`suite_of`), validated by GX on that row (:func:`validate`). So the checks cost one
DuckDB scan of the partition, the counts they report are exact, and GX never loads the rows.

:func:`validate` runs any suite against any pandas frame through an ephemeral GX context (progress
bars off) and returns a small :class:`SuiteOutcome`; :func:`outcome_markdown` is what the UI shows.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import math
import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from clickloop.presentation import cell, markdown_table

if TYPE_CHECKING:  # Great Expectations takes seconds to import: only where a suite is built or run
    import great_expectations as gx
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.expectations.expectation import Expectation

#: How many unexpected values each expectation keeps as examples.
EXAMPLE_COUNT = 5


@dataclass(frozen=True)
class Rule:
    """A metric of a day and the bounds it must lie in (None: unbounded on that side)."""

    name: str
    #: a DuckDB aggregate over the partition's rows (or a constant the caller computed)
    sql: str
    description: str
    low: float | None = None
    high: float | None = None

    @property
    def column(self) -> str:
        """The metric's column in the profile frame (a safe identifier)."""
        return re.sub(r"[^0-9A-Za-z_]", "_", self.name)

    def bounds_text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"= {self.low:g}" if self.low == self.high else f"in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"≥ {self.low:g}"
        return f"≤ {self.high:g}" if self.high is not None else "any"


def zero(name: str, sql: str, description: str) -> Rule:
    """A count that must be 0: a violation of a hard contract is a bug upstream, never data."""
    return Rule(name, sql, description, 0, 0)


def profile_frame(con: duckdb.DuckDBPyConnection, relation: str, rules: Sequence[Rule]) -> pd.DataFrame:
    """Every rule's metric over ``relation`` in one DuckDB query: one row, one column per rule."""
    if not rules:
        return pd.DataFrame([{}])
    select = ", ".join(f'CAST(({r.sql}) AS DOUBLE) AS "{r.column}"' for r in rules)
    return con.sql(f"SELECT {select} FROM {relation}").df()


def named_expectation(name: str, description: str, expectation: Expectation) -> Expectation:
    """Give an expectation a stable short name (in ``meta``) and a sentence for the UI."""
    expectation.meta = {**(expectation.meta or {}), "name": name}
    expectation.description = description
    return expectation


def suite_of(name: str, rules: Sequence[Rule]) -> gx.ExpectationSuite:
    """The GX suite of the rules: each metric between its bounds, on the profile row."""
    import great_expectations as gx

    return gx.ExpectationSuite(
        name=name,
        expectations=[
            named_expectation(
                r.name,
                f"{r.description}: {r.bounds_text()}",
                gx.expectations.ExpectColumnValuesToBeBetween(
                    column=r.column, min_value=r.low, max_value=r.high
                ),
            )
            for r in rules
        ],
    )


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
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

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
    import great_expectations as gx

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
                gx.ValidationDefinition(name=run_name, data=runtime.batch_definition, suite=registered)
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


def outcome_markdown(outcome: SuiteOutcome, observed: Mapping[str, Any] | None = None) -> str:
    """Every expectation of the outcome as a Markdown table, failures marked ❌. ``observed`` gives
    each rule's metric (by expectation name) when the suite ran on a profile."""
    rows = []
    for e in outcome.expectations:
        if e.error:
            shown = f"error: {e.error}"
        elif observed is not None and e.name in observed:
            shown = _number(observed[e.name])
        elif e.unexpected_count:
            shown = f"e.g. {list(e.unexpected_examples)}"
        else:
            shown = e.observed_value
        rows.append(("✅" if e.success else "❌", cell(e.description, 120), cell(shown)))
    return markdown_table(["", "expectation", "observed"], rows)


def _number(value: Any) -> str:
    """A metric for a person: counts with separators, other numbers to 4 significant digits."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{int(value):,}" if float(value).is_integer() else f"{value:.4g}"
    return str(value)


def run_rules(
    con: duckdb.DuckDBPyConnection, relation: str, suite_name: str, rules: Sequence[Rule]
) -> tuple[SuiteOutcome, dict[str, Any]]:
    """A day's profile and the outcome of its rules; the profile by rule name (exact values)."""
    frame = profile_frame(con, relation, rules)
    outcome = validate(frame, suite_of(suite_name, rules))
    row = frame.iloc[0].to_dict() if len(frame) else {}
    observed = {r.name: _plain(row.get(r.column)) for r in rules}
    return outcome, observed
