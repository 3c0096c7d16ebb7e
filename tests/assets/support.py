"""Small building blocks of the asset tests that do not read the shared history: the default
calendar and contract, hand-written landing logs, typed tables in the contract's schema."""

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetExecutionContext, MaterializeResult, asset, materialize

from assets.features import features_check
from assets.partitions import Calendar
from clickloop.contract import LogSpec
from clickloop.contract_file import load_contract
from clickloop.features import DEFAULT_WINDOW_DAYS

CALENDAR = Calendar("2026-10-01", DEFAULT_WINDOW_DAYS)
KEYS = CALENDAR.keys()
DAY = KEYS[0]
#: the simulator's contract, the default
CONTRACT = load_contract()

_ARROW_TYPES = {
    "string": pa.string(),
    "int": pa.int32(),
    "float": pa.float64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def day_start(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def typed_schema(spec: LogSpec) -> pa.Schema:
    """The schema of a typed raw table (what ingest writes): the contract's columns, then where
    each row came from."""
    fields = [(f.column, _ARROW_TYPES[f.type]) for f in spec.fields]
    return pa.schema([*fields, ("source_file", pa.string()), ("line_number", pa.int64())])


def impression_records(day: str, n: int, seed: int = 0, price_scale: float = 1.0) -> list[dict[str, Any]]:
    """``n`` clean impressions of ``day`` (pages of two ads, prices in currency units) as the
    simulator's contract names their fields."""
    rng = np.random.default_rng(seed)
    start = day_start(day)
    step = timedelta(days=1) / n
    return [
        {
            "impression_id": f"imp-{day}-{i}",
            "ts": start + i * step,
            "request_id": f"req-{i // 2}",
            "user_id": f"user-{i // 2 % 50}",
            "user_segment": f"segment-{i % 3}",
            "ad_id": f"ad-{i % 40}",
            "campaign_id": f"campaign-{i % 10}",
            "advertiser_id": f"advertiser-{i % 5}",
            "ad_category": f"category-{i % 4}",
            "site_id": f"site-{i % 7}",
            "site_category": f"site-category-{i % 3}",
            "device_type": ["mobile", "desktop"][i % 2],
            "os": ["ios", "android", "windows"][i % 3],
            "country": ["US", "DE"][i % 2],
            "position": 1 + i % 2,
            "bid_cpc": round(float(rng.uniform(0.05, 3.0)) * price_scale, 4),
            "model_version": "random-v0",
            "predicted_ctr": 0.03,
        }
        for i in range(n)
    ]


def typed_impressions(records: Sequence[Mapping[str, Any]], spec: LogSpec) -> pa.Table:
    """Records as the typed ``raw_impressions`` table ingest would have written."""
    rows = [
        {**{c: r.get(c) for c in spec.columns}, "source_file": "impressions-0.jsonl", "line_number": i + 1}
        for i, r in enumerate(records)
    ]
    return pa.Table.from_pylist(rows, schema=typed_schema(spec))


def json_line(record: Mapping[str, Any]) -> str:
    """One JSON log line (timestamps as ISO-8601 with a Z)."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return value

    return json.dumps({k: plain(v) for k, v in record.items()})


def write_landing(
    landing: Path, kind: str, day: str, lines: Sequence[str], name: str = "part-0.jsonl"
) -> Path:
    """A landing file of ``kind`` for ``day`` (``<landing>/<kind>/date=<day>/<name>``)."""
    folder = landing / kind / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def write_broken_features(instance: Any, warehouse: Any, day: str) -> bool:
    """Materialize ``features`` of ``day`` on ``instance`` as one row in a third ad slot (a hard
    contract broken), with the real blocking check; whether the check passed (it should not).
    ``warehouse`` is the :class:`resources.warehouse.WarehouseResource` of the loop."""
    good = pq.read_table(warehouse.get().partition_path("features", day))

    @asset(name="features", partitions_def=CALENDAR.partitions)
    def broken_features(context: AssetExecutionContext) -> MaterializeResult:
        position = good["position"].to_numpy().copy()
        position[0] = 3
        table = good.set_column(
            good.schema.get_field_index("position"),
            good.schema.field("position"),
            pa.array(position, good.schema.field("position").type),
        )
        warehouse.get().write_partition("features", context.partition_key, table)
        return MaterializeResult()

    result = materialize(
        [broken_features, features_check(CALENDAR, CONTRACT)],
        partition_key=day,
        instance=instance,
        resources={"warehouse": warehouse},
        raise_on_error=False,
    )
    return all(e.passed for e in result.get_asset_check_evaluations())
