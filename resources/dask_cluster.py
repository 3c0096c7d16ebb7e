"""A Dask cluster for training, as a Dagster resource: the scheduler's address, or none.

With no address (the default) the model trains on the machine that runs the step
(:func:`clickloop.training.fit_ctr_model`); with ``CLICKLOOP_DASK_SCHEDULER`` set
(``tcp://host:8786``), on the cluster's workers (:func:`clickloop.dask_training.fit_ctr_model_dask`),
which must reach the training set's file: a shared path or an object-storage URL.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import ConfigurableResource
from pydantic import Field


class DaskCluster(ConfigurableResource):
    """Where training runs: a Dask scheduler's address, or empty for the local machine."""

    scheduler_address: str = Field(
        default="", description="tcp://host:port of a running Dask scheduler; empty: train locally"
    )
    #: seconds to wait for the scheduler (and for at least one worker)
    timeout_s: int = 60

    @property
    def enabled(self) -> bool:
        return bool(self.scheduler_address)

    @contextmanager
    def client(self) -> Iterator["distributed.Client"]:  # noqa: F821
        """A client of the scheduler with at least one worker, closed afterwards."""
        from distributed import Client

        if not self.enabled:
            raise ValueError("no Dask scheduler is configured: set CLICKLOOP_DASK_SCHEDULER")
        with Client(self.scheduler_address, timeout=self.timeout_s) as client:
            client.wait_for_workers(1, timeout=self.timeout_s)
            yield client
