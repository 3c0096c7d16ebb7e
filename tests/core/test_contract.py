"""The log contract: the simulator's YAML, a round trip through YAML, what the roles derive, and
errors that name the file and the key."""

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from clickloop.contract import (
    AD_ID,
    BID,
    LABEL,
    POSITION,
    TIME,
    USER_ID,
    ContractError,
    Pin,
    require_columns,
)
from clickloop.contract_file import (
    DEFAULT_CONTRACT_PATH,
    contract_to_dict,
    dump_contract,
    load_contract,
    parse_contract,
)


def minimal() -> dict[str, Any]:
    """The smallest contract with a click log: every required role and nothing else."""
    return {
        "name": "minimal",
        "impressions": {
            "fields": [
                {"source": "id", "column": "impression_id"},
                {"source": "time", "column": "ts", "type": "timestamp", "format": "epoch_ms"},
                {"source": "creative", "column": "ad_id"},
                {"source": "browser", "required": False},
                {"source": "price", "column": "bid_cpc", "type": "float", "range": [0.0, 5.0]},
            ]
        },
        "clicks": {
            "fields": [
                {"source": "click", "column": "click_id"},
                {"source": "id", "column": "impression_id"},
                {"source": "time", "column": "ts", "type": "timestamp"},
            ]
        },
        "features": {"categorical": ["browser"], "entities": [{"name": "ad", "columns": ["ad_id"]}]},
    }


def write(tmp_path: Path, raw: Any, name: str = "contract.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


def load_error(tmp_path: Path, raw: Any) -> str:
    path = write(tmp_path, raw)
    with pytest.raises(ContractError) as error:
        load_contract(path)
    message = str(error.value)
    assert message.startswith(f"{path.resolve()}: "), message  # the file is named first
    return message


# --- The simulator's contract ---------------------------------------------------------------------


def test_the_simulator_contract_and_its_roles() -> None:
    contract = load_contract()
    assert load_contract(None) is contract and load_contract(DEFAULT_CONTRACT_PATH) is contract
    assert contract.name == "simulator" and contract.path == str(DEFAULT_CONTRACT_PATH)
    assert not contract.labelled and contract.log_kinds == ("impressions", "clicks")
    assert contract.has_position and contract.positions == (1, 2) and contract.reference_position == 1
    assert contract.has_bid and contract.has_user and contract.has_served_predictions
    assert contract.impressions.columns[:2] == ("impression_id", TIME)
    assert contract.log("clicks").columns == ("click_id", "impression_id", TIME)
    assert contract.impressions.typed_columns[-2:] == ("source_file", "line_number")
    assert "user_segment" not in contract.impressions.required_columns
    assert (
        contract.impressions.personal_columns == (USER_ID,) and contract.log("clicks").personal_columns == ()
    )
    # ad-side columns (chosen by the policy) never count as request context
    assert contract.ad_side == ("ad_id", "campaign_id", "advertiser_id", "ad_category", BID)
    assert contract.request_context == ("user_segment", "site_category", "device_type", "os", "country")
    assert POSITION not in contract.candidate_columns and LABEL not in contract.candidate_columns
    assert contract.candidate_columns[:3] == (TIME, AD_ID, USER_ID)
    assert contract.entity_columns == ("ad_id", "advertiser_id", "site_id", "site_category")
    assert contract.evaluation_slices == ("device_type", "country", "position", "site_category")
    assert contract.quality.bid_median_range == (0.05, 5.0)
    assert contract.quality.max_quarantine_share == 0.02
    assert contract.describe() == "simulator"
    assert contract.impressions.field(BID).rule_text() == "≥ 0.01 and ≤ 20"
    assert contract.impressions.field(POSITION).rule_text() == "in {1, 2}"
    assert contract.impressions.field("user_id").rule_text() == ""
    with pytest.raises(KeyError, match="no column 'price'"):
        contract.impressions.field("price")


def test_yaml_round_trip_gives_the_same_contract(tmp_path: Path) -> None:
    contract = load_contract()
    text = dump_contract(contract)
    assert parse_contract(yaml.safe_load(text), "again.yaml") == replace(contract, path=None)
    # and through a file: the loaded contract is the same, with its own path
    copy = load_contract(write(tmp_path, text, "copy.yaml"))
    assert replace(copy, path=None) == replace(contract, path=None)
    assert copy.path == str((tmp_path / "copy.yaml").resolve())
    assert contract_to_dict(copy) == contract_to_dict(contract)


def test_pins_of_the_learned_suite_are_read_and_written_back(tmp_path: Path) -> None:
    raw = minimal()
    raw["validation_suite"] = {
        "pins": [{"name": "ctr", "low": 0.005, "high": 0.2}, {"name": "median:bid", "disabled": True}]
    }
    contract = load_contract(write(tmp_path, raw))
    assert contract.suite_pins == (Pin("ctr", 0.005, 0.2), Pin("median:bid", disabled=True))
    assert contract_to_dict(contract)["validation_suite"] == raw["validation_suite"]
    assert load_contract().suite_pins == ()


def test_labelled_contract_round_trips_and_describes_what_it_lacks(tmp_path: Path) -> None:
    raw = minimal()
    del raw["clicks"]
    raw["impressions"]["fields"] = raw["impressions"]["fields"][:4]  # no price
    raw["label"] = {"source": "is_click"}
    raw["features"]["user_activity"] = False
    contract = load_contract(write(tmp_path, raw))
    assert contract.labelled and contract.log_kinds == ("impressions",)
    label = contract.impressions.field(LABEL)
    assert (label.source, label.type, label.allowed) == ("is_click", "int", (0, 1))
    assert not contract.has_position and contract.reference_position is None and contract.positions is None
    assert not contract.has_bid and not contract.has_user and not contract.has_served_predictions
    assert contract.evaluation_slices == ("browser",)  # the request context, no position
    assert contract.describe() == (
        "minimal (clicks as a label on impressions; no position: ranking needs no reference slot; "
        "no bid: ranking and revenue fall back to CTR)"
    )
    with pytest.raises(ContractError, match="no clicks log"):
        contract.log("clicks")
    again = parse_contract(yaml.safe_load(dump_contract(contract)), "again.yaml")
    assert again == replace(contract, path=None)


# --- Errors name the file and the key -------------------------------------------------------------


def test_unknown_type_is_named(tmp_path: Path) -> None:
    raw = minimal()
    raw["impressions"]["fields"][3]["type"] = "decimal"
    message = load_error(tmp_path, raw)
    assert "impressions.fields[3] (browser): type must be one of" in message and "'decimal'" in message


@pytest.mark.parametrize(
    ("column", "why"),
    [
        ("ad_id", "an id"),
        ("bid_cpc", "the price"),
        ("impression_id", "an id"),
        ("ts", "the time"),
        ("position", "never a model input"),
    ],
)
def test_a_feature_that_is_an_id_the_time_the_price_or_the_slot_is_refused(
    tmp_path: Path, column: str, why: str
) -> None:
    raw = minimal()
    if column == "position":
        raw["impressions"]["fields"].append({"source": "slot", "column": "position", "allowed": [1, 2]})
    raw["features"]["categorical"] = ["browser", column]
    message = load_error(tmp_path, raw)
    assert f"features.categorical: '{column}' is" in message and why in message


@pytest.mark.parametrize(("log", "role"), [("impressions", "ad_id"), ("clicks", "click_id")])
def test_a_missing_required_role_is_named(tmp_path: Path, log: str, role: str) -> None:
    raw = minimal()
    raw[log]["fields"] = [f for f in raw[log]["fields"] if f.get("column") != role]
    message = load_error(tmp_path, raw)
    assert f": {log}: a field must map to the loop's column '{role}'" in message


def test_a_required_role_marked_optional_is_refused(tmp_path: Path) -> None:
    raw = minimal()
    raw["impressions"]["fields"][0]["required"] = False
    assert "impressions: 'impression_id' must be required" in load_error(tmp_path, raw)


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ([5.0, 1.0], "range min 5.0 is above max 1.0"),
        ([0.0], "range is [min, max]"),
        (["cheap", 1.0], "expected a number, got 'cheap'"),
        ([True, 1.0], "expected a number, got True"),
    ],
)
def test_a_bad_range_is_named(tmp_path: Path, bounds: list[Any], expected: str) -> None:
    raw = minimal()
    raw["impressions"]["fields"][4]["range"] = bounds
    message = load_error(tmp_path, raw)
    assert "impressions.fields[4] (price): " in message and expected in message


def test_a_range_on_a_string_and_a_format_on_a_number_are_refused(tmp_path: Path) -> None:
    raw = minimal()
    raw["impressions"]["fields"][3]["range"] = [0, 1]
    assert "fields[3] (browser): a range needs a numeric type, not string" in load_error(tmp_path, raw)
    raw = minimal()
    raw["impressions"]["fields"][4]["format"] = "epoch_s"
    assert "fields[4] (price): format is for timestamps only" in load_error(tmp_path, raw)
    raw = minimal()
    raw["impressions"]["fields"][1]["format"] = "yesterday"
    assert "fields[1] (time): format is one of" in load_error(tmp_path, raw)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda r: r["impressions"]["fields"][2].update(type="int"),
            "the loop's column 'ad_id' has type string",
        ),
        (lambda r: r["impressions"]["fields"][3].update(colour="red"), "unknown key(s) ['colour']"),
        (
            lambda r: r["impressions"]["fields"][4].update(personal=True),
            "fields[4] (price): a personal id is stored as a pseudonym (text): type string, not float",
        ),
        (lambda r: r["impressions"]["fields"][3].update(personal="yes"), "personal is true or false"),
        (lambda r: r["impressions"]["fields"].append({"source": "id"}), "duplicate source(s) ['id']"),
        (lambda r: r.update(label="is_click"), "declare either a clicks log or a label column"),
        (lambda r: r["features"].update(user_activity=True), "features.user_activity: needs a 'user_id'"),
        (
            lambda r: r["features"]["entities"].append({"name": "site", "columns": ["site"]}),
            "features.entities[1]: 'site' is not an impression column",
        ),
        (lambda r: r["features"].update(categorical=["os"]), "features.categorical: 'os' is not"),
        (lambda r: r.update(slices=["country"]), "slices: 'country' is not an impression column"),
        (lambda r: r.update(quality={"max_quarantine_share": 0}), "quality.max_quarantine_share"),
        (lambda r: r.update(quality={"ctr_range": [0.3, 0.1]}), "quality: expected low ≤ high"),
        (lambda r: r.update(attribution_window_hours=48), "attribution_window_hours: must be in (0, 24]"),
        (
            lambda r: r.update(validation_suite={"pins": [{"name": "ctr", "high": "a lot"}]}),
            "validation_suite.pins[0].high: expected a number, got 'a lot'",
        ),
        (
            lambda r: r.update(validation_suite={"pins": [{"name": "ctr", "low": 0.2, "high": 0.1}]}),
            "validation_suite.pins[0]: low 0.2 is above high 0.1",
        ),
        (
            lambda r: r.update(validation_suite={"pin": []}),
            "validation_suite: expected a mapping with 'pins'",
        ),
        (
            lambda r: r["impressions"]["fields"].append({"source": "/device/os"}),
            "(/device/os): a JSON Pointer source needs a 'column'",
        ),
        (
            lambda r: r["impressions"]["fields"].append({"source": "/device//os", "column": "os"}),
            "(/device//os): a JSON Pointer source has a key between every '/'",
        ),
        (
            lambda r: r["impressions"]["fields"].extend(
                [{"source": "/device", "column": "device"}, {"source": "/device/os", "column": "os"}]
            ),
            "'/device/os' lies inside the field '/device'",
        ),
    ],
)
def test_other_mistakes_are_named(tmp_path: Path, change: Any, expected: str) -> None:
    raw = minimal()
    change(raw)
    assert expected in load_error(tmp_path, raw)


def test_unreadable_and_invalid_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ContractError, match=r"missing\.yaml: cannot read the log contract"):
        load_contract(missing)
    assert "not valid YAML" in load_error(tmp_path, "impressions: [unclosed")
    assert "a contract is a mapping" in load_error(tmp_path, "- just\n- a list\n")


def test_require_columns_names_what_is_missing() -> None:
    require_columns(["a", "b"], ["a"], "rows")
    with pytest.raises(ValueError, match=r"rows lack\(s\) column\(s\): c, d"):
        require_columns(["a", "b"], ["a", "c", "d"], "rows")


def test_two_entities_on_the_same_columns_are_refused(tmp_path: Path) -> None:
    """DuckDB would emit the grouping set twice and every event would be joined twice."""
    from clickloop.contract_file import dump_contract, load_contract

    text = dump_contract(load_contract()).replace(
        "  - name: advertiser\n    columns:\n    - advertiser_id\n",
        "  - name: advertiser\n    columns:\n    - advertiser_id\n  - name: ad_again\n    columns:\n    - ad_id\n",
    )
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(
        ContractError, match=r"twice\.yaml: features\.entities.*'ad', 'ad_again'.*same columns"
    ):
        load_contract(path)
