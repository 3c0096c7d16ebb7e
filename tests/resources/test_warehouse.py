"""The warehouse and the log contract as Dagster resources: settings in, the core objects out."""

from pathlib import Path

import yaml

from clickloop.contract_file import DEFAULT_CONTRACT_PATH, contract_to_dict, load_contract
from clickloop.features import FeatureSpec
from clickloop.storage import DuckDBSettings, Warehouse
from resources.contract import LogContractResource
from resources.warehouse import WarehouseResource


def test_the_warehouse_resource_builds_the_warehouse_it_describes(tmp_path: Path) -> None:
    resource = WarehouseResource(data_dir=str(tmp_path / "data"))
    warehouse = resource.get()
    root = (tmp_path / "data").resolve()
    assert warehouse == Warehouse(root, DuckDBSettings(2, "4GB", str(root / ".duckdb_tmp")))
    tuned = WarehouseResource(
        data_dir=str(tmp_path),
        duckdb_threads=1,
        duckdb_memory_limit="256MB",
        duckdb_temp_dir=str(tmp_path / "spill"),
    ).get()
    assert tuned.duckdb_settings == DuckDBSettings(1, "256MB", str(tmp_path / "spill"))
    with tuned.duckdb() as con:  # the settings reach DuckDB
        assert con.execute("SELECT current_setting('threads')").fetchall() == [(1,)]
    assert (tmp_path / "spill").is_dir()


def test_the_contract_resource_reads_the_simulators_or_a_file(tmp_path: Path) -> None:
    default = LogContractResource()
    assert default.get() is load_contract(DEFAULT_CONTRACT_PATH)
    assert default.features() == FeatureSpec.from_contract(default.get())
    raw = contract_to_dict(default.get())
    raw["name"] = "copy"
    raw["features"]["categorical"] = ["device_type"]
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(raw))
    copy = LogContractResource(path=str(path))
    assert copy.get().name == "copy" and copy.features().categorical == ("device_type",)
