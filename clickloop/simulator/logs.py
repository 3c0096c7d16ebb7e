"""The simulator's logs on disk: a landing folder exactly as an ad server hands it over.

- ``landing/impressions/date=D/impressions-D.jsonl.gz``: one JSON line per ad shown on day ``D``;
- ``landing/clicks/date=D/clicks-from-D.jsonl.gz`` and ``landing/clicks/date=D+1/clicks-from-D.jsonl.gz``:
  the clicks on day ``D``'s impressions, partitioned by the click's own timestamp, so the clicks
  folder of ``D`` is complete once days ``D-1`` and ``D`` have been simulated;
- ``landing/exploration/date=D/candidates-D.parquet``: on days the ad server explored, every
  candidate of every request it ranked uniformly at random (what an off-policy estimate needs);
- ``landing/_simulator/D.json``: the manifest, with the day's true counts and the exact number of
  every injected fault, written last (its presence means the day is complete).

Every file is written atomically and deterministically (gzip without a timestamp).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from isal import igzip

from clickloop.landing import exploration_path
from clickloop.simulator.clock import MS_PER_DAY, day_start_ms, epoch_ms, iso_ms
from clickloop.simulator.faults import (
    ClickFile,
    FaultRates,
    FilePlan,
    apply_edit,
    plan_clicks,
    plan_impressions,
)
from clickloop.simulator.traffic import (
    CLICK_FIELDS,
    IMPRESSION_FIELDS,
    DayTraffic,
    day_streams,
    require_fields,
)
from clickloop.storage import atomic_write

RENDER_CHUNK_ROWS = 200_000


def _render(frame: pd.DataFrame) -> list[str]:
    """JSON lines of a frame (ts as epoch milliseconds is formatted as ISO-8601 first)."""
    if frame.empty:
        return []
    out = frame.copy()
    out["ts"] = iso_ms(out["ts"].to_numpy())
    return out.to_json(orient="records", lines=True, force_ascii=True).rstrip("\n").split("\n")


def _write_plan(path: Path, plan: FilePlan) -> int:
    """Render a plan chunk by chunk into a deterministic gzip file; returns the line count."""

    edited = np.array(sorted(plan.edits), dtype=np.int64)

    def write(handle: object) -> None:
        with igzip.IGzipFile(filename="", mode="wb", compresslevel=1, fileobj=handle, mtime=0) as gz:
            for start in range(0, len(plan.order), RENDER_CHUNK_ROWS):
                lines = _render(plan.frame.take(plan.order[start : start + RENDER_CHUNK_ROWS]))
                for position in edited[(edited >= start) & (edited < start + len(lines))].tolist():
                    lines[position - start] = apply_edit(lines[position - start], *plan.edits[position])
                if lines:
                    gz.write(("\n".join(lines) + "\n").encode("ascii"))

    atomic_write(path, write)
    return len(plan.order)


def impressions_path(landing_dir: str | Path, day: date) -> Path:
    """Where the impressions of ``day`` land."""
    return Path(landing_dir) / "impressions" / f"date={day}" / f"impressions-{day}.jsonl.gz"


def clicks_path(landing_dir: str | Path, landing_day: date, source_day: date) -> Path:
    """Where the clicks that happened on ``landing_day`` on impressions of ``source_day`` land."""
    return Path(landing_dir) / "clicks" / f"date={landing_day}" / f"clicks-from-{source_day}.jsonl.gz"


def _write_exploration(traffic: DayTraffic, landing_dir: Path) -> dict:
    """Write the day's exploration log (Parquet, atomically); its manifest entry."""
    frame = traffic.exploration
    assert frame is not None
    path = exploration_path(landing_dir, traffic.day)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    atomic_write(path, lambda handle: pq.write_table(table, handle))
    return {
        "path": path.relative_to(landing_dir).as_posix(),
        "requests": int(frame["request_id"].nunique()),
        "candidates": len(frame),
    }


def manifest_path(landing_dir: str | Path, day: date) -> Path:
    """Where the manifest of simulated ``day`` lands."""
    return Path(landing_dir) / "_simulator" / f"{day}.json"


def read_manifest(landing_dir: str | Path, day: date) -> dict:
    """The manifest of ``day`` (FileNotFoundError if the day was not simulated)."""
    return json.loads(manifest_path(landing_dir, day).read_text())


def _click_files(traffic: DayTraffic) -> list[ClickFile]:
    """The clean clicks of a day split by the landing date of their own timestamp."""
    ts_ms = epoch_ms(traffic.clicks["ts"])
    impression_ts = epoch_ms(traffic.impressions["ts"])[traffic.click_impression_row]
    landing = (ts_ms // MS_PER_DAY) - (day_start_ms(traffic.day) // MS_PER_DAY)
    files = []
    for offset in (0, 1):
        keep = landing == offset
        files.append(
            ClickFile(
                click_id=traffic.clicks["click_id"].to_numpy()[keep],
                impression_id=traffic.clicks["impression_id"].to_numpy()[keep],
                ts_ms=ts_ms[keep],
                impression_ts_ms=impression_ts[keep],
                impression_row=traffic.click_impression_row[keep],
                landing_day=traffic.day + timedelta(days=offset),
                same_day=offset == 0,
            )
        )
    return files


def _file_entry(kind: str, landing_day: date, plan: FilePlan, lines: int) -> dict:
    """The manifest entry of one written file."""
    records = len(plan.order) - sum(
        plan.faults.get(name, 0) for name in ("duplicate_impression", "duplicate_click", "orphan_click")
    )
    return {
        "kind": kind,
        "landing_date": landing_day.isoformat(),
        "records": records,
        "lines": lines,
        "unaltered_records": records - len(plan.altered_rows),
        "faults": dict(plan.faults),
        **plan.details,
    }


def write_day(
    traffic: DayTraffic,
    landing_dir: str | Path,
    faults: FaultRates | None = None,
    *,
    settings: Mapping | None = None,
) -> dict:
    """Write a simulated day's logs (with injected faults) and then its manifest; returns it.

    ``records`` of a file counts its clean records, ``lines`` everything written;
    lines = records + duplicates + orphan clicks, and ``unaltered_records`` = records minus those
    corrupted in place (malformed, wrong type, null field, click before impression).
    ``clicks_on_faulty_impressions`` counts a click file's unaltered clicks whose impression line
    was corrupted (they look like orphans to an ingest). ``faults`` totals per log kind.
    """
    require_fields(traffic.impressions, IMPRESSION_FIELDS, "impression")
    require_fields(traffic.clicks, CLICK_FIELDS, "click")
    faults = faults if faults is not None else FaultRates()
    *_, rng = day_streams(traffic.seed, traffic.day)
    landing_dir = Path(landing_dir)
    files: dict[str, dict] = {}

    imp_plan = plan_impressions(
        traffic.impressions.assign(ts=epoch_ms(traffic.impressions["ts"])), faults, rng
    )
    path = impressions_path(landing_dir, traffic.day)
    files[path.relative_to(landing_dir).as_posix()] = _file_entry(
        "impressions", traffic.day, imp_plan, _write_plan(path, imp_plan)
    )

    faulty_impressions = np.zeros(len(traffic.impressions), dtype=bool)
    faulty_impressions[imp_plan.altered_rows] = True
    next_click = len(traffic.clicks) + 1
    for click_file in _click_files(traffic):
        plan, next_click = plan_clicks(
            click_file, faults, rng, next_click, traffic.day, len(traffic.impressions)
        )
        path = clicks_path(landing_dir, click_file.landing_day, traffic.day)
        entry = _file_entry("clicks", click_file.landing_day, plan, _write_plan(path, plan))
        unaltered = np.ones(len(click_file.impression_row), dtype=bool)
        unaltered[plan.altered_rows] = False
        entry["clicks_on_faulty_impressions"] = int(
            faulty_impressions[click_file.impression_row[unaltered]].sum()
        )
        files[path.relative_to(landing_dir).as_posix()] = entry

    manifest = _manifest(traffic, faults, files, settings)
    if traffic.exploration is not None:
        manifest["exploration"] = _write_exploration(traffic, landing_dir)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write(manifest_path(landing_dir, traffic.day), lambda handle: handle.write(text.encode()))
    return manifest


def _manifest(
    traffic: DayTraffic, faults: FaultRates, files: dict[str, dict], settings: Mapping | None
) -> dict:
    """The day's true counts, revenue and exact fault counts."""
    totals: dict[str, dict[str, int]] = {"impressions": {}, "clicks": {}}
    for entry in files.values():
        kind_totals = totals[entry["kind"]]
        for name, count in entry["faults"].items():
            kind_totals[name] = kind_totals.get(name, 0) + count
    clicks_by_date = {
        entry["landing_date"]: entry["records"] for entry in files.values() if entry["kind"] == "clicks"
    }
    return {
        "day": traffic.day.isoformat(),
        "seed": traffic.seed,
        "scenario": traffic.scenario.name,
        "scenario_start": traffic.scenario.start.isoformat() if traffic.scenario.start else None,
        "scenario_active": traffic.scenario_active,
        "policy_version": traffic.policy_version,
        "requests": traffic.n_requests,
        "impressions": len(traffic.impressions),
        "clicks": len(traffic.clicks),
        "clicks_by_landing_date": clicks_by_date,
        "revenue": round(float(traffic.true_bid_cpc[traffic.clicked].sum()), 2),
        "expected_revenue": round(float((traffic.true_ctr * traffic.true_bid_cpc).sum()), 4),
        "oracle_expected_revenue": (
            None if traffic.oracle_expected_revenue is None else round(traffic.oracle_expected_revenue, 4)
        ),
        "fault_rates": asdict(faults),
        "faults": totals,
        "files": files,
        "settings": dict(settings or {}),
    }
