"""The monitoring store: daily online metrics and drift scores in a SQL database (SQLAlchemy Core).

Two tables, created when missing:

* ``online_metrics``: one row per (day, model_version) with traffic, clicks, CTR, calibration,
  normalized entropy, revenue and the share of the oracle's revenue the served policy captured;
* ``drift_metrics``: one row per day with the share of drifted features, the prediction and target
  drift scores (and whether they count as drift), the drifted columns (JSON) and the HTML report.

Writing a day replaces what the store held for it (an upsert in one transaction; the online rows of
model versions that no longer appear on the day are deleted), so re-materializing a partition never
duplicates rows. Sensors read with :meth:`MonitoringStore.latest_online_metrics`,
:meth:`MonitoringStore.online_metrics_for` and :meth:`MonitoringStore.drift_for`; every read returns
plain dicts with ``day`` as the partition key (``YYYY-MM-DD``) and ``computed_at`` as an aware UTC
datetime, identically on SQLite and PostgreSQL.

Embedded default: ``sqlite:///<data_dir>/monitoring/monitoring.db``. Production: a PostgreSQL URL
(e.g. ``postgresql://user@host:5432/clickloop``) in ``url``.
"""

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.sql.dml import Insert

from clickloop.drift import DriftRow
from clickloop.online import OnlineMetricsRow

metadata = MetaData()

online_metrics_table = Table(
    "online_metrics",
    metadata,
    Column("day", Date, primary_key=True),
    Column("model_version", String(200), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("impressions", BigInteger, nullable=False),
    Column("clicks", BigInteger, nullable=False),
    Column("ctr", Float),
    Column("mean_predicted_ctr", Float),
    Column("calibration", Float),
    Column("normalized_entropy", Float),
    Column("revenue", Float),
    Column("revenue_per_1000_requests", Float),
    Column("clicks_per_1000_requests", Float),
    Column("cold_start_share", Float),
    Column("oracle_capture", Float),
    Column("oracle_basis", String(40)),
    Column("calibration_low", Float),
    Column("calibration_high", Float),
    Column("computed_at", DateTime(timezone=True), nullable=False),
)

drift_metrics_table = Table(
    "drift_metrics",
    metadata,
    Column("day", Date, primary_key=True),
    Column("share_drifted_columns", Float, nullable=False),
    Column("prediction_drift_score", Float),
    Column("target_drift_score", Float),
    Column("prediction_drifted", Boolean),
    Column("target_drifted", Boolean),
    Column("drifted_columns", Text, nullable=False),
    Column("reference_days", Text, nullable=False),
    Column("current_rows", BigInteger, nullable=False),
    Column("reference_rows", BigInteger, nullable=False),
    Column("report_path", Text),
    Column("computed_at", DateTime(timezone=True), nullable=False),
)


def _now() -> datetime:
    return datetime.now(UTC)


def as_day(value: date | str) -> date:
    """A partition key (``YYYY-MM-DD``) or a date, as a date."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(value)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes: every timestamp in the store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _online_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["day"] = out["day"].isoformat()
    out["computed_at"] = _utc(out["computed_at"])
    return out


def _drift_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    out = _online_dict(row)
    out["drifted_columns"] = json.loads(out["drifted_columns"])
    out["reference_days"] = json.loads(out["reference_days"])
    return out


@functools.lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per URL and process, with the tables created if missing."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
    engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    try:
        metadata.create_all(engine, checkfirst=True)
    except (IntegrityError, ProgrammingError):
        # another process created the tables between the check and the CREATE: check again
        metadata.create_all(engine, checkfirst=True)
    _add_missing_columns(engine)
    return engine


def _add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns a newer version of a table has to a store created by an older one
    (an additive migration: nothing is dropped or rewritten)."""
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def _upsert(engine: Engine, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]) -> Insert:
    """INSERT ... ON CONFLICT (keys) DO UPDATE for SQLite and PostgreSQL."""
    dialect = {"postgresql": postgresql, "sqlite": sqlite}.get(engine.dialect.name)
    if dialect is None:
        raise NotImplementedError(
            f"the monitoring store supports SQLite and PostgreSQL, not {engine.dialect.name}"
        )
    statement = dialect.insert(table).values(rows)
    return statement.on_conflict_do_update(
        index_elements=list(keys),
        set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys},
    )


class MonitoringStore(ConfigurableResource):
    """Online metrics and drift scores per day, in SQLite (embedded) or PostgreSQL.

    Attributes:
        data_dir: the loop's data directory; the embedded store is
            ``<data_dir>/monitoring/monitoring.db``.
        url: a SQLAlchemy URL (e.g. ``postgresql://postgres@127.0.0.1:5432/clickloop``); empty
            means the embedded SQLite file.
    """

    data_dir: str = "data"
    url: str = ""

    def resolved_url(self) -> str:
        if self.url:
            return self.url
        path = Path(self.data_dir).expanduser().resolve() / "monitoring" / "monitoring.db"
        return f"sqlite:///{path}"

    def engine(self) -> Engine:
        return engine_for(self.resolved_url())

    # --- writes -------------------------------------------------------------------------------

    def write_online_metrics(
        self,
        day: date | str,
        rows: Sequence[OnlineMetricsRow],
        computed_at: datetime | None = None,
    ) -> None:
        """Replace the online metrics of ``day`` with ``rows`` (one per model version)."""
        versions = [r.model_version for r in rows]
        if len(set(versions)) != len(versions):
            raise ValueError(f"one row per model version and day, got {versions}")
        key, stamp = as_day(day), computed_at or _now()
        records = [{**asdict(r), "day": key, "computed_at": stamp} for r in rows]
        table = online_metrics_table
        with self.engine().begin() as conn:
            conn.execute(delete(table).where(table.c.day == key, table.c.model_version.not_in(versions)))
            if records:
                conn.execute(_upsert(conn.engine, table, records, ("day", "model_version")))

    def write_drift(self, day: date | str, row: DriftRow, computed_at: datetime | None = None) -> None:
        """Replace the drift scores of ``day``."""
        record = asdict(row)
        record["drifted_columns"] = json.dumps(record["drifted_columns"], sort_keys=True)
        record["reference_days"] = json.dumps(list(record["reference_days"]))
        record.update(day=as_day(day), computed_at=computed_at or _now())
        with self.engine().begin() as conn:
            conn.execute(_upsert(conn.engine, drift_metrics_table, [record], ("day",)))

    # --- reads (for sensors) ------------------------------------------------------------------

    def online_metrics_for(self, day: date | str) -> list[dict[str, Any]]:
        """The online metrics of ``day``, one dict per model version (sorted by version)."""
        table = online_metrics_table
        query = select(table).where(table.c.day == as_day(day)).order_by(table.c.model_version)
        with self.engine().connect() as conn:
            return [_online_dict(r) for r in conn.execute(query).mappings()]

    def latest_online_metrics(
        self,
        model_version: str | None = None,
        since: date | str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Online metrics rows, newest day first: of one model version (or all), from ``since``
        (inclusive) on, at most ``limit`` rows."""
        table = online_metrics_table
        query = select(table).order_by(table.c.day.desc(), table.c.model_version)
        if model_version is not None:
            query = query.where(table.c.model_version == model_version)
        if since is not None:
            query = query.where(table.c.day >= as_day(since))
        if limit is not None:
            query = query.limit(limit)
        with self.engine().connect() as conn:
            return [_online_dict(r) for r in conn.execute(query).mappings()]

    def drift_for(self, day: date | str) -> dict[str, Any] | None:
        """The drift scores of ``day``, or None when no drift report was computed for it."""
        table = drift_metrics_table
        with self.engine().connect() as conn:
            row = conn.execute(select(table).where(table.c.day == as_day(day))).mappings().first()
        return None if row is None else _drift_dict(row)

    def latest_drift(self, since: date | str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Drift rows, newest day first, from ``since`` (inclusive) on, at most ``limit`` rows."""
        table = drift_metrics_table
        query = select(table).order_by(table.c.day.desc())
        if since is not None:
            query = query.where(table.c.day >= as_day(since))
        if limit is not None:
            query = query.limit(limit)
        with self.engine().connect() as conn:
            return [_drift_dict(r) for r in conn.execute(query).mappings()]
