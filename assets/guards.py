"""Blocking checks that hold across runs.

Inside one run Dagster skips the assets downstream of a failed blocking check. The loop also runs a
day in several runs (ingest now, join when the next day's clicks arrive, train weekly), so every asset
that builds on upstream partitions asks the instance, before it reads them, whether the latest
evaluation of each upstream blocking check passed on the latest materialization of each partition
it reads. A failure, a check that never ran, or a check older than the data stops the asset with a
message naming the asset, the partition and the check.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dagster import (
    AssetCheckKey,
    AssetExecutionContext,
    AssetKey,
    DagsterInstance,
    Failure,
    MetadataValue,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus


@dataclass(frozen=True)
class CheckProblem:
    """One upstream partition that must not be built on, and why."""

    check: str
    partition: str
    problem: str


def blocking_check_keys(context: AssetExecutionContext, assets: Sequence[str]) -> list[AssetCheckKey]:
    """The blocking checks defined on the given assets in this code location (not only in this
    job: a job that builds ``ad_events`` does not run the checks of the raw logs it reads)."""
    graph = context.job_def.asset_layer.asset_graph
    graph = getattr(graph, "source_asset_graph", graph)  # a job-scoped graph knows the whole one
    wanted = {AssetKey(a) for a in assets}
    return sorted(
        (k for k in graph.asset_check_keys if k.asset_key in wanted and graph.get_check_spec(k).blocking),
        key=lambda k: k.to_user_string(),
    )


def check_problems(
    instance: DagsterInstance,
    check_keys: Sequence[AssetCheckKey],
    partitions: Mapping[AssetKey, Sequence[str]],
) -> list[CheckProblem]:
    """Which (check, partition) pairs did not pass on the partition's latest materialization."""
    problems: list[CheckProblem] = []
    for key in check_keys:
        wanted = list(partitions.get(key.asset_key, []))
        if not wanted:
            continue
        infos = {
            info.partition_key: info
            for info in instance.event_log_storage.get_asset_check_partition_info(
                [key], partition_keys=wanted
            )
        }
        for partition in wanted:
            info = infos.get(partition)
            if info is None:
                problem = "never evaluated"
            elif info.latest_execution_status == AssetCheckExecutionRecordStatus.FAILED:
                problem = "failed"
            elif info.latest_execution_status != AssetCheckExecutionRecordStatus.SUCCEEDED:
                problem = f"not finished ({info.latest_execution_status.value})"
            elif not info.is_current:
                problem = "older than the latest materialization"
            else:
                continue
            problems.append(CheckProblem(key.to_user_string(), partition, problem))
    return problems


def require_upstream_checks_passed(
    context: AssetExecutionContext, partitions: Mapping[str, Sequence[str]]
) -> None:
    """Stop this asset unless every blocking check of the partitions it reads passed."""
    check_keys = blocking_check_keys(context, list(partitions))
    problems = check_problems(
        context.instance, check_keys, {AssetKey(a): keys for a, keys in partitions.items()}
    )
    if problems:
        table = "\n".join(f"| {p.check} | {p.partition} | {p.problem} |" for p in problems)
        raise Failure(
            description=(
                f"{context.asset_key.to_user_string()} refuses to build on data that did not pass "
                "its blocking checks: "
                + "; ".join(f"{p.check} on {p.partition} {p.problem}" for p in problems)
            ),
            metadata={
                "blocked_by": MetadataValue.md(
                    "| check | partition | problem |\n|---|---|---|\n" + table
                )
            },
            allow_retries=False,
        )
