"""The Kubernetes deployment, validated offline (no cluster here): ``deploy/k8s/dagster.yaml`` loads as
a Dagster instance config with the ``K8sRunLauncher``, and the Job manifests dagster-k8s renders for
the heavy steps carry the CPU and memory their assets ask for (``assets/compute.py``)."""

from pathlib import Path

import pytest
from dagster import AssetKey
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config
from dagster_k8s.launcher import K8sRunLauncher

from assets.compute import COMPUTE
from pipelines.definitions import build_defs
from pipelines.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


@pytest.fixture()
def instance_config(monkeypatch: pytest.MonkeyPatch) -> dict:
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("CLICKLOOP_IMAGE", "registry.example/clickloop:1")
    config, _ = dagster_instance_config(str(DEPLOY))
    return dict(config)


def test_the_instance_config_loads_with_the_k8s_run_launcher(instance_config: dict) -> None:
    launcher = instance_config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert "postgres" in instance_config["storage"]
    # the launcher's own schema accepts its block
    from dagster._config import process_config

    result = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, result.errors
    assert result.value["job_image"] == "registry.example/clickloop:1"
    assert result.value["run_k8s_config"]["container_config"]["resources"]["limits"]["memory"] == "1Gi"


def test_step_manifests_render_with_the_assets_resources(tmp_path: Path, instance_config: dict) -> None:
    defs = build_defs(Settings(data_dir=tmp_path, executor="k8s"))
    assert defs.executor is not None and defs.executor.name == "k8s"
    launcher = instance_config["run_launcher"]["config"]
    job_config = DagsterK8sJobConfig(
        job_image="registry.example/clickloop:1",
        dagster_home=launcher["dagster_home"],
        image_pull_policy=launcher["image_pull_policy"],
        service_account_name=launcher["service_account_name"],
        instance_config_map=launcher["instance_config_map"],
        env_config_maps=launcher["env_config_maps"],
        env_secrets=launcher["env_secrets"],
    )
    for asset, (cpu, memory, memory_limit) in COMPUTE.items():
        tags = defs.resolve_assets_def(AssetKey(asset)).op.tags
        user_config = get_user_defined_k8s_config(tags)
        manifest = construct_dagster_k8s_job(
            job_config,
            ["dagster", "api", "execute_step"],
            f"dagster-step-{asset.replace('_', '-')}",
            user_config,
        ).to_dict()
        container = manifest["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"] == {"cpu": cpu, "memory": memory}, asset
        assert container["resources"]["limits"] == {"memory": memory_limit}, asset
        assert container["image"] == "registry.example/clickloop:1"
        assert manifest["spec"]["template"]["spec"]["service_account_name"] == "clickloop-dagster"
