"""The validation suite learned from the training window, and the blocking check of new days on it."""

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
    asset,
)
from pydantic import Field

from assets.checks import partition_check
from assets.guards import require_upstream_checks_passed
from assets.model import ALL_FEATURES
from assets.partitions import Calendar
from clickloop.contract import LogContract, Pin
from clickloop.features import FeatureSpec
from clickloop.learned_suite import (
    VALIDATION_SUITE,
    SuiteTolerances,
    learn_suite,
    merged_pins,
    only_shifts,
    read_suite,
    render_data_docs,
    suite_path,
    write_suite,
)
from clickloop.split import FEATURES, TRAINING_SET, read_split_manifest
from resources.warehouse import WarehouseResource

_TOL = SuiteTolerances()
#: The name of the blocking check of a day's features against the learned suite.
LEARNED_SUITE_CHECK = f"{FEATURES}_learned_suite"


class PinConfig(Config):
    """One expectation of the learned suite, by name (e.g. ``ctr``, ``null_share:os``), pinned to
    fixed bounds (None: unbounded on that side) or disabled."""

    name: str
    low: float | None = None
    high: float | None = None
    disabled: bool = False


class ValidationSuiteConfig(Config):
    null_share_tolerance: float = Field(
        default=_TOL.null_share_tolerance,
        ge=0.0,
        le=1.0,
        description="A day's null share may exceed the window's by this.",
    )
    range_tolerance: float = Field(
        default=_TOL.range_tolerance,
        ge=0.0,
        description="Ranges and median bands widened by this share of their width.",
    )
    max_out_of_range_share: float = Field(
        default=_TOL.max_out_of_range_share,
        ge=0.0,
        le=1.0,
        description="Share of a day's values allowed outside the range.",
    )
    new_category_share: float = Field(
        default=_TOL.new_category_share,
        ge=0.0,
        le=1.0,
        description="Largest share one category unseen in training may take.",
    )
    max_domain_size: int = Field(
        default=_TOL.max_domain_size, ge=1, description="Columns with more training categories get no domain."
    )
    ctr_factor: float = Field(
        default=_TOL.ctr_factor,
        ge=1.0,
        description="The CTR band: the training days' CTRs ÷ and × this factor.",
    )
    pins: list[PinConfig] = Field(
        default_factory=list, description="Expectations pinned to fixed bounds or disabled, by name."
    )

    def tolerances(self) -> SuiteTolerances:
        return SuiteTolerances(**self.model_dump(exclude={"pins"}))

    def pin_list(self) -> list[Pin]:
        return [Pin(p.name, p.low, p.high, p.disabled) for p in self.pins]


def validation_suite_asset(contract: LogContract) -> AssetsDefinition:
    spec = FeatureSpec.from_contract(contract)

    @asset(
        name=VALIDATION_SUITE,
        deps=[TRAINING_SET, AssetDep(FEATURES, partition_mapping=ALL_FEATURES)],
        group_name="model",
        kinds={"great_expectations", "duckdb"},
        description="A Great Expectations suite learned from the features of the training window "
        "(null shares, value ranges and medians, categories, CTR band, with tolerances; pins from "
        "the contract file's validation_suite section and the run config), with its Data Docs. New days' features are validated against it by a "
        "blocking check.",
    )
    def _validation_suite(
        context: AssetExecutionContext, config: ValidationSuiteConfig, warehouse: WarehouseResource
    ) -> MaterializeResult:
        store = warehouse.get()
        days = list(read_split_manifest(store).split.train)
        require_upstream_checks_passed(context, {FEATURES: days})
        with store.duckdb() as con:
            suite = learn_suite(
                con,
                spec,
                days,
                store.require_partition_paths(FEATURES, days),
                config.tolerances(),
                merged_pins(contract.suite_pins, config.pin_list()),
            )
        path = write_suite(store.root, suite)
        docs = render_data_docs(store.root, suite)
        pinned = [r.rule.name for r in suite.rules if r.pinned]
        context.log.info(
            f"validation_suite: {len(suite.rules)} expectations from {len(days)} day(s), "
            f"{suite.rows:,} rows; pinned {pinned or 'none'}, disabled {list(suite.disabled) or 'none'}"
        )
        return MaterializeResult(
            metadata={
                "expectations": MetadataValue.md(suite.markdown()),
                "expectation_count": len(suite.rules),
                "training_window": ", ".join(days),
                "rows_learned_from": suite.rows,
                "pinned": MetadataValue.json(pinned),
                "disabled": MetadataValue.json(list(suite.disabled)),
                "data_docs": MetadataValue.path(str(docs)),
                "path": MetadataValue.path(str(path)),
            }
        )

    return _validation_suite


def learned_suite_check(calendar: Calendar) -> AssetChecksDefinition:
    @calendar.daily_check(
        asset=FEATURES,
        name=LEARNED_SUITE_CHECK,
        blocking=True,
        description="The day's features against the latest learned validation suite (null shares, "
        "ranges, medians, new categories, CTR band of the training window). Passes with a note "
        "before the first suite is learned. Blocking: training stops on a day whose columns, null "
        "shares or CTR fail (ERROR); a day whose values only moved (ranges, medians, a new "
        "category's share) is flagged (WARN) and not stopped: the drift sensors judge shifts.",
    )
    def _check(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        store = warehouse.get()
        suite = read_suite(store.root)
        if suite is None:
            return AssetCheckResult(
                passed=True,
                metadata={"note": f"no learned suite yet ({suite_path(store.root)}): nothing to compare"},
            )
        return partition_check(
            context,
            warehouse,
            FEATURES,
            lambda _store, _con, _relation, present: suite.day_rules(present),
            suite_name=VALIDATION_SUITE,
            warn_only=only_shifts,
            metadata={
                "suite": MetadataValue.path(str(suite_path(store.root))),
                "suite_training_window": ", ".join(suite.training_days),
            },
        )

    return _check
