"""Monitoring: is today's traffic like the traffic the model learned from, and does the model earn?"""

from typing import Any

from dagster import AssetExecutionContext, AssetsDefinition, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets.guards import require_upstream_checks_passed
from assets.partitions import Calendar
from clickloop.contract import LogContract
from clickloop.drift import (
    DriftColumns,
    DriftOutcome,
    DriftParams,
    drift_markdown,
    drift_of_day,
    drift_png,
    drift_row,
)
from clickloop.features import FeatureSpec
from clickloop.gains import ONLINE_WINDOW_DAYS, gain_rows, gains_markdown
from clickloop.online import (
    ORACLE_BASIS_TEXT,
    OnlineColumns,
    aggregate_versions,
    day_row,
    online_history_png,
    online_markdown,
    online_metrics_rows,
    summary_numbers,
)
from clickloop.presentation import fmt, png_markdown, significant, significant_values
from clickloop.split import FEATURES
from resources.landing import LogSource
from resources.monitoring_store import MonitoringStore
from resources.reports import ReportsSite
from resources.tracking import ModelRegistry
from resources.warehouse import WarehouseResource

DRIFT_REPORT = "drift_report"
ONLINE_METRICS = "online_metrics"
#: Days of online metrics the online_metrics asset plots (day D and the days before it).
HISTORY_DAYS = 30
_DRIFT = DriftParams()


class DriftReportConfig(Config):
    sample_rows: int = Field(
        default=_DRIFT.sample_rows, ge=100, description="Rows sampled from D and the reference."
    )
    seed: int = Field(default=_DRIFT.seed, description="Seed of the sampling hash.")
    reference_days: int = Field(
        default=_DRIFT.reference_days,
        ge=1,
        description="Days before D used when no training window is known.",
    )
    drift_share: float = Field(
        default=_DRIFT.drift_share, gt=0, le=1, description="Share of drifted features."
    )
    prediction_method: str | None = Field(
        default=_DRIFT.prediction_method, description="Method for the prediction."
    )
    target_method: str | None = Field(default=_DRIFT.target_method, description="Method for the click label.")

    def params(self) -> DriftParams:
        return DriftParams(**self.model_dump())


def drift_metadata(outcome: DriftOutcome, report: MetadataValue) -> dict[str, Any]:
    """What the drift_report asset shows of a day's drift: the link to the Evidently report (a URL
    or a path), the per-column plot and table, the scores."""
    summary, reference = outcome.summary, outcome.reference
    if summary is None:
        raise ValueError(f"no drift metadata without a drift report (reference: {reference.source})")
    prediction, target = summary.prediction, summary.target
    return {
        "report": report,
        "drift_per_column": MetadataValue.md(png_markdown(drift_png(summary), "drift score per column")),
        "drifted_columns": MetadataValue.md(drift_markdown(summary)),
        "share_drifted_columns": round(summary.share_drifted_columns, 3),
        "drifted_column_count": len(summary.drifted),
        "prediction_drift_score": significant(prediction.score) if prediction else None,
        "prediction_drifted": prediction.drifted if prediction else None,
        "prediction_drift_method": prediction.method if prediction else None,
        "target_drift_score": significant(target.score) if target else None,
        "target_drifted": target.drifted if target else None,
        "target_drift_method": target.method if target else None,
        "reference": MetadataValue.text(reference.source),
        "reference_days": MetadataValue.text(", ".join(reference.keys)),
        "current_rows": summary.current_rows,
        "reference_rows": summary.reference_rows,
    }


def drift_report_asset(calendar: Calendar, contract: LogContract) -> AssetsDefinition:
    columns = DriftColumns.of(FeatureSpec.from_contract(contract), contract.has_served_predictions)

    @asset(
        name=DRIFT_REPORT,
        partitions_def=calendar.partitions,
        deps=[FEATURES],
        group_name="monitoring",
        kinds={"evidently", "duckdb"},
        description="Evidently drift of day D's features, served predictions and clicks against a "
        "sample of the training window (else the days before D): the score per column plotted, the "
        "HTML report (a link when make ui serves the reports), and the scores in the monitoring store.",
    )
    def _drift_report(
        context: AssetExecutionContext,
        config: DriftReportConfig,
        warehouse: WarehouseResource,
        monitoring_store: MonitoringStore,
        reports: ReportsSite,
    ) -> MaterializeResult:
        day = context.partition_key
        outcome = drift_of_day(
            warehouse.get(),
            day,
            calendar.keys(),
            columns,
            config.params(),
            before_reading=lambda ref: require_upstream_checks_passed(context, {FEATURES: [day, *ref.keys]}),
        )
        reference, summary = outcome.reference, outcome.summary
        if summary is None:
            context.log.warning(f"drift_report {day}: no earlier features partition to compare with")
            return MaterializeResult(metadata={"reference": MetadataValue.text("none (no earlier day)")})
        monitoring_store.write_drift(day, drift_row(summary, reference, outcome.path))
        quieted = summary.suppressed_warnings
        context.log.info(
            f"drift_report {day}: {len(summary.drifted)}/{len(summary.features)} features drifted "
            f"vs {reference.source} ({len(reference.keys)} day(s)); "
            f"{summary.current_rows:,} vs {summary.reference_rows:,} sampled rows"
            + (f"; {quieted} Evidently warning(s) suppressed" if quieted else "")
        )
        return MaterializeResult(metadata=drift_metadata(outcome, reports.link(str(outcome.path))))

    return _drift_report


def online_metrics_asset(calendar: Calendar, contract: LogContract) -> AssetsDefinition:
    columns = OnlineColumns.of(contract)

    @asset(
        name=ONLINE_METRICS,
        partitions_def=calendar.partitions,
        deps=[FEATURES],
        group_name="monitoring",
        kinds={"duckdb", "sql"},
        description="Per model version on day D: traffic, CTR, calibration, normalized entropy, revenue "
        "(clicks per 1000 requests where the logs have no price) and the share of the oracle's revenue "
        "captured (simulated days); written to the monitoring store, and plotted over "
        f"{HISTORY_DAYS} days. With them, each promoted version's offline NE gain at promotion next "
        f"to its online gain over its first {ONLINE_WINDOW_DAYS} days served.",
    )
    def _online_metrics(
        context: AssetExecutionContext,
        warehouse: WarehouseResource,
        monitoring_store: MonitoringStore,
        log_source: LogSource,
        model_registry: ModelRegistry,
    ) -> MaterializeResult:
        day = context.partition_key
        require_upstream_checks_passed(context, {FEATURES: [day]})
        store = warehouse.get()
        paths = store.require_partition_paths(FEATURES, [day])
        with store.duckdb() as con:
            totals = aggregate_versions(con, paths, columns)
        truth = log_source.oracle_truth(day)
        rows = online_metrics_rows(totals, truth)
        whole_day = day_row(totals, truth)
        monitoring_store.write_online_metrics(day, rows)
        numbers = significant_values(summary_numbers(whole_day))
        since = calendar.days_up_to(day, HISTORY_DAYS)[0]
        history = [r for r in monitoring_store.latest_online_metrics(since=since) if r["day"] <= day]
        gains = gain_rows(model_registry.tags_by_version(), monitoring_store.latest_online_metrics())
        context.log.info(
            f"online_metrics {day}: {', '.join(r.model_version for r in rows) or 'no traffic'}; "
            f"CTR {fmt(whole_day.ctr, '.4g')}, {numbers['business_metric']} {fmt(numbers['business_value'], ',.2f')}, "
            f"oracle capture {fmt(whole_day.oracle_capture, '.1%')}"
        )
        return MaterializeResult(
            metadata={
                "online_metrics": MetadataValue.md(online_markdown(rows, whole_day)),
                "over_days": MetadataValue.md(
                    png_markdown(
                        online_history_png(history), f"online metrics of the {HISTORY_DAYS} days to {day}"
                    )
                ),
                "model_versions": MetadataValue.text(", ".join(r.model_version for r in rows) or "none"),
                **numbers,
                "oracle_basis": MetadataValue.text(ORACLE_BASIS_TEXT[whole_day.oracle_basis]),
                "offline_vs_online_gain": MetadataValue.md(gains_markdown(gains)),
            }
        )

    return _online_metrics
