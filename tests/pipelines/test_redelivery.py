"""Logs delivered again, on a copy of the shared history: a file added to a day already ingested
changes its delivery fingerprint; ``redelivery_sensor`` re-ingests that day (and only it); the new
data version makes the events built on it stale, as the UI shows them; ``events_after_redelivery``
asks for the events of D-1, D and D+1; once rebuilt they are fresh and nothing fires again. A day
whose ingest failed on a file cut off in transfer is left alone until the file is delivered again,
then ingested; the failure's alert names the file. So is a day whose files had not arrived when its
ingest ran."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    RunRequest,
    build_run_status_sensor_context,
    build_sensor_context,
)
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from assets.raw_logs import LANDING_FINGERPRINT
from pipelines.alerts import failure_alert
from pipelines.cli.runner import QUIET
from pipelines.definitions import build_defs
from pipelines.redelivery import REDELIVERY_TAG
from pipelines.settings import Settings
from tests.assets.history import History, metadata_of, open_test_instance, settings_keys
from tests.assets.support import DAY, impression_records, json_line, write_landing

LATE_LINES = 5


class Loop(Protocol):
    """What a sensor tick needs of a loop: its definitions and Dagster instance."""

    defs: Definitions
    instance: DagsterInstance


def tick(loop: Loop, name: str) -> tuple[list[RunRequest], str | None]:
    """One tick of a sensor on the loop's instance and resources, as the daemon would run it."""
    repo = loop.defs.get_repository_def()
    with build_sensor_context(
        instance=loop.instance,
        repository_def=repo,
        resources=repo.get_top_level_resources(),
        sensor_name=name,
    ) as context:
        evaluation = repo.get_sensor_def(name).evaluate_tick(context)
    return list(evaluation.run_requests or []), evaluation.skip_message


def stale(loop: History, asset: str, day: str) -> StaleStatus:
    resolver = CachingStaleStatusResolver(
        loop.instance, loop.defs.resolve_asset_graph(), LoadingContextForTest(loop.instance)
    )
    return resolver.get_status(AssetKey(asset), day)


def test_a_day_delivered_again_is_reingested_and_its_events_rebuilt(history: History, tmp_path: Path) -> None:
    loop = history.copy(tmp_path / "loop")
    day = loop.keys[4]
    requests, skipped = tick(loop, "redelivery_sensor")
    assert requests == [] and "unchanged" in (skipped or "")
    before = metadata_of(loop.instance, "raw_impressions", day)
    assert stale(loop, "ad_events", day) == StaleStatus.FRESH

    # the ad server delivers a late file for the day (five of its impressions, sent twice)
    folder = loop.root / "data" / "landing" / "impressions" / f"date={day}"
    original = sorted(folder.glob("*.jsonl.gz"))[0]
    lines = gzip.decompress(original.read_bytes()).splitlines()[:LATE_LINES]
    (folder / "late-delivery.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    (request,), _ = tick(loop, "redelivery_sensor")
    assert request.partition_key == day and request.tags[REDELIVERY_TAG] == "raw_impressions"
    assert request.run_key.startswith(f"redelivery:{day}:")
    ingest = loop.defs.resolve_job_def("ingest_job").execute_in_process(
        instance=loop.instance, partition_key=day, tags=request.tags, run_config=QUIET
    )
    assert ingest.success
    after = metadata_of(loop.instance, "raw_impressions", day)
    assert after["lines_read"] == before["lines_read"] + LATE_LINES
    assert after[LANDING_FINGERPRINT] != before[LANDING_FINGERPRINT]
    assert "late-delivery.jsonl" in after["landing_files"]
    # the new delivery is a new data version: what was built on the day is stale
    assert stale(loop, "ad_events", day) == StaleStatus.STALE
    assert stale(loop, "raw_impressions", day) == StaleStatus.FRESH
    assert tick(loop, "redelivery_sensor")[0] == []  # the re-ingested day is up to date

    context = build_run_status_sensor_context(
        sensor_name="events_after_redelivery",
        dagster_event=ingest.get_run_success_event(),
        dagster_instance=loop.instance,
        dagster_run=ingest.dagster_run,
    )
    rebuilds = loop.defs.get_repository_def().get_sensor_def("events_after_redelivery")(context)
    keys = loop.keys
    # impressions of D are read by the events of D and D+1 (duplicates across midnight)
    assert [r.partition_key for r in rebuilds] == keys[4:6]
    events_before = metadata_of(loop.instance, "ad_events", day)
    rebuilt = loop.defs.resolve_job_def("events_job").execute_in_process(
        instance=loop.instance,
        partition_key=day,
        asset_selection=[AssetKey("ad_events"), AssetKey("features")],
        run_config=QUIET,
    )
    assert rebuilt.success
    events_after = metadata_of(loop.instance, "ad_events", day)
    # the late copies are duplicates of impressions already logged: quarantined, not new events
    assert events_after["duplicate_impressions"] == events_before["duplicate_impressions"] + LATE_LINES
    assert events_after["dagster/row_count"] == events_before["dagster/row_count"]
    assert stale(loop, "ad_events", day) == StaleStatus.FRESH

    # a run without the redelivery tag rebuilds nothing through this sensor
    plain = build_run_status_sensor_context(
        sensor_name="events_after_redelivery",
        dagster_event=rebuilt.get_run_success_event(),
        dagster_instance=loop.instance,
        dagster_run=rebuilt.dagster_run,
    )
    assert not isinstance(
        loop.defs.get_repository_def().get_sensor_def("events_after_redelivery")(plain), list
    )


def test_a_day_whose_file_broke_in_transfer_is_ingested_once_delivered_whole(
    history: History, tmp_path: Path
) -> None:
    loop = history.copy(tmp_path / "loop")
    day = settings_keys(loop.settings)[len(loop.keys)]  # the day after the history: never ingested

    def run(job: str, tags: dict[str, str] | None = None):  # noqa: ANN202 (ExecuteInProcessResult)
        return loop.defs.resolve_job_def(job).execute_in_process(
            instance=loop.instance, partition_key=day, tags=tags, run_config=QUIET, raise_on_error=False
        )

    assert run("feature_stats_job").success
    broken = sorted(loop.simulator.partition_files("impressions", day))[0]  # the ad server logs the day
    whole = broken.read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])  # cut off in transfer

    failed = run("ingest_job")
    assert not failed.success
    assert day not in loop.instance.get_materialized_partitions(AssetKey("raw_impressions"))
    alert = failure_alert(loop.instance, failed.run_id, "ingest_job", "failed")
    assert alert.kind == "run_failed" and "raw_impressions" in alert.title
    assert str(broken) in alert.facts["raw_impressions"] and "breaks off" in alert.facts["raw_impressions"]

    # the same broken file is not read again: the day waits for a new delivery, and says so
    requests, skipped = tick(loop, "redelivery_sensor")
    assert requests == [] and f"raw_impressions {day}" in (skipped or ""), skipped
    assert "delivered again" in (skipped or "")

    broken.write_bytes(whole)  # delivered again, whole
    (request,), _ = tick(loop, "redelivery_sensor")
    assert request.partition_key == day and request.tags[REDELIVERY_TAG] == "raw_impressions"
    assert run("ingest_job", dict(request.tags)).success
    lines = sum(gzip.decompress(p.read_bytes()).count(b"\n") for p in broken.parent.glob("*.gz"))
    assert metadata_of(loop.instance, "raw_impressions", day)["lines_read"] == lines
    requests, skipped = tick(loop, "redelivery_sensor")
    assert requests == [] and f"raw_impressions {day}" not in (skipped or ""), skipped


@dataclass
class LandingLoop:
    defs: Definitions
    instance: DagsterInstance


def test_a_day_not_delivered_when_its_ingest_ran_is_ingested_once_its_files_arrive(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    settings = Settings(
        data_dir=tmp_path / "data",
        log_source="landing",
        resources={"log_source": {"landing_dir": str(landing)}},
    )
    loop = LandingLoop(build_defs(settings), open_test_instance(tmp_path / "dagster_home"))

    def ingest(tags: dict[str, str] | None = None):  # noqa: ANN202 (ExecuteInProcessResult)
        return loop.defs.resolve_job_def("ingest_job").execute_in_process(
            instance=loop.instance, partition_key=DAY, tags=tags, run_config=QUIET, raise_on_error=False
        )

    assert not ingest().success  # the schedule ran before the ad server delivered the day
    requests, skipped = tick(loop, "redelivery_sensor")
    assert (
        requests == []
        and f"raw_impressions {DAY}" in (skipped or "")
        and f"raw_clicks {DAY}" in (skipped or "")
    )
    # waiting for a first delivery, not an ingested day whose files went missing
    assert "wait for them to be delivered" in (skipped or "") and "have no files now" not in (skipped or "")

    write_landing(landing, "impressions", DAY, [json_line(r) for r in impression_records(DAY, 300)])
    (request,), _ = tick(loop, "redelivery_sensor")
    assert request.partition_key == DAY and request.tags[REDELIVERY_TAG] == "raw_impressions"
    ingest(dict(request.tags))
    assert metadata_of(loop.instance, "raw_impressions", DAY)["lines_read"] == 300
    # the clicks are still missing: the day waits for them, and only for them
    requests, skipped = tick(loop, "redelivery_sensor")
    assert requests == [] and f"raw_clicks {DAY}" in (skipped or "")
    assert f"raw_impressions {DAY}" not in (skipped or "")
