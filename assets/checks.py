"""Blocking asset checks from the rules of :mod:`clickloop.checks`: the metadata a person reads."""

from collections.abc import Callable, Sequence
from typing import Any

import duckdb
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue

from clickloop.expectations import Rule, SuiteOutcome, outcome_markdown, run_rules
from clickloop.storage import Warehouse, parquet_sql
from resources.warehouse import WarehouseResource


def outcome_metadata(outcome: SuiteOutcome, observed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The table of every expectation, the counts, and the names of the failures."""
    metadata: dict[str, Any] = {
        "expectations": MetadataValue.md(outcome_markdown(outcome, observed)),
        "failed_expectations": len(outcome.failed),
        "evaluated_expectations": len(outcome.expectations),
        "failed": MetadataValue.json(list(outcome.failed_names)),
    }
    if observed and observed.get("rows") is not None:
        metadata["rows_checked"] = int(observed["rows"])
    return metadata


def rule_check(
    context: AssetCheckExecutionContext,
    con: duckdb.DuckDBPyConnection,
    relation: str,
    suite_name: str,
    rules: Sequence[Rule],
    metadata: dict[str, Any] | None = None,
    warn_only: Callable[[Sequence[str]], bool] | None = None,
) -> AssetCheckResult:
    """Validate the rules on the relation's profile; a failure is an ERROR (blocking), or a WARN
    (flagged, not blocking) when ``warn_only`` says so of the failed rules' names. ``metadata`` is
    added to the result's (where the suite came from)."""
    outcome, observed = run_rules(con, relation, suite_name, rules)
    warn = not outcome.success and warn_only is not None and warn_only(outcome.failed_names)
    if not outcome.success:
        context.log.warning(
            f"{suite_name} {context.partition_key if context.has_partition_key else ''}: "
            + ", ".join(f"{e.name} = {observed.get(e.name)}" for e in outcome.failed)
        )
    return AssetCheckResult(
        passed=outcome.success,
        severity=AssetCheckSeverity.WARN if warn else AssetCheckSeverity.ERROR,
        metadata={**outcome_metadata(outcome, observed), **(metadata or {})},
    )


def table_columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return list(con.sql(f"SELECT * FROM {relation} LIMIT 0").columns)


#: The rules of one partition, given the warehouse, a connection, the partition's relation and its
#: columns.
RulesFor = Callable[[Warehouse, duckdb.DuckDBPyConnection, str, list[str]], Sequence[Rule]]


def partition_check(
    context: AssetCheckExecutionContext,
    warehouse: WarehouseResource,
    table: str,
    rules_for: RulesFor,
    suite_name: str | None = None,
    metadata: dict[str, Any] | None = None,
    warn_only: Callable[[Sequence[str]], bool] | None = None,
) -> AssetCheckResult:
    """The blocking check of one partition of ``table``: its rules, validated on its profile (the
    suite is named after the table unless ``suite_name`` says otherwise)."""
    store = warehouse.get()
    (path,) = store.require_partition_paths(table, [context.partition_key])
    relation = parquet_sql(path)
    with store.duckdb() as con:
        rules = rules_for(store, con, relation, table_columns(con, relation))
        return rule_check(context, con, relation, suite_name or table, rules, metadata, warn_only)
