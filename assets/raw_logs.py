"""Raw ad-server logs → typed Parquet, one daily partition at a time; nothing is lost.

One asset per log the contract declares (``raw_impressions``, and ``raw_clicks`` unless clicks come
as a label on the impressions), each with a blocking check that judges the day.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetExecutionContext,
    AssetsDefinition,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from duckdb import DuckDBPyConnection

from assets.checks import partition_check
from assets.compute import k8s_op_tags
from assets.partitions import Calendar
from clickloop.checks import raw_log_rules
from clickloop.contract import LogContract, LogKind
from clickloop.expectations import Rule
from clickloop.landing import MissingPartitionError, files_markdown, fingerprint
from clickloop.lines import LogFileError
from clickloop.quarantine import day_window, ingest_day, quarantined_counts, reasons_markdown, sample_markdown
from clickloop.storage import Warehouse, one_row
from resources.contract import LogContractResource
from resources.landing import LogSource
from resources.warehouse import WarehouseResource

RAW_TABLES: dict[LogKind, str] = {"impressions": "raw_impressions", "clicks": "raw_clicks"}
#: the metadata key of a day's delivery fingerprint (also the raw asset's data version); a failure
#: on a file that cannot be ingested as delivered, or on a day not delivered yet (the fingerprint of
#: no files), carries it too, with the day (FAILED_DAY)
LANDING_FINGERPRINT = "landing_fingerprint"
FAILED_DAY = "day"
_DESCRIPTIONS = {
    "impressions": "Typed ad impressions of one UTC day, exactly as the ad server logged them "
    "(duplicates included); every line that breaks the log contract is in the quarantine with "
    "its file, line and reason.",
    "clicks": "Typed clicks of one UTC day (by the click's own timestamp), as logged; every line "
    "that breaks the log contract is in the quarantine with its file, line and reason.",
}


def delivery_failure(error: Exception, day: str, files: Sequence[Path]) -> Failure:
    """The failure of a day's ingest that its delivery caused (no files yet, a file that cannot be
    ingested as delivered), with the day and the delivery's fingerprint: redelivery_sensor ingests
    the day once its files change."""
    metadata: dict[str, Any] = {LANDING_FINGERPRINT: fingerprint(files), FAILED_DAY: day}
    if files:
        metadata["landing_files"] = MetadataValue.md(files_markdown(files))
    return Failure(description=str(error), metadata=metadata)


def _raw_asset(calendar: Calendar, contract: LogContract, kind: LogKind) -> AssetsDefinition:
    name = RAW_TABLES[kind]
    spec = contract.log(kind)

    @asset(
        name=name,
        partitions_def=calendar.partitions,
        group_name="ingest",
        kinds={"parquet", "duckdb"},
        description=_DESCRIPTIONS[kind],
        op_tags=k8s_op_tags(name),
    )
    def _materialize(
        context: AssetExecutionContext,
        log_source: LogSource,
        warehouse: WarehouseResource,
        log_contract: LogContractResource,
    ) -> MaterializeResult:
        day = context.partition_time_window.start.date()
        pseudonymiser = log_contract.pseudonymiser()  # before reading: no key, no ingest
        try:
            files = log_source.partition_files(kind, day)
        except MissingPartitionError as exc:  # not delivered yet
            raise delivery_failure(exc, context.partition_key, []) from exc
        delivered = fingerprint(files)  # before reading: a file replaced meanwhile changes it
        try:
            done = ingest_day(warehouse.get(), files, spec, name, day, pseudonymiser)
        except LogFileError as exc:  # a file that cannot be ingested as delivered
            raise delivery_failure(exc, context.partition_key, files) from exc
        parsed = done.parsed
        context.log.info(
            f"{kind} {day}: {parsed.lines_read:,} lines = {parsed.valid_rows:,} valid + "
            f"{parsed.quarantine.num_rows:,} quarantined {parsed.quarantined_by_reason}"
        )
        return MaterializeResult(
            # the delivery is the data version: logs delivered again make everything built on
            # this day stale, and redelivery_sensor re-ingests it
            data_version=DataVersion(delivered),
            metadata={
                LANDING_FINGERPRINT: delivered,
                "landing_files": MetadataValue.md(files_markdown(files)),
                "dagster/row_count": parsed.valid_rows,
                "lines_read": parsed.lines_read,
                "valid_rows": parsed.valid_rows,
                "quarantined_rows": parsed.quarantine.num_rows,
                "header_lines": parsed.header_lines,
                "quarantined_by_reason": MetadataValue.md(reasons_markdown(parsed.quarantined_by_reason)),
                "quarantine_sample": MetadataValue.md(sample_markdown(parsed)),
                "quarantine_path": MetadataValue.path(str(done.quarantine_path)),
                "source_files": MetadataValue.json(parsed.files),
                "path": MetadataValue.path(str(done.path)),
                "log_source": log_source.describe(),
                "log_contract": contract.describe(),
                "pseudonymised": ", ".join(spec.personal_columns) or "none",
            },
        )

    return _materialize


def _raw_check(calendar: Calendar, contract: LogContract, kind: LogKind) -> AssetChecksDefinition:
    name = RAW_TABLES[kind]
    spec = contract.log(kind)
    quality = contract.quality

    @calendar.daily_check(
        asset=name,
        name=f"{name}_expectations",
        blocking=True,
        description=f"Great Expectations on the day's {kind}: the contract's columns, no row that "
        f"breaks a row rule, at most {quality.max_quarantine_share:.0%} of the lines quarantined for "
        "any one reason"
        + (", a plausible median price" if kind == "impressions" and quality.bid_median_range else "")
        + ". Blocking: a bad day stops everything built on it.",
    )
    def _check(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        window = day_window(context.partition_time_window.start.date())

        def rules(store: Warehouse, con: DuckDBPyConnection, relation: str, present: list[str]) -> list[Rule]:
            quarantined = quarantined_counts(con, store.quarantine_path(name, context.partition_key))
            (valid,) = one_row(con, f"SELECT count(*) FROM {relation}")
            lines = valid + sum(quarantined.values())
            return raw_log_rules(contract, spec, window, present, quarantined, lines)

        return partition_check(context, warehouse, name, rules)

    return _check


def raw_log_assets(
    calendar: Calendar, contract: LogContract
) -> tuple[list[AssetsDefinition], list[AssetChecksDefinition]]:
    """The raw asset and its blocking check of each log the contract declares."""
    kinds = contract.log_kinds
    return (
        [_raw_asset(calendar, contract, k) for k in kinds],
        [_raw_check(calendar, contract, k) for k in kinds],
    )
