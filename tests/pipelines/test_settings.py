"""Settings: what the environment may change. ``Settings.from_env`` reads a given mapping (the tests
never write ``os.environ``): the resources get Dagster ``EnvVar``s, resolved and validated by Dagster
in the process that uses them; the settings that shape the graph are read as values."""

from pathlib import Path

import pytest
from dagster import EnvVar

from pipelines.definitions import build_resources
from pipelines.settings import DEFAULT_START_DATE, ENV_RESOURCE_FIELDS, Settings


def env_var_name(value: object) -> str:
    assert isinstance(value, EnvVar) or hasattr(value, "env_var_name"), f"{value!r} is not an EnvVar"
    return value.env_var_name


def test_structural_settings_are_values_and_resource_settings_env_vars(tmp_path: Path) -> None:
    contract = tmp_path / "contract.yaml"
    environ = {
        "CLICKLOOP_DATA_DIR": str(tmp_path / "data"),
        "CLICKLOOP_START_DATE": "2026-09-01",
        "CLICKLOOP_FEATURE_WINDOW_DAYS": "3",
        "CLICKLOOP_LOG_CONTRACT": str(contract),
        "CLICKLOOP_LOG_SOURCE": "landing",
        "CLICKLOOP_LANDING_DIR": str(tmp_path / "landing"),
        "CLICKLOOP_EXECUTOR": "in_process",
        "CLICKLOOP_REQUESTS_PER_DAY": "2000",
        "CLICKLOOP_SCENARIO": "ctr_drop",
        "CLICKLOOP_DRIFT_SHARE_THRESHOLD": "0.3",
        "MLFLOW_TRACKING_URI": "postgresql://mlflow@db/mlflow",
        "CLICKLOOP_MONITORING_DB_URL": "postgresql://monitoring@db/monitoring",
        "SOMETHING_ELSE": "ignored",
    }
    settings = Settings.from_env(environ)
    assert settings.data_dir == (tmp_path / "data").resolve()
    assert (settings.start_date, settings.feature_window_days) == ("2026-09-01", 3)
    assert (settings.log_contract, settings.log_source, settings.executor) == (
        str(contract),
        "landing",
        "in_process",
    )
    expected = {
        "log_source": {"landing_dir": "CLICKLOOP_LANDING_DIR"},
        "simulator": {"requests_per_day": "CLICKLOOP_REQUESTS_PER_DAY", "scenario": "CLICKLOOP_SCENARIO"},
        "model_registry": {"tracking_uri": "MLFLOW_TRACKING_URI"},
        "monitoring_store": {"url": "CLICKLOOP_MONITORING_DB_URL"},
    }
    resources = {r: dict(fields) for r, fields in settings.resources.items()}
    # Dagster has no float EnvVar (a float field refuses a string one): thresholds are values
    assert resources.pop("retrain_policy") == {"drift_share_threshold": 0.3}
    assert {r: {f: env_var_name(v) for f, v in fields.items()} for r, fields in resources.items()} == expected
    assert type(settings.resources["simulator"]["requests_per_day"]).__name__ == "IntEnvVar"
    # every variable the table documents maps to a field of a resource
    assert all(len(target) == 3 for target in ENV_RESOURCE_FIELDS.values())


def test_the_resources_get_the_env_vars_unresolved(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "CLICKLOOP_DATA_DIR": str(tmp_path),
            "CLICKLOOP_REQUESTS_PER_DAY": "2000",
            "CLICKLOOP_SCENARIO": "no_such_scenario",  # checked when Dagster resolves it, not here
            "MLFLOW_TRACKING_URI": "sqlite:///elsewhere.db",
            "CLICKLOOP_CALIBRATION_TOLERANCE": "0.5",
        }
    )
    resources = build_resources(settings)
    simulator = resources["log_source"]
    assert env_var_name(simulator.requests_per_day) == "CLICKLOOP_REQUESTS_PER_DAY"
    assert env_var_name(simulator.scenario) == "CLICKLOOP_SCENARIO"
    assert simulator.landing_dir == str(tmp_path.resolve() / "landing")
    assert env_var_name(resources["model_registry"].tracking_uri) == "MLFLOW_TRACKING_URI"
    assert resources["retrain_policy"].calibration_tolerance == 0.5
    assert resources["warehouse"].data_dir == str(tmp_path.resolve())


def test_an_empty_environment_is_the_embedded_default() -> None:
    settings = Settings.from_env({})
    assert settings.data_dir == Path("data").resolve()
    assert settings.start_date == DEFAULT_START_DATE
    assert (settings.log_contract, settings.log_source, settings.executor) == (
        "",
        "simulator",
        "multiprocess",
    )
    assert settings.resources == {}
    assert settings.refresh_hour == 1
    blank = {
        name: ""
        for name in ("CLICKLOOP_START_DATE", "CLICKLOOP_FEATURE_WINDOW_DAYS", "CLICKLOOP_REFRESH_HOUR")
    }
    assert Settings.from_env(blank) == settings, "an empty variable is an unset one"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CLICKLOOP_FEATURE_WINDOW_DAYS", "seven", "CLICKLOOP_FEATURE_WINDOW_DAYS must be an integer"),
        ("CLICKLOOP_LOG_SOURCE", "kafka", "log_source must be one of"),
        ("CLICKLOOP_EXECUTOR", "dask", "executor must be one of"),
        ("CLICKLOOP_NE_TOLERANCE", "a lot", "CLICKLOOP_NE_TOLERANCE must be a number"),
        ("CLICKLOOP_REFRESH_HOUR", "1am", "CLICKLOOP_REFRESH_HOUR must be an integer"),
        ("CLICKLOOP_REFRESH_HOUR", "24", "refresh_hour must be an hour of the day"),
    ],
)
def test_bad_structural_settings_are_refused(variable: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env({variable: value})


def test_with_resource_adds_fields_without_changing_the_settings(tmp_path: Path) -> None:
    base = Settings(data_dir=tmp_path, resources={"simulator": {"seed": 3}})
    more = base.with_resource("simulator", requests_per_day=100)
    assert more.resource("simulator") == {"seed": 3, "requests_per_day": 100}
    assert base.resource("simulator") == {"seed": 3}
    assert more.resource("warehouse") == {}


def test_simulator_settings_from_the_environment(code_location: dict) -> None:
    """The documented environment variables reach the simulator through EnvVar, validated when
    Dagster resolves them (in a process with that environment, ``tests/pipelines/conftest.py``)."""
    assert code_location["simulator"] == {
        "scenario": "ctr_drop",
        "start": "2026-10-03",
        "requests": 1234,
        "landing_dir": str(Path(code_location["data_dir"]).resolve() / "landing"),
    }
    assert "unknown scenario 'no_such_scenario'" in code_location["bad_scenario"]


def test_the_pseudonym_key_reaches_the_contract_resource_as_an_env_var(tmp_path: Path) -> None:
    settings = Settings.from_env({"CLICKLOOP_DATA_DIR": str(tmp_path), "CLICKLOOP_PSEUDONYM_KEY": "s3cret"})
    contract = build_resources(settings)["log_contract"]
    assert env_var_name(contract.pseudonym_key) == "CLICKLOOP_PSEUDONYM_KEY"  # never the value itself
    assert "s3cret" not in repr(settings)
    # unset: the simulator's contract gets its public key
    plain = build_resources(Settings(data_dir=tmp_path))["log_contract"]
    assert plain.pseudonymiser() is not None and plain.pseudonym_key == ""
