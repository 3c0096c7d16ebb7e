"""Run the loop's jobs in this process, partition by partition, on a persistent Dagster instance.

What ``make run``, ``make scenario`` and the benchmark share: a :class:`LoopRunner` executes a job of
the definitions for a partition (``execute_in_process`` on the instance, so ``make ui`` shows every
run afterwards) and reads back what happened as a :class:`RunReport`.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dagster import DagsterInstance, Definitions, ExecuteInProcessResult

#: The run's own log goes to the instance (the UI shows it); the terminal gets only what matters.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
SILENT = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class RunReport:
    """What one run did, read back from its events."""

    job: str
    partition: str | None
    run_id: str
    success: bool
    seconds: float
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    result: ExecuteInProcessResult | None = field(default=None, repr=False)


def _report(job: str, partition: str | None, result: ExecuteInProcessResult, seconds: float) -> RunReport:
    report = RunReport(job, partition, result.run_id, result.success, seconds, result=result)
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        report.metadata[materialization.asset_key.to_user_string()] = {
            k: getattr(v, "value", v) for k, v in materialization.metadata.items()
        }
    for evaluation in result.get_asset_check_evaluations():
        report.checks[evaluation.check_name] = evaluation.passed
    for event in result.all_events:
        if event.is_step_failure and event.event_specific_data.error:
            error = event.event_specific_data.error
            while error.cause is not None:  # the user's error, not Dagster's wrapper
                error = error.cause
            report.failures.append(f"{event.step_key}: {error.message.strip().splitlines()[0]}")
    return report


class LoopRunner:
    """Executes the definitions' jobs in this process on one instance."""

    def __init__(self, defs: Definitions, instance: DagsterInstance, run_config: Mapping[str, Any] = QUIET):
        self.defs = defs
        self.instance = instance
        self.run_config = dict(run_config)

    def run(
        self,
        job: str,
        partition: str | None = None,
        tags: Mapping[str, str] | None = None,
        echo: bool = True,
        ops: Mapping[str, Any] | None = None,
    ) -> RunReport:
        """Execute ``job`` (for ``partition``, with the assets' ``ops`` config); failures are
        reported, not raised."""
        start = time.perf_counter()
        run_config = {**self.run_config, **({"ops": dict(ops)} if ops else {})}
        result = self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance,
            partition_key=partition,
            raise_on_error=False,
            tags=dict(tags or {}),
            run_config=run_config,
        )
        report = _report(job, partition, result, time.perf_counter() - start)
        if echo:
            status = "ok" if report.success else "FAILED"
            print(
                f"  {job:<17} {partition or '':<10}  {status:<6} {report.seconds:5.1f}s  run {report.run_id[:8]}",
                flush=True,
            )
            for failure in report.failures:
                print(f"    {failure}", flush=True)
        return report
