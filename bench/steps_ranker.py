"""The ranking service under load: ``POST /rank`` with 32 candidates over loopback HTTP at a fixed
rate (200 requests a second for 30 seconds; ``CLICKLOOP_BENCH_RANKER_SECONDS`` shortens it), p50,
p99 and throughput, against the same ranking called in-process (no HTTP, no JSON).
``CLICKLOOP_BENCH_RANKER_RATE`` changes the rate.

Only the standard library at module level (the parent imports this module).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import ROOT, SEED, Ctx
from bench.steps_model import FEATURE_STATS, model_path

RANKER_CANDIDATES = 32
RANKER_RATE = float(os.environ.get("CLICKLOOP_BENCH_RANKER_RATE", "200"))
RANKER_SECONDS = float(os.environ.get("CLICKLOOP_BENCH_RANKER_SECONDS", "30"))
#: distinct requests, sent round robin
RANKER_REQUESTS = 200
#: in-process calls timed on the floor's side (fewer for a short load: the smoke test)
FLOOR_CALLS = min(1_000, max(100, int(RANKER_RATE * RANKER_SECONDS)))
GOAL_P99_MS = 25.0


def ranker_points(size: int, sizes: Sequence[int]) -> tuple[int, ...]:
    """Size-independent: measured once, at the run's first size, with 32 candidates."""
    return (RANKER_CANDIDATES,) if size == sizes[0] else ()


def _requests(ctx: Ctx) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Simulated requests of day D, each with 32 candidate ad ids, and the catalog of those ads."""
    import numpy as np

    from clickloop.simulator import World, candidate_frame, draw_context

    world = World(SEED)
    n, k = RANKER_REQUESTS, RANKER_CANDIDATES
    rng = np.random.default_rng([SEED, 12])
    context = draw_context(world, world.scenario, ctx.day(), n, rng)
    ads = np.stack([rng.choice(len(world.ad_bid_cpc), k, replace=False) for _ in range(n)]).ravel()
    frame = candidate_frame(world, ctx.day(), context, np.repeat(np.arange(n), k), ads)
    request_columns = ("user_id", "user_segment", "site_id", "site_category", "device_type", "os", "country")
    bodies = []
    for i in range(n):
        rows = frame.iloc[i * k : (i + 1) * k]
        first = rows.iloc[0]
        body_context = {"ts": first["ts"].isoformat(), **{c: str(first[c]) for c in request_columns}}
        bodies.append({"context": body_context, "candidates": [str(a) for a in rows["ad_id"]], "k": 2})
    catalog = {
        str(r["ad_id"]): {
            "advertiser_id": str(r["advertiser_id"]),
            "ad_category": str(r["ad_category"]),
            "bid_cpc": float(r["bid_cpc"]),
        }
        for r in frame.drop_duplicates("ad_id").to_dict("records")
    }
    return bodies, catalog


def _inputs(ctx: Ctx) -> tuple[list[dict[str, Any]], Path]:
    bodies, catalog = _requests(ctx)
    path = ctx.work / "ranker" / "catalog.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(catalog))
    return bodies, path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ranker_ours(ctx: Ctx) -> dict[str, object]:
    """The service in its own process (uvicorn, one worker); the load from this child: bounded,
    open loop (:func:`bench.load.run_load`), after 100 untimed warm-up requests."""
    import requests

    from bench.load import run_load

    bodies, catalog = _inputs(ctx)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        sys.executable,
        "-m",
        "bench.ranker_server",
        "--model",
        str(model_path(ctx)),
        "--stats",
        str(ctx.table_path(FEATURE_STATS)),
        "--catalog",
        str(catalog),
        "--port",
        str(port),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the ranker exited: {server.stderr.read().decode()[-2000:]}")
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the ranker did not start within 120 s")
            time.sleep(0.2)
        run_load(f"{url}/rank", bodies, rate=RANKER_RATE, seconds=100 / RANKER_RATE)
        with ctx.timed():
            result = run_load(f"{url}/rank", bodies, rate=RANKER_RATE, seconds=RANKER_SECONDS)
    finally:
        server.terminate()
        server.wait(timeout=30)
    facts = result.facts()
    ctx.report_seconds(facts["p50_ms"] / 1000)
    return {
        **facts,
        "rate": RANKER_RATE,
        "seconds": RANKER_SECONDS,
        "candidates": RANKER_CANDIDATES,
        "goal_p99_ms": GOAL_P99_MS,
        "goal_met": facts["p99_ms"] <= GOAL_P99_MS and facts["errors"] == 0,
    }


def ranker_floor(ctx: Ctx) -> dict[str, object]:
    """The same requests ranked in-process (:meth:`RankingEngine.rank`, what ``/rank`` calls), one
    after another: what the service costs without HTTP, JSON and validation."""
    import numpy as np

    from bench.ranker_server import build_engine

    bodies, catalog = _inputs(ctx)
    engine = build_engine(model_path(ctx), ctx.table_path(FEATURE_STATS), catalog)
    for body in bodies[:20]:
        engine.rank(body["context"], [{"ad_id": a} for a in body["candidates"]], 2, "champion")
    seconds = []
    with ctx.timed():
        for i in range(FLOOR_CALLS):
            body = bodies[i % len(bodies)]
            start = time.perf_counter()
            engine.rank(body["context"], [{"ad_id": a} for a in body["candidates"]], 2, "champion")
            seconds.append(time.perf_counter() - start)
    values = np.asarray(seconds)
    ctx.report_seconds(float(np.median(values)))
    return {
        "requests": FLOOR_CALLS,
        "p50_ms": float(np.median(values) * 1000),
        "p99_ms": float(np.percentile(values, 99) * 1000),
        "throughput_rps": FLOOR_CALLS / float(values.sum()),
        "candidates": RANKER_CANDIDATES,
    }


def ranker_detail(row: dict[str, Any]) -> str:
    ours, floor = row["ours"]["info"], row["floor"]["info"] if row["floor"] else {}
    text = (
        f"HTTP at {ours['rate']:.0f} req/s for {ours['seconds']:.0f} s: {ours['requests']:,} requests, "
        f"{ours['errors']} errors, p50 {ours['p50_ms']:.1f} ms, p99 {ours['p99_ms']:.1f} ms, "
        f"{ours['throughput_rps']:.0f} req/s (goal p99 ≤ {ours['goal_p99_ms']:.0f} ms: "
        f"{'met' if ours['goal_met'] else 'not met'})"
    )
    if floor:
        text += (
            f"; in-process p50 {floor['p50_ms']:.1f} ms, p99 {floor['p99_ms']:.1f} ms, "
            f"{floor['throughput_rps']:.0f} calls/s"
        )
    return text + "; s columns = p50"
