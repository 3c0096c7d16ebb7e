"""``ad_events``: impressions joined to their clicks, one row and one label per impression."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    asset,
)
from pydantic import Field

from assets.checks import partition_check
from assets.compute import k8s_op_tags
from assets.guards import require_upstream_checks_passed
from assets.partitions import CLICKS_FOR_EVENTS, IMPRESSIONS_FOR_EVENTS, Calendar
from assets.raw_logs import RAW_TABLES
from clickloop.checks import events_rules
from clickloop.contract import LogContract, LogKind
from clickloop.events import MAX_WINDOW_HOURS, join_events, label_events
from clickloop.presentation import significant
from clickloop.quarantine import day_window
from resources.warehouse import WarehouseResource

AD_EVENTS = "ad_events"
#: the days of each raw log the events of day D read
EVENTS_READ: dict[LogKind, TimeWindowPartitionMapping] = {
    "impressions": IMPRESSIONS_FOR_EVENTS,
    "clicks": CLICKS_FOR_EVENTS,
}


class AdEventsConfig(Config):
    attribution_window_hours: float | None = Field(
        default=None,
        gt=0,
        le=MAX_WINDOW_HOURS,
        description="A click counts for an impression when it arrives within this many hours "
        "(default: the log contract's window).",
    )


def ad_events_asset(calendar: Calendar, contract: LogContract) -> AssetsDefinition:
    kinds: list[LogKind] = ["impressions"] if contract.labelled else ["impressions", "clicks"]
    deps = [AssetDep(RAW_TABLES[kind], partition_mapping=EVENTS_READ[kind]) for kind in kinds]

    @asset(
        name=AD_EVENTS,
        op_tags=k8s_op_tags(AD_EVENTS),
        partitions_def=calendar.partitions,
        deps=deps,
        group_name="events",
        kinds={"parquet", "duckdb"},
        description="One row per distinct impression of the day with its click label (first click "
        "within the attribution window, or the logged label); rejected clicks and duplicate "
        "impressions are in the quarantine with their reason.",
    )
    def _ad_events(
        context: AssetExecutionContext, config: AdEventsConfig, warehouse: WarehouseResource
    ) -> MaterializeResult:
        day = context.partition_key
        upstream = {
            dep.asset_key.path[-1]: context.asset_partition_keys_for_input(dep.asset_key.path[-1])
            for dep in deps
        }
        require_upstream_checks_passed(context, upstream)
        store = warehouse.get()
        inputs = {
            name: list(zip(keys, store.require_partition_paths(name, keys), strict=True))
            for name, keys in upstream.items()
        }
        events_path = store.partition_path(AD_EVENTS, day)
        quarantine_path = store.quarantine_path(AD_EVENTS, day)
        window = config.attribution_window_hours or contract.attribution_window_hours
        with store.duckdb() as con:
            if contract.labelled:
                acc = label_events(con, day, inputs["raw_impressions"], events_path, quarantine_path)
            else:
                acc = join_events(
                    con,
                    day,
                    inputs["raw_impressions"],
                    inputs["raw_clicks"],
                    window,
                    events_path,
                    quarantine_path,
                )
        context.log.info(
            f"ad_events {day}: {acc.events:,} events, CTR {acc.ctr:.4f}, outcomes {acc.click_outcomes}"
        )
        return MaterializeResult(
            metadata={
                "dagster/row_count": acc.events,
                "impressions_in": acc.impressions_in,
                "duplicate_impressions": acc.duplicate_impressions,
                "clicked": acc.clicked,
                "ctr": significant(float(acc.ctr)),
                "late_clicks_after_midnight": acc.late_clicks,
                "clicks_in": acc.clicks_in,
                "orphan_clicks": acc.click_outcomes["orphan_click"],
                "clicks_before_impression": acc.click_outcomes["click_before_impression"],
                "duplicate_clicks": acc.click_outcomes["duplicate_click"],
                "click_accounting": MetadataValue.md(acc.markdown()),
                "attribution_window_hours": window if not contract.labelled else "labelled impressions",
                "path": MetadataValue.path(str(events_path)),
            }
        )

    return _ad_events


def ad_events_check(calendar: Calendar, contract: LogContract) -> AssetChecksDefinition:
    low, high = contract.quality.ctr_range

    @calendar.daily_check(
        asset=AD_EVENTS,
        name=f"{AD_EVENTS}_expectations",
        blocking=True,
        description="Great Expectations on the day's joined events: one row per impression, labels "
        f"consistent with the clicks, no negative delay, daily CTR in [{low:.1%}, {high:.0%}]. "
        "Blocking: features and training stop on a bad day.",
    )
    def _check(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        window = day_window(context.partition_time_window.start.date())
        return partition_check(
            context,
            warehouse,
            AD_EVENTS,
            lambda store, con, relation, present: events_rules(contract, window, present),
        )

    return _check
