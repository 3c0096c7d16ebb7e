"""Great Expectations on bounded input: rules become one DuckDB profile row and a GX suite; validate
runs any suite on any frame through one ephemeral context and leaves the caller's suite alone."""

import duckdb
import great_expectations as gx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clickloop.expectations import (
    Rule,
    _gx_runtime,
    named_expectation,
    outcome_markdown,
    profile_frame,
    run_rules,
    suite_of,
    validate,
    zero,
)

RULES = [
    Rule("rows", "count(*)", "rows", 1, None),
    zero("null:x", "count(*) FILTER (x IS NULL)", "rows with `x` null"),
    Rule("mean:x", "avg(x)", "the mean of x", 0.0, 10.0),
    Rule("max:x", "max(x)", "the largest x", None, 100.0),
]


@pytest.fixture(scope="module")
def relation(tmp_path_factory: pytest.TempPathFactory) -> str:
    """100,000 rows in a real Parquet file: 3 nulls, values 0 … 99,996."""
    path = tmp_path_factory.mktemp("profile") / "part-0.parquet"
    values = [None if i in (7, 70, 700) else float(i) for i in range(100_000)]
    pq.write_table(pa.table({"x": values}), path)
    return f"read_parquet('{path}')"


def test_rule_columns_and_bounds_in_words() -> None:
    assert [r.column for r in RULES] == ["rows", "null_x", "mean_x", "max_x"]
    assert [r.bounds_text() for r in RULES] == ["≥ 1", "= 0", "in [0, 10]", "≤ 100"]
    assert Rule("any", "1", "anything").bounds_text() == "any"


def test_profile_is_one_row_of_exact_aggregates(relation: str) -> None:
    with duckdb.connect() as con:
        frame = profile_frame(con, relation, RULES)
        assert list(frame.columns) == ["rows", "null_x", "mean_x", "max_x"] and len(frame) == 1
        assert frame.iloc[0].to_dict() == {
            "rows": 100_000.0,
            "null_x": 3.0,
            "mean_x": pytest.approx((sum(range(100_000)) - 777) / 99_997),
            "max_x": 99_999.0,
        }
        assert profile_frame(con, relation, []).shape == (1, 0)


def test_run_rules_validates_the_profile_and_reports_exact_values(relation: str) -> None:
    with duckdb.connect() as con:
        outcome, observed = run_rules(con, relation, "profile_suite", RULES)
    assert not outcome.success and outcome.suite_name == "profile_suite"
    assert outcome.element_count == 1  # GX never loads the 100,000 rows
    assert outcome.failed_names == ("null:x", "mean:x", "max:x")
    assert observed == {
        "rows": 100_000,
        "null:x": 3,
        "mean:x": pytest.approx((sum(range(100_000)) - 777) / 99_997),
        "max:x": 99_999,
    }
    assert outcome["rows"].success and outcome["null:x"].column == "null_x"
    assert outcome["mean:x"].description == "the mean of x: in [0, 10]"
    with pytest.raises(KeyError, match="profile_suite has no expectation named 'nope'"):
        outcome["nope"]
    table = outcome_markdown(outcome, observed)
    assert "| ❌ | rows with `x` null: = 0 | 3 |" in table
    assert "| ✅ | rows: ≥ 1 | 100,000 |" in table
    assert "| 5e+04 |" in table  # 4 significant digits


def test_validate_runs_any_suite_on_a_frame_and_leaves_the_suite_alone() -> None:
    suite = gx.ExpectationSuite(
        name="frame_suite",
        expectations=[
            named_expectation(
                "x_not_null", "x is there", gx.expectations.ExpectColumnValuesToNotBeNull(column="x")
            ),
            named_expectation(
                "x_small",
                "x below 10",
                gx.expectations.ExpectColumnValuesToBeBetween(column="x", max_value=10),
            ),
            named_expectation(
                "has_rows", "rows", gx.expectations.ExpectTableRowCountToBeBetween(min_value=1)
            ),
        ],
    )
    frame = pd.DataFrame({"x": [1.0, None, 30.0, 40.0, 2.0]})
    first = validate(frame, suite)
    assert not first.success and first.element_count == 5
    assert first.failed_names == ("x_not_null", "x_small")
    assert first["x_not_null"].unexpected_count == 1
    assert first["x_small"].unexpected_count == 2 and first["x_small"].unexpected_examples == (30.0, 40.0)
    assert first["x_small"].unexpected_percent == pytest.approx(50.0)  # of the non-null values
    assert first["has_rows"].observed_value == 5 and first["has_rows"].unexpected_count is None
    # the caller's suite is reusable: a copy under another name is registered, run and removed
    assert suite.id is None and len(suite.expectations) == 3
    again = validate(frame.fillna(0.0).clip(upper=5.0), suite)
    assert again.success and again.failed == ()
    context = _gx_runtime().context
    assert context.suites.all() == [] and list(context.validation_results_store.list_keys()) == []
    table = outcome_markdown(first)
    assert "e.g. [30.0, 40.0]" in table and table.count("| ❌") == 2


def test_rules_become_a_suite_of_named_expectations() -> None:
    suite = suite_of("named", RULES)
    assert suite.name == "named" and [e.meta["name"] for e in suite.expectations] == [r.name for r in RULES]
    bounds = [(e.column, e.min_value, e.max_value) for e in suite.expectations]
    assert bounds == [("rows", 1, None), ("null_x", 0, 0), ("mean_x", 0.0, 10.0), ("max_x", None, 100.0)]


def test_an_expectation_that_cannot_be_computed_reports_its_error() -> None:
    outcome = validate(pd.DataFrame({"x": [1.0]}), suite_of("broken", [Rule("y", "0", "y", 0, 1)]))
    assert not outcome.success and outcome.failed_names == ("y",)
    assert outcome["y"].error is not None and "y" in outcome["y"].error
    assert "| ❌ | y: in [0, 1] | error: " in outcome_markdown(outcome)
