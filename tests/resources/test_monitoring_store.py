"""The monitoring store on real SQLite and PostgreSQL: upserts, reads for the sensors, identical
results on both, and the additive migration of a store created by an older version.

PostgreSQL: 127.0.0.1:5432, user postgres, trust auth, database ``test`` (as on the project's
machines and CI; set CLICKLOOP_TEST_PG_URL for another server). The session gets a fresh database,
dropped at its end.
"""

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import create_engine, inspect, text

from clickloop.drift import DriftRow
from clickloop.online import OnlineMetricsRow, VersionTotals, metrics_row
from resources.monitoring_store import MonitoringStore, as_day, engine_for

ADMIN_URL = os.getenv("CLICKLOOP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh database on the local server for the session, dropped afterwards."""
    name = f"clickloop_mon_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        engine_for(url).dispose()
        engine_for.cache_clear()
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MonitoringStore:
    """An empty store: a new SQLite file, or the session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return MonitoringStore(data_dir=str(tmp_path))
    store = MonitoringStore(url=request.getfixturevalue("postgres_database"))
    with store.engine().begin() as conn:
        conn.execute(text("DELETE FROM online_metrics"))
        conn.execute(text("DELETE FROM drift_metrics"))
    return store


def online_row(version: str, clicks: int, capture: float | None = None) -> OnlineMetricsRow:
    totals = VersionTotals(version, 500, 1_000, clicks, 1_000, clicks, 30.0, 130.0, clicks * 0.5)
    return metrics_row(totals, capture, "expected" if capture is not None else None)


def test_store_upserts_and_reads_back(store: MonitoringStore) -> None:
    d1, d2 = "2026-10-01", "2026-10-02"
    store.write_online_metrics(d1, [online_row("random-v0", 30, 0.2), online_row("ctr_model-v1", 40)])
    store.write_online_metrics(d2, [online_row("ctr_model-v1", 45)])
    # re-materializing day 1: the row of the version that no longer served it is gone
    store.write_online_metrics(d1, [online_row("ctr_model-v1", 41, 0.5)])

    (day1,) = store.online_metrics_for(d1)
    assert day1["model_version"] == "ctr_model-v1" and day1["day"] == d1
    assert day1["clicks"] == 41 and day1["oracle_capture"] == 0.5
    assert day1["oracle_basis"] == "expected"
    assert day1["ctr"] == pytest.approx(0.041) and day1["revenue"] == pytest.approx(20.5)
    assert day1["clicks_per_1000_requests"] == pytest.approx(82.0)
    assert day1["computed_at"].tzinfo is not None
    assert abs((datetime.now(UTC) - day1["computed_at"]).total_seconds()) < 600
    assert [r["day"] for r in store.latest_online_metrics()] == [d2, d1]
    assert [r["clicks"] for r in store.latest_online_metrics(since=date(2026, 10, 2))] == [45]
    assert store.latest_online_metrics(model_version="random-v0") == []
    assert len(store.latest_online_metrics(model_version="ctr_model-v1", limit=1)) == 1
    assert store.online_metrics_for("2026-10-09") == []
    with pytest.raises(ValueError, match="one row per model version"):
        store.write_online_metrics(d1, [online_row("a", 1), online_row("a", 2)])
    store.write_online_metrics(d2, [])  # a day nobody served: its rows are gone
    assert store.online_metrics_for(d2) == []

    assert store.drift_for(d1) is None
    row = DriftRow(
        share_drifted_columns=0.25,
        prediction_drift_score=0.01,
        target_drift_score=0.4,
        prediction_drifted=False,
        target_drifted=False,
        drifted_columns={
            "device_type": {"score": 0.41, "method": "Jensen-Shannon distance", "threshold": 0.1}
        },
        reference_days=("2026-09-29", "2026-09-30"),
        current_rows=20_000,
        reference_rows=20_000,
        report_path="/tmp/report.html",
    )
    store.write_drift(d1, row)
    store.write_drift(d1, DriftRow(0.0, 0.0, 0.9, False, False))
    store.write_drift(d2, row)
    again = store.drift_for(d1)
    assert again["share_drifted_columns"] == 0.0 and again["drifted_columns"] == {}
    assert again["reference_days"] == [] and again["target_drifted"] is False
    assert again["report_path"] is None
    latest = store.drift_for(d2)
    assert latest["drifted_columns"]["device_type"]["score"] == 0.41
    assert latest["reference_days"] == ["2026-09-29", "2026-09-30"]
    assert latest["current_rows"] == 20_000 and latest["report_path"] == "/tmp/report.html"
    assert [r["day"] for r in store.latest_drift(since=d1)] == [d2, d1]
    assert [r["day"] for r in store.latest_drift(limit=1)] == [d2]


def test_undefined_metrics_and_a_given_time_round_trip(store: MonitoringStore) -> None:
    stamp = datetime(2026, 10, 2, 1, 30, tzinfo=UTC)
    unscored = metrics_row(VersionTotals("(missing)", 10, 20, 0, 0, 0, 0.0, 0.0, None))
    store.write_online_metrics(date(2026, 10, 1), [unscored], computed_at=stamp)
    (row,) = store.online_metrics_for(datetime(2026, 10, 1, 23, 0, tzinfo=UTC))
    assert row["computed_at"] == stamp
    assert row["calibration"] is None and row["normalized_entropy"] is None and row["revenue"] is None
    store.write_drift("2026-10-01", DriftRow(0.5, None, None, None, None), computed_at=stamp)
    drift = store.drift_for("2026-10-01")
    assert drift["prediction_drift_score"] is None and drift["prediction_drifted"] is None
    assert drift["computed_at"] == stamp


def test_days_are_partition_keys_or_dates() -> None:
    assert (
        as_day("2026-10-01")
        == as_day(date(2026, 10, 1))
        == as_day(datetime(2026, 10, 1, 5))
        == date(2026, 10, 1)
    )
    with pytest.raises(ValueError):
        as_day("yesterday")


def test_the_embedded_store_lives_under_the_data_dir(tmp_path: Path) -> None:
    store = MonitoringStore(data_dir=str(tmp_path / "data"))
    assert store.resolved_url() == f"sqlite:///{(tmp_path / 'data').resolve()}/monitoring/monitoring.db"
    store.write_online_metrics("2026-10-01", [online_row("v", 1)])
    assert (tmp_path / "data" / "monitoring" / "monitoring.db").exists()
    assert MonitoringStore(url="postgresql://x@y/z").resolved_url() == "postgresql://x@y/z"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_store_created_by_an_older_version_gets_the_new_columns(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        with create_engine(url).begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS online_metrics"))
    old = create_engine(url)
    with old.begin() as conn:  # online_metrics before oracle_basis and clicks_per_1000_requests
        conn.execute(
            text(
                "CREATE TABLE online_metrics (day DATE NOT NULL, model_version VARCHAR(200) NOT NULL, "
                "requests BIGINT NOT NULL, impressions BIGINT NOT NULL, clicks BIGINT NOT NULL, ctr FLOAT, "
                "mean_predicted_ctr FLOAT, calibration FLOAT, normalized_entropy FLOAT, revenue FLOAT, "
                "revenue_per_1000_requests FLOAT, oracle_capture FLOAT, computed_at TIMESTAMP WITH TIME ZONE "
                "NOT NULL, PRIMARY KEY (day, model_version))"
            )
        )
        conn.execute(
            text(
                "INSERT INTO online_metrics VALUES ('2026-09-30', 'random-v0', 1, 2, 0, 0.0, NULL, NULL, NULL, "
                "0.0, 0.0, NULL, '2026-10-01 00:00:00+00:00')"
            )
        )
    old.dispose()
    engine_for.cache_clear()
    store = MonitoringStore(url=url)
    columns = {c["name"] for c in inspect(store.engine()).get_columns("online_metrics")}
    assert {"oracle_basis", "clicks_per_1000_requests", "calibration_low", "calibration_high"} <= columns
    (kept,) = store.online_metrics_for("2026-09-30")  # nothing dropped or rewritten
    assert kept["impressions"] == 2 and kept["oracle_basis"] is None and kept["calibration_low"] is None
    row = online_row("v", 3, 0.1)
    store.write_online_metrics("2026-10-01", [row])
    (stored,) = store.online_metrics_for("2026-10-01")
    assert stored["oracle_basis"] == "expected"
    assert (stored["calibration_low"], stored["calibration_high"]) == pytest.approx(
        (row.calibration_low, row.calibration_high)
    )
    engine_for(url).dispose()
    engine_for.cache_clear()
    if backend == "postgresql":  # leave the session's database as the other tests expect it
        with create_engine(url).begin() as conn:
            conn.execute(text("DROP TABLE online_metrics"))
        MonitoringStore(url=url).engine()
