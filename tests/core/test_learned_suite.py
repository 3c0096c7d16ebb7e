"""The validation suite learned from the training window: learning, new days judged on it, pins."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from clickloop.contract import Pin
from clickloop.expectations import SuiteOutcome, run_rules
from clickloop.learned_suite import (
    LearnedSuite,
    SuiteTolerances,
    data_docs_dir,
    learn_suite,
    merged_pins,
    read_suite,
    render_data_docs,
    write_suite,
)
from clickloop.storage import Warehouse, parquet_sql
from tests.core.synthetic import DEVICES, KEYS, SPEC, features_day, write_features_days

TRAIN = KEYS[:3]
NEW_DAY = KEYS[5]  # a Tuesday after a Thursday-Saturday window
ROWS = 1500


@pytest.fixture(scope="module")
def window(tmp_path_factory: pytest.TempPathFactory) -> tuple[Warehouse, dict[str, Path]]:
    warehouse = Warehouse(tmp_path_factory.mktemp("suite"))
    return warehouse, write_features_days(warehouse, TRAIN, n=ROWS)


def learned(window: tuple[Warehouse, dict[str, Path]], pins: tuple[Pin, ...] = ()) -> LearnedSuite:
    warehouse, paths = window
    with warehouse.duckdb() as con:
        return learn_suite(con, SPEC, TRAIN, [paths[d] for d in TRAIN], SuiteTolerances(), pins)


def judge(warehouse: Warehouse, suite: LearnedSuite, day: pa.Table) -> SuiteOutcome:
    """Validate one day of features (written as a partition) on the suite's rules."""
    path = warehouse.write_partition("features", NEW_DAY, day)
    with warehouse.duckdb() as con:
        relation = parquet_sql(path)
        present = list(con.sql(f"SELECT * FROM {relation} LIMIT 0").columns)
        outcome, _ = run_rules(con, relation, suite.name, suite.day_rules(present))
    return outcome


def with_column(day: pa.Table, column: str, values: list) -> pa.Table:
    i = day.schema.get_field_index(column)
    return day.set_column(i, day.schema.field(i), pa.array(values, day.schema.field(i).type))


def test_suite_learns_domains_null_shares_ranges_and_the_ctr_band(window) -> None:
    suite = learned(window)
    rules = {r.rule.name: r for r in suite.rules}
    assert suite.training_days == tuple(TRAIN) and suite.rows == 3 * ROWS
    # categories of a context column; none for an entity key (new advertisers arrive every day)
    assert rules["new_category:device_type"].learned["domain"] == sorted(DEVICES)
    assert "new_category:advertiser_id" not in rules
    assert "new_category:site_category" in rules  # only a pair's part (ad × site category): a context column
    assert rules["null_share:device_type"].rule.high == pytest.approx(0.05)
    # numeric ranges widened by half their width; the slot of synthetic days is 1 or 2
    position = rules["outside_range:position"].learned
    assert (position["min"], position["max"]) == (1.0, 2.0)
    assert "position < 0.5 OR position > 2.5" in rules["outside_range:position"].rule.sql
    # the hour and the weekday are read off the clock: a Tuesday after a Thursday-Saturday window passes
    assert not [name for name in rules if name.endswith((":hour", ":weekday")) and "null" not in name]
    # counts have no learned upper bound
    assert rules["median:user_impressions_24h"].rule.high is None
    # the CTR band holds every training day's CTR, widened by the factor
    ctrs = [float(np.mean(features_day(d, ROWS)["clicked"].to_numpy())) for d in TRAIN]
    assert rules["ctr"].rule.low == pytest.approx(min(ctrs) / 4)
    assert rules["ctr"].rule.high == pytest.approx(max(ctrs) * 4)
    # a new day of the same world passes
    outcome = judge(window[0], suite, features_day(NEW_DAY, ROWS))
    assert outcome.success, outcome.failed_names


def test_an_all_null_column_fails(window) -> None:
    day = features_day(NEW_DAY, ROWS)
    outcome = judge(window[0], learned(window), with_column(day, "device_type", [None] * ROWS))
    assert not outcome.success
    assert {"null_share:device_type", "not_all_null:device_type"} <= set(outcome.failed_names)
    assert outcome["not_all_null:device_type"].description.startswith("rows with `device_type` not null")


@pytest.mark.parametrize(("share", "passes"), [(0.3, False), (0.02, True)])
def test_a_new_category_fails_only_when_it_takes_a_large_share(window, share: float, passes: bool) -> None:
    day = features_day(NEW_DAY, ROWS)
    devices = day["device_type"].to_pylist()
    devices[: int(share * ROWS)] = ["smart_tv"] * int(share * ROWS)
    outcome = judge(window[0], learned(window), with_column(day, "device_type", devices))
    assert outcome.success is passes, outcome.failed_names
    if not passes:
        assert outcome.failed_names == ("new_category:device_type",)


def test_a_pin_overrides_the_learned_bounds_and_a_disabled_expectation_is_gone(window) -> None:
    day = features_day(NEW_DAY, ROWS)
    pinned = learned(window, (Pin("ctr", low=0.5, high=1.0), Pin("null_share:device_type", disabled=True)))
    rules = {r.rule.name: r for r in pinned.rules}
    assert (rules["ctr"].rule.low, rules["ctr"].rule.high, rules["ctr"].pinned) == (0.5, 1.0, True)
    assert "null_share:device_type" not in rules and pinned.disabled == ("null_share:device_type",)
    assert judge(window[0], pinned, day).failed_names == ("ctr",)
    # pinned wide open, an all-null column still fails the rule it was not pinned on
    opened = learned(window, (Pin("null_share:device_type", low=None, high=1.0),))
    outcome = judge(window[0], opened, with_column(day, "device_type", [None] * ROWS))
    assert outcome.failed_names == ("not_all_null:device_type",)


def test_a_pin_naming_no_expectation_is_refused(window) -> None:
    with pytest.raises(ValueError, match="null_share:devicetype name no expectation"):
        learned(window, (Pin("null_share:devicetype", high=1.0),))


def test_the_suite_is_stored_as_gx_json_and_rendered_as_data_docs(window) -> None:
    warehouse, _ = window
    suite = learned(window, (Pin("ctr", low=0.001, high=0.5),))
    write_suite(warehouse.root, suite)
    back = read_suite(warehouse.root)
    assert back is not None
    assert [(r.rule, r.pinned) for r in back.rules] == [(r.rule, r.pinned) for r in suite.rules]
    index = render_data_docs(warehouse.root, suite)
    assert index == data_docs_dir(warehouse.root) / "index.html" and index.exists()
    pages = [p.read_text() for p in data_docs_dir(warehouse.root).rglob("*.html")]
    assert any("validation_suite" in page for page in pages)
    assert not list(data_docs_dir(warehouse.root).parent.glob(".*"))  # no staging folder left


def test_this_runs_pins_replace_the_contracts_of_the_same_name() -> None:
    kept = (Pin("ctr", 0.01, 0.2), Pin("null_share:os", high=0.5))
    assert merged_pins(kept, [Pin("ctr", disabled=True)]) == [Pin("ctr", disabled=True), kept[1]]
