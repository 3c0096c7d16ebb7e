"""What each heavy step asks of a Kubernetes node: CPU and memory as ``dagster-k8s/config`` op tags.

Read by Kubernetes only: ``k8s_job_executor`` (``CLICKLOOP_EXECUTOR=k8s``) starts each step as its
own pod with these requests and limits (``deploy/k8s/dagster.yaml`` holds the instance with the
``K8sRunLauncher``); every other executor ignores them. Sized for a day of 100M impressions from
the measured per-row costs (README, "Beyond one machine"): DuckDB spills past its memory limit, so
the SQL steps stay within a few GiB whatever the day's size; training on one pod is for days a pod
holds, larger ones train on a Dask cluster (``CLICKLOOP_DASK_SCHEDULER``).
"""

from typing import Any

#: (CPU request, memory request, memory limit) per asset (a multi-asset: its first key); CPU is not limited (no throttling).
COMPUTE: dict[str, tuple[str, str, str]] = {
    "raw_impressions": ("2", "6Gi", "8Gi"),
    "raw_clicks": ("1", "2Gi", "4Gi"),
    "ad_events": ("2", "6Gi", "8Gi"),
    "feature_stats": ("2", "4Gi", "6Gi"),
    "features": ("2", "6Gi", "8Gi"),
    "training_set": ("2", "6Gi", "8Gi"),
    "ctr_model": ("4", "24Gi", "28Gi"),
}


def k8s_op_tags(asset: str) -> dict[str, Any]:
    """The ``dagster-k8s/config`` op tag of one asset's step (empty for an asset not listed)."""
    if asset not in COMPUTE:
        return {}
    cpu, memory, memory_limit = COMPUTE[asset]
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}}
    return {"dagster-k8s/config": {"container_config": {"resources": resources}}}
