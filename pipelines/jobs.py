"""The jobs of the loop: what runs together."""

from dataclasses import dataclass

from dagster import AssetSelection, define_asset_job
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.evaluation import CHAMPION_MODEL
from assets.events import AD_EVENTS
from assets.monitoring import DRIFT_REPORT, ONLINE_METRICS
from assets.raw_logs import RAW_TABLES
from assets.rollout import ROLLOUT_DECISION
from assets.serving import ONLINE_FEATURES
from clickloop.calibration import SERVING_CALIBRATION
from clickloop.contract import LogContract
from clickloop.evaluation import MODEL_EVALUATION
from clickloop.learned_suite import VALIDATION_SUITE
from clickloop.model import CTR_MODEL
from clickloop.ranking import STATS_TABLE
from clickloop.service.catalog import AD_CATALOG
from clickloop.split import FEATURES, TEST_SET, TRAINING_SET

#: Training runs carry this tag: the instance lets one run at a time (dagster.yaml).
TRAINING_TAGS = {"clickloop/kind": "training"}


@dataclass(frozen=True)
class LoopJobs:
    ingest: UnresolvedAssetJobDefinition
    events: UnresolvedAssetJobDefinition
    feature_stats: UnresolvedAssetJobDefinition
    training: UnresolvedAssetJobDefinition
    rollout: UnresolvedAssetJobDefinition
    online_features: UnresolvedAssetJobDefinition | None = None

    def all(self) -> list[UnresolvedAssetJobDefinition]:
        jobs = [self.feature_stats, self.ingest, self.events, self.training, self.rollout]
        return jobs + ([self.online_features] if self.online_features is not None else [])

    def by_name(self) -> dict[str, UnresolvedAssetJobDefinition]:
        return {job.name: job for job in self.all()}


def build_jobs(contract: LogContract) -> LoopJobs:
    """The daily jobs (partitioned by the days of the assets they select) and the training job."""
    return LoopJobs(
        ingest=define_asset_job(
            "ingest_job",
            selection=AssetSelection.assets(*(RAW_TABLES[k] for k in contract.log_kinds)),
            description="Type one day of raw ad-server logs into Parquet and judge the day.",
        ),
        feature_stats=define_asset_job(
            "feature_stats_job",
            selection=AssetSelection.assets(STATS_TABLE, SERVING_CALIBRATION),
            description="What the ad server may know about the past on day D (history whose labels "
            "were final when D began) and the champion's calibration fitted on the newest labelled "
            "day. Run before day D is served: the champion ranks with them.",
        ),
        events=define_asset_job(
            "events_job",
            selection=AssetSelection.assets(AD_EVENTS, FEATURES, DRIFT_REPORT, ONLINE_METRICS),
            description="Join one day's impressions to their clicks, compute its point-in-time "
            "features, its drift report and its online metrics; runs once the next day's clicks "
            "are ingested (the attribution window has closed).",
        ),
        training=define_asset_job(
            "training_job",
            selection=AssetSelection.assets(
                TRAINING_SET, TEST_SET, CTR_MODEL, MODEL_EVALUATION, CHAMPION_MODEL, VALIDATION_SUITE
            ),
            description="Split the latest features by time, train and track a model, evaluate it "
            "against the champion, baselines and the ground truth, and promote it only if it earns it; "
            "learn the validation suite of new days from the training window.",
            tags=TRAINING_TAGS,
        ),
        rollout=define_asset_job(
            "rollout_job",
            selection=AssetSelection.assets(ROLLOUT_DECISION),
            description="Decide the challenger's next step (canary, promotion, rollback or wait) from "
            "its counterfactual estimate and its shadow and canary evidence.",
        ),
        online_features=define_asset_job(
            "online_features_job",
            selection=AssetSelection.assets(AD_CATALOG, ONLINE_FEATURES),
            description="Day D's ad catalog and statistics into the online store (Redis) the ranking "
            "service reads; run after feature_stats_job of D.",
        ),
    )
