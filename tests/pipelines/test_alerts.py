"""Alerts reach a webhook: a real HTTP receiver on 127.0.0.1 takes what the alert sensors and
``make rollback`` post; a failing webhook is an error naming its host, never the loop's failure."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dagster import (
    AssetCheckResult,
    DagsterInstance,
    Definitions,
    asset,
    asset_check,
    build_run_status_sensor_context,
    define_asset_job,
)

from clickloop.alerts import Alert, retraining_alert
from pipelines.alerts import alert_sensors, failed_blocking_checks
from pipelines.jobs import TRAINING_TAGS
from resources.alerts import AlertDeliveryError, AlertWebhook


class Receiver:
    """A webhook on a free loopback port that keeps every JSON body and answers ``status``."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    webhook = Receiver()
    yield webhook
    webhook.server.shutdown()
    webhook.server.server_close()


def test_an_alert_is_posted_as_json(receiver: Receiver) -> None:
    alert = retraining_alert(
        "run-1",
        "drift_sensor",
        {
            "clickloop/day": "2026-10-13",
            "clickloop/metric": "drift_share",
            "clickloop/value": "0.333",
            "clickloop/threshold": "0.3",
            "other": "x",
        },
    )
    assert AlertWebhook(url=receiver.url).send(alert) is True
    (body,) = receiver.bodies
    assert body["kind"] == "retraining_launched"
    assert body["facts"] == {
        "run_id": "run-1",
        "day": "2026-10-13",
        "metric": "drift_share",
        "value": "0.333",
        "threshold": "0.3",
    }
    assert "drift_sensor launched a retraining" in body["text"] and "value=0.333" in body["text"]


def test_no_webhook_sends_nothing_and_a_refusing_one_is_a_clear_error(receiver: Receiver) -> None:
    alert = Alert("rollback", "champion rolled back from v3 to v2")
    assert AlertWebhook().send(alert) is False
    receiver.status = 500
    with pytest.raises(AlertDeliveryError, match=r"127\.0\.0\.1:\d+ answered 500") as caught:
        AlertWebhook(url=receiver.url).send(alert)
    assert "secret-token" not in str(caught.value)  # the URL's token is a secret
    with pytest.raises(ValueError, match="alert kind"):
        Alert("bored", "x")  # type: ignore[arg-type]


@asset(partitions_def=None)
def day_logs() -> int:
    return 1


@asset_check(asset=day_logs, blocking=True)
def bid_unit() -> AssetCheckResult:
    return AssetCheckResult(passed=False, metadata={"median_bid": 91.0})


@asset(deps=[day_logs])
def trained_model() -> int:
    return 2


def _sensor(name: str):
    return next(s for s in alert_sensors() if s.name == name)


def test_a_run_stopped_by_a_blocking_check_is_alerted_with_the_check(receiver: Receiver) -> None:
    job = define_asset_job("training_like_job", selection=[day_logs, trained_model])
    defs = Definitions(assets=[day_logs, trained_model], asset_checks=[bid_unit], jobs=[job])
    instance = DagsterInstance.ephemeral()
    result = defs.resolve_job_def("training_like_job").execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert not result.success
    assert failed_blocking_checks(instance, result.run_id) == {"day_logs:bid_unit": "-"}
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    context = build_run_status_sensor_context(
        "failure_alert_sensor",
        failure,
        instance,
        result.dagster_run,
        resources={"alerts": AlertWebhook(url=receiver.url)},
    ).for_run_failure()
    _sensor("failure_alert_sensor")(context)
    (body,) = receiver.bodies
    assert body["kind"] == "check_failed"
    assert "day_logs:bid_unit" in body["title"] and body["facts"]["run_id"] == result.run_id


def test_a_sensor_launched_retraining_is_alerted_once_with_its_trigger(receiver: Receiver) -> None:
    job = define_asset_job("retraining_like_job", selection=[trained_model], tags=TRAINING_TAGS)
    defs = Definitions(assets=[day_logs, trained_model], jobs=[job])
    instance = DagsterInstance.ephemeral()
    tags = {
        "dagster/sensor_name": "quality_sensor",
        "clickloop/trigger": "quality_sensor",
        "clickloop/day": "2026-10-20",
        "clickloop/metric": "calibration_change",
        "clickloop/value": "0.27",
        "clickloop/threshold": "0.25",
    }
    sensor = _sensor("retraining_alert_sensor")
    for run_tags in ({}, tags):  # a retraining a person launched is not alerted; a sensor's is
        result = defs.resolve_job_def("retraining_like_job").execute_in_process(
            instance=instance, tags=run_tags
        )
        start = next(e for e in result.all_events if e.event_type_value == "PIPELINE_START")
        sensor(
            build_run_status_sensor_context(
                "retraining_alert_sensor",
                start,
                instance,
                result.dagster_run,
                resources={"alerts": AlertWebhook(url=receiver.url)},
            )
        )
    (body,) = receiver.bodies
    assert body["title"] == "quality_sensor launched a retraining"
    assert body["facts"]["metric"] == "calibration_change" and body["facts"]["value"] == "0.27"


def test_make_rollback_posts_the_rollback(receiver: Receiver, tmp_path) -> None:
    from pipelines.cli.rollback import rollback
    from tests.resources.test_tracking import log_and_register, registry

    reg = registry(tmp_path, "alerted_model")
    v1, v2 = (log_and_register(reg, seed)[0] for seed in (1, 2))
    reg.promote(v1)
    reg.promote(v2)
    said = rollback(reg, AlertWebhook(url=receiver.url))
    assert said == f"champion rolled back from v{v2} to v{v1} (alert sent)"
    (body,) = receiver.bodies
    assert (body["kind"], body["facts"]) == ("rollback", {"reason": "make rollback"})
    assert body["title"] == f"champion rolled back from v{v2} to v{v1}"
