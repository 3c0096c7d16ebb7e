"""The learned validation suite in Dagster: the check passes with a note before any suite, the asset
learns one from the training window (a node of the lineage, its Data Docs on disk), and a day whose
column arrives all null then fails the blocking check and nothing downstream of it is built."""

from pathlib import Path

import pyarrow as pa
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    DagsterInstance,
    MaterializeResult,
    asset,
    materialize,
)

from assets.guards import check_problem
from assets.validation import LEARNED_SUITE_CHECK, learned_suite_check, validation_suite_asset
from clickloop.split import SplitParams, TimeSplit, build_sets
from resources.warehouse import WarehouseResource
from tests.assets.history import History
from tests.assets.support import CALENDAR, CONTRACT, KEYS
from tests.core.synthetic import features_day

ROWS = 800
TRAIN, VALIDATION, TEST, NEW_DAY = KEYS[:3], KEYS[3], KEYS[4], KEYS[5]
ALL_NULL = "device_type"
CHECK_KEY = AssetCheckKey(AssetKey("features"), LEARNED_SUITE_CHECK)


def test_the_learned_suite_blocks_a_day_whose_column_arrives_all_null(tmp_path: Path) -> None:
    warehouse = WarehouseResource(data_dir=str(tmp_path))
    resources = {"warehouse": warehouse}
    instance = DagsterInstance.ephemeral()

    @asset(name="features", partitions_def=CALENDAR.partitions)
    def features(context: AssetExecutionContext) -> MaterializeResult:
        day = features_day(context.partition_key, ROWS)
        if context.partition_key == NEW_DAY:  # the exporter lost a column
            i = day.schema.get_field_index(ALL_NULL)
            day = day.set_column(i, day.schema.field(i), pa.nulls(ROWS, pa.string()))
        warehouse.get().write_partition("features", context.partition_key, day)
        return MaterializeResult()

    @asset(name="training_input", partitions_def=CALENDAR.partitions, deps=[features])
    def training_input() -> MaterializeResult:
        return MaterializeResult()

    suite_asset, check = validation_suite_asset(CONTRACT), learned_suite_check(CALENDAR)
    daily = [features, training_input, check]

    # before any suite: every day passes, with a note saying why
    for key in [*TRAIN, VALIDATION, TEST]:
        result = materialize(daily, partition_key=key, instance=instance, resources=resources)
        (evaluation,) = result.get_asset_check_evaluations()
        assert evaluation.passed and "no learned suite yet" in evaluation.metadata["note"].value

    build_sets(warehouse.get(), TimeSplit(tuple(TRAIN), VALIDATION, TEST), SplitParams())
    result = materialize(
        [*daily, suite_asset], selection=[suite_asset], instance=instance, resources=resources
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert event.asset_key == AssetKey("validation_suite")
    assert metadata["training_window"].value == ", ".join(TRAIN)
    assert metadata["rows_learned_from"].value == 3 * ROWS
    assert f"new_category:{ALL_NULL}" in metadata["expectations"].value
    assert (
        Path(metadata["data_docs"].value).name == "index.html" and Path(metadata["data_docs"].value).exists()
    )
    assert Path(metadata["path"].value).exists()
    assert metadata["pinned"].value == []

    # a person pins the CTR band and disables a median in the run config: the suite says so
    pins = [{"name": "ctr", "low": 0.001, "high": 0.5}, {"name": "median:hist_ad_ctr", "disabled": True}]
    result = materialize(
        [*daily, suite_asset],
        selection=[suite_asset],
        instance=instance,
        resources=resources,
        run_config={"ops": {"validation_suite": {"config": {"pins": pins}}}},
    )
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert (metadata["pinned"].value, metadata["disabled"].value) == (["ctr"], ["median:hist_ad_ctr"])
    assert "| ctr | the day's click-through rate | in [0.001, 0.5] |" in metadata["expectations"].value

    # the new day: the check fails on the all-null column and stops what is built on the day
    result = materialize(
        daily, partition_key=NEW_DAY, instance=instance, resources=resources, raise_on_error=False
    )
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == LEARNED_SUITE_CHECK and not evaluation.passed
    assert evaluation.metadata["failed"].value == [f"null_share:{ALL_NULL}", f"not_all_null:{ALL_NULL}"]
    assert evaluation.metadata["suite_training_window"].value == ", ".join(TRAIN)
    assert {e.asset_key for e in result.get_asset_materialization_events()} == {AssetKey("features")}

    # a day whose values only moved (a new device type takes 30 % of it) is flagged, not stopped:
    # the check fails with a warning, what is built on the day is built, and the guards accept it
    shifted = KEYS[6]

    @asset(name="features", partitions_def=CALENDAR.partitions)
    def moved(context: AssetExecutionContext) -> MaterializeResult:
        day = features_day(context.partition_key, ROWS)
        devices = day["device_type"].to_pylist()
        devices[: int(0.3 * ROWS)] = ["smart_tv"] * int(0.3 * ROWS)
        i = day.schema.get_field_index("device_type")
        day = day.set_column(i, day.schema.field(i), pa.array(devices, pa.string()))
        warehouse.get().write_partition("features", context.partition_key, day)
        return MaterializeResult()

    result = materialize(
        [moved, training_input, check], partition_key=shifted, instance=instance, resources=resources
    )
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.WARN
    assert evaluation.metadata["failed"].value == ["new_category:device_type"]
    assert AssetKey("training_input") in {e.asset_key for e in result.get_asset_materialization_events()}
    assert check_problem(instance, CHECK_KEY, shifted) is None
    assert check_problem(instance, CHECK_KEY, NEW_DAY) == "failed"


def test_the_loop_learns_the_suite_when_it_trains_and_the_champions_day_passes_it(history: History) -> None:
    """In the shared history ``training_job`` learns the suite from the training window; the days
    whose events are built after it (the last random day, the champion's first served day, whose
    CTR the champion more than doubled) are checked against it and pass."""
    metadata = history.metadata("validation_suite")
    assert metadata["training_window"] == history.metadata("training_set")["train_days"]
    assert Path(metadata["data_docs"]).exists()
    checked = [history.random_days[-1], history.champion_days[0]]
    for day in checked:
        report = history.day(day)
        assert report.checks[LEARNED_SUITE_CHECK], day
        assert check_problem(history.instance, CHECK_KEY, day) is None
    # the days built before the first suite passed with the note
    first = history.random_days[0]
    assert history.day(first).checks[LEARNED_SUITE_CHECK]
