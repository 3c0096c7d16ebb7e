"""A bounded open-loop HTTP load: requests sent at a fixed rate for a fixed time, to loopback only.

Request ``i`` is due at ``start + i / rate``; a pool of threads (each with its own keep-alive
session) sends each one when it is due, or at once if every thread was busy (then it counts as
late). Latency is measured from the moment a request was due, so a server that falls behind shows
it (no coordinated omission). The loop stops by itself after ``rate x seconds`` requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: Only servers on this machine are loaded.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class LoadResult:
    sent: int
    errors: int
    late: int
    seconds: float
    latencies_s: list[float]

    def facts(self) -> dict[str, float | int]:
        import numpy as np

        values = np.asarray(self.latencies_s) if self.latencies_s else np.zeros(1)
        return {
            "requests": self.sent,
            "errors": self.errors,
            "late_starts": self.late,
            "wall_s": self.seconds,
            "throughput_rps": self.sent / self.seconds if self.seconds else 0.0,
            "p50_ms": float(np.percentile(values, 50) * 1000),
            "p99_ms": float(np.percentile(values, 99) * 1000),
            "max_ms": float(values.max() * 1000),
        }


def run_load(
    url: str, bodies: Sequence[dict[str, Any]], rate: float, seconds: float, threads: int = 8
) -> LoadResult:
    """POST ``bodies`` (round robin) to ``url`` at ``rate`` per second for ``seconds``."""
    import requests

    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"the load goes to this machine only, not {host}")
    total = max(1, int(rate * seconds))
    latencies: list[float] = []
    counters = {"next": 0, "errors": 0, "late": 0}
    lock = threading.Lock()
    start = time.perf_counter() + 0.05

    def worker() -> None:
        session = requests.Session()
        while True:
            with lock:
                i = counters["next"]
                if i >= total:
                    return
                counters["next"] += 1
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                with lock:
                    counters["late"] += 1
            try:
                ok = session.post(url, json=bodies[i % len(bodies)], timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            elapsed = time.perf_counter() - due
            with lock:
                latencies.append(elapsed)
                counters["errors"] += 0 if ok else 1

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return LoadResult(total, counters["errors"], counters["late"], time.perf_counter() - start, latencies)
