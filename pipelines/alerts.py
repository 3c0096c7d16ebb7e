"""Alert sensors: a failed run (naming the blocking checks that stopped it, else its failed steps
and their errors) and a launched retraining (naming the metric, value and threshold) are posted to
the alert webhook.

Both are run-status sensors, so one run gives one alert however often the sensors tick. Rollbacks
alert where they happen (``make rollback``). A webhook that fails is logged, not retried: an alert
must never fail the loop.
"""

from collections.abc import Mapping

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunStatusSensorContext,
    SensorDefinition,
    run_failure_sensor,
    run_status_sensor,
)

from clickloop.alerts import Alert, failed_check_alert, retraining_alert, run_failed_alert
from clickloop.retraining import TRIGGER_TAG
from pipelines.jobs import TRAINING_TAGS
from resources.alerts import AlertDeliveryError, AlertWebhook

SENSOR_TAG = "dagster/sensor_name"


def failed_blocking_checks(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    """``asset:check`` -> partition of every blocking check that failed in the run."""
    failed: dict[str, str] = {}
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = record.dagster_event.event_specific_data  # type: ignore[union-attr]
        if not evaluation.passed and evaluation.blocking:
            name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            failed[name] = evaluation.partition or "-"
    return failed


def failed_steps(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    """step -> its error, for every step that failed in the run (a ``Failure``'s description, else
    the exception's message)."""
    failed: dict[str, str] = {}
    for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        data = event.step_failure_data
        described = data.user_failure_data.description if data.user_failure_data else None
        failed[event.step_key] = described or (data.error.message.strip() if data.error else "failed")
    return failed


def failure_alert(instance: DagsterInstance, run_id: str, job: str, message: str) -> Alert:
    checks = failed_blocking_checks(instance, run_id)
    if checks:
        return failed_check_alert(run_id, job, checks)
    return run_failed_alert(run_id, job, message, failed_steps(instance, run_id))


def _deliver(context: RunStatusSensorContext, alerts: AlertWebhook, alert: Alert) -> None:
    try:
        sent = alerts.send(alert)
    except AlertDeliveryError as exc:
        context.log.warning(f"alert not delivered: {exc}; alert: {alert.text}")
        return
    context.log.info(("alert sent: " if sent else "no alert webhook set; alert: ") + alert.text)


def is_sensor_retraining(tags: Mapping[str, str]) -> bool:
    return all(tags.get(k) == v for k, v in TRAINING_TAGS.items()) and TRIGGER_TAG in tags


def alert_sensors() -> list[SensorDefinition]:
    @run_failure_sensor(name="failure_alert_sensor", default_status=DefaultSensorStatus.RUNNING)
    def failure_alert_sensor(context: RunFailureSensorContext, alerts: AlertWebhook) -> None:
        """Posts every failed run, naming the blocking checks that stopped it."""
        run = context.dagster_run
        message = context.failure_event.message or "failed"
        _deliver(context, alerts, failure_alert(context.instance, run.run_id, run.job_name, message))

    @run_status_sensor(
        name="retraining_alert_sensor",
        run_status=DagsterRunStatus.STARTED,
        default_status=DefaultSensorStatus.RUNNING,
    )
    def retraining_alert_sensor(context: RunStatusSensorContext, alerts: AlertWebhook) -> None:
        """Posts every retraining a sensor launched, with the metric that crossed its threshold."""
        run = context.dagster_run
        if is_sensor_retraining(run.tags):
            sensor = run.tags.get(SENSOR_TAG, run.tags[TRIGGER_TAG])
            _deliver(context, alerts, retraining_alert(run.run_id, sensor, run.tags))

    return [failure_alert_sensor, retraining_alert_sensor]
