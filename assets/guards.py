"""Blocking checks that hold across runs.

Inside one run Dagster skips the assets downstream of a failed blocking check. The loop also runs a
day in several runs (ingest now, join when the next day's clicks arrive, train weekly), so every asset
that builds on upstream partitions asks the instance, before it reads them, whether the latest
completed evaluation of each upstream blocking check passed on the latest materialization of each
partition it reads. A failure, a check that never ran, or a check older than the data stops the
asset with a message naming the asset, the partition and the check. The promotion gate uses the
same functions over everything its model was built from.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    Failure,
    MetadataValue,
)
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import (
    COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
    AssetCheckExecutionRecordStatus,
)

from clickloop.promotion import CheckReport


@dataclass(frozen=True)
class CheckProblem:
    """One upstream partition that must not be built on, and why."""

    check: str
    partition: str
    problem: str


def upstream_partitions(
    graph: BaseAssetGraph, asset_key: AssetKey, partition_keys: Sequence[str]
) -> dict[AssetKey, set[str]]:
    """Every partitioned ancestor partition that ``partition_keys`` of ``asset_key`` were built
    from, through the graph's own partition mappings (the asset itself included)."""
    found: dict[AssetKey, set[str]] = {asset_key: set(partition_keys)}
    frontier: list[tuple[AssetKey, str]] = [(asset_key, k) for k in partition_keys]
    while frontier:
        child, key = frontier.pop()
        for parent in graph.get(child).parent_keys:
            if not graph.has(parent) or not graph.get(parent).is_partitioned:
                continue
            mapped = graph.get_parent_partition_keys_for_child(key, parent, child)
            for parent_key in mapped.partitions_subset.get_partition_keys():
                if parent_key not in found.setdefault(parent, set()):
                    found[parent].add(parent_key)
                    frontier.append((parent, parent_key))
    return found


def blocking_checks_on(graph: BaseAssetGraph, assets: Iterable[AssetKey]) -> list[AssetCheckKey]:
    wanted = set(assets)
    return sorted(
        (k for k in graph.asset_check_keys if k.asset_key in wanted and graph.get_check_spec(k).blocking),
        key=lambda k: k.to_user_string(),
    )


def check_problem(instance: DagsterInstance, key: AssetCheckKey, partition: str | None) -> str | None:
    """Why a blocking check does not vouch for the latest materialization of one partition (or of a
    non-partitioned asset, ``partition`` None); None when it does.

    The latest *completed* evaluation counts: one that was planned but never ran (its run failed
    before reaching the check) leaves the last completed one in force. A failure, no evaluation at
    all, or an evaluation older than the latest materialization is a problem.
    """
    records = instance.event_log_storage.get_asset_check_execution_history(
        key,
        limit=1,
        status=COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
        partition_filter=PartitionKeyFilter(key=partition),
    )
    if not records:
        return "never evaluated"
    record = records[0]
    evaluation = record.evaluation
    warned = evaluation is not None and evaluation.severity == AssetCheckSeverity.WARN
    if record.status == AssetCheckExecutionRecordStatus.FAILED and not warned:
        return "failed"
    latest = instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=key.asset_key, asset_partitions=None if partition is None else [partition]
        ),
        limit=1,
    ).records
    if not latest:
        return None
    target = evaluation.target_materialization_data if evaluation else None
    current = (
        target.storage_id == latest[0].storage_id
        if target is not None
        else latest[0].timestamp <= record.create_timestamp
    )
    return None if current else "older than the latest materialization"


def check_problems(
    instance: DagsterInstance,
    check_keys: Sequence[AssetCheckKey],
    partitions: Mapping[AssetKey, Iterable[str]] | None = None,
) -> list[CheckProblem]:
    """Every (check, partition) that does not vouch for its data; ``partitions`` gives the
    partitions of each partitioned asset (a non-partitioned asset is left out of it)."""
    problems = []
    for key in check_keys:
        wanted: list[str | None] = (
            sorted(partitions[key.asset_key]) if partitions and key.asset_key in partitions else [None]
        )
        for partition in wanted:
            problem = check_problem(instance, key, partition)
            if problem is not None:
                problems.append(CheckProblem(key.to_user_string(), partition or "-", problem))
    return problems


def code_location_graph(context: AssetExecutionContext) -> BaseAssetGraph:
    """The whole asset graph of the code location (a job only knows its own selection)."""
    graph = context.job_def.asset_layer.asset_graph
    return getattr(graph, "source_asset_graph", graph)


def require_upstream_checks_passed(
    context: AssetExecutionContext, partitions: Mapping[str, Sequence[str]]
) -> None:
    """Stop this asset unless every blocking check of the partitions it reads passed."""
    graph = code_location_graph(context)
    wanted = {AssetKey(a): list(keys) for a, keys in partitions.items() if keys}
    problems = check_problems(context.instance, blocking_checks_on(graph, wanted), wanted)
    if problems:
        table = "\n".join(f"| {p.check} | {p.partition} | {p.problem} |" for p in problems)
        # every asset of the step (``context.asset_key`` raises in a multi-asset such as the split)
        built = sorted(k.to_user_string() for k in context.selected_asset_keys)
        raise Failure(
            description=(
                f"{' and '.join(built)} {'refuses' if len(built) == 1 else 'refuse'} to build on data "
                "that did not pass its blocking checks: "
                + "; ".join(f"{p.check} on {p.partition} {p.problem}" for p in problems)
            ),
            metadata={
                "blocked_by": MetadataValue.md("| check | partition | problem |\n|---|---|---|\n" + table)
            },
            allow_retries=False,
        )


def upstream_check_report(
    instance: DagsterInstance,
    graph: BaseAssetGraph,
    gate: AssetKey,
    source: AssetKey,
    source_keys: Sequence[str],
) -> CheckReport:
    """Every upstream blocking check of the gate on the data it used: the partitions the
    ``source_keys`` of ``source`` were built from (through the partition mappings) and the
    non-partitioned assets upstream of the gate. A check that failed, never ran, or is older than
    the latest materialization of its partition is a problem."""
    partitions = upstream_partitions(graph, source, source_keys)
    partitioned_checks = blocking_checks_on(graph, partitions)
    plain = [k for k in graph.get_ancestor_asset_keys(gate) if not graph.get(k).is_partitioned]
    plain_checks = blocking_checks_on(graph, plain)
    problems = check_problems(instance, partitioned_checks, partitions) + check_problems(
        instance, plain_checks
    )
    verified = sum(len(partitions[k.asset_key]) for k in partitioned_checks) + len(plain_checks)
    return CheckReport(verified, [f"{p.check} on {p.partition}: {p.problem}" for p in problems])
