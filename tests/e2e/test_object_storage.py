"""The loop on object storage: a local S3-compatible server (moto's server mode, started here on a
free port of 127.0.0.1) holds the warehouse, the quarantine, the reports and MLflow's artifacts; the
repository's own jobs materialize raw logs -> ad_events -> features -> the sets -> ctr_model (and
what the training job evaluates) there. Only Dagster's instance, the simulator's landing folder and
the MLflow tracking database stay local."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clickloop.model import load_booster, read_model_manifest
from clickloop.split import TRAINING_SET, read_split_manifest
from pipelines.cli.run import run_loop
from pipelines.definitions import build_defs, build_resources
from pipelines.settings import Settings
from tests.assets.history import SIMULATOR, JobConfigRunner, open_test_instance, settings_keys
from tests.e2e.support import VENV_BIN, ManagedProcess, free_port, port_open, wait_until

pytestmark = pytest.mark.e2e

BUCKET = "clickloop-test"
DAYS = 3
OPS_BY_JOB: dict[str, dict[str, Any]] = {
    "training_job": {
        "training_and_test_sets": {"config": {"train_days": 1}},
        "ctr_model": {"config": {"n_trials": 0, "num_boost_round": 60}},
    },
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto server on 127.0.0.1 with an empty bucket; the environment its clients need (set for
    this module: boto3, s3fs and pyarrow read the endpoint and the credentials from it)."""
    port = free_port()
    logs = tmp_path_factory.mktemp("moto")
    server = ManagedProcess.start(
        "moto", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], {"PATH": ""}, logs
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    patch = pytest.MonkeyPatch()
    try:
        wait_until(lambda: port_open(port), 60, "moto_server", alive=[server])
        for name, value in env.items():
            patch.setenv(name, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield env
    finally:
        patch.undo()
        server.stop()


def test_the_loop_materializes_on_object_storage(s3: dict[str, str], tmp_path: Path) -> None:
    import s3fs

    settings = Settings(
        data_dir=tmp_path / "local",
        start_date="2026-10-01",
        executor="in_process",
        resources={
            "simulator": SIMULATOR,
            "warehouse": {"url": f"s3://{BUCKET}/clickloop"},
            "model_registry": {"artifact_location": f"s3://{BUCKET}/mlflow"},
        },
    )
    defs = build_defs(settings)
    runner = JobConfigRunner(defs, open_test_instance(tmp_path / "dagster_home"), OPS_BY_JOB)
    keys = settings_keys(settings)[: DAYS + 1]
    days, training = run_loop(runner, keys, DAYS, 0)
    assert not training.failures, training.failures
    assert all(not d.failures for d in days), [d.failures for d in days]

    fs = s3fs.S3FileSystem()
    stored = fs.find(f"{BUCKET}/clickloop")
    for table in ("raw_impressions", "raw_clicks", "ad_events", "features"):
        assert f"{BUCKET}/clickloop/{table}/date={keys[1]}/part-0.parquet" in stored, table
    assert f"{BUCKET}/clickloop/{TRAINING_SET}/part-0.parquet" in stored
    # nothing of the warehouse was written locally (no stray temporary file on the bucket either)
    assert not (tmp_path / "local" / "features").exists()
    assert not [p for p in stored if p.rsplit("/", 1)[-1].startswith(".")]

    warehouse = build_resources(settings)["warehouse"].get()
    assert read_split_manifest(warehouse).split.test == keys[DAYS - 1]
    model = read_model_manifest(warehouse)
    booster = load_booster(warehouse.root / model.model_path)
    assert booster.num_boosted_rounds() == model.best_iteration + 1
    # MLflow's artifacts (the model) on the bucket too
    assert fs.find(f"{BUCKET}/mlflow"), "no MLflow artifact on the bucket"
