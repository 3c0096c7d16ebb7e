"""Fault injection for the kill tests: a process kills itself with SIGKILL at a named point.

Inert unless ``CLICKLOOP_FAULT_POINT`` (or ``CLICKLOOP_FAULT_TRACE``) is set. Its value is ``<point>[:<hit>]``: the process
sends itself SIGKILL the ``hit``-th time (default: the first) it passes :func:`fault_point` with
that name. SIGKILL cannot be caught: no ``finally`` block, no ``atexit`` handler, no flush runs,
exactly as when the kernel's OOM killer or a lost machine ends a run.

The points the code passes (every one is reached by the kill tests in ``tests/e2e/test_faults.py``):

=============================  ===================================================================
point                          where
=============================  ===================================================================
``write.before_rename``        every atomic write, its temporary file complete, not yet renamed
``write.after_rename``         every atomic write, just renamed into place
``ingest.chunk``               ingest, after each chunk of typed rows appended to the temp file
``training.fitted``            training, the booster fitted, nothing saved yet
``registry.run_created``       the MLflow run created, nothing logged in it yet
``registry.model_logged``      the model uploaded to the run, the run not yet marked finished
``registry.version_created``   a registry version created, the model manifest not yet written
``registry.promote.tags``      a promotion: the version's tags written, the undo stack not yet
``registry.promote.history``   a promotion: the undo stack written, the aliases not yet
``registry.promote.done``      a promotion: the ``champion`` alias moved (the last write)
=============================  ===================================================================
"""

from __future__ import annotations

import os
import signal
from collections import Counter

#: The environment variable naming the point (and the hit) at which this process dies.
FAULT_POINT_ENV = "CLICKLOOP_FAULT_POINT"
#: A file every point passed is appended to (one name a line), to plan kills from a clean run.
FAULT_TRACE_ENV = "CLICKLOOP_FAULT_TRACE"
#: Every point the code passes (see the table above).
FAULT_POINTS = (
    "write.before_rename",
    "write.after_rename",
    "ingest.chunk",
    "training.fitted",
    "registry.run_created",
    "registry.model_logged",
    "registry.version_created",
    "registry.promote.tags",
    "registry.promote.history",
    "registry.promote.done",
)

_hits: Counter[str] = Counter()


def parse_fault(value: str) -> tuple[str, int]:
    """``"<point>[:<hit>]"`` → (point, hit); a clear error for an unknown point or a bad hit."""
    point, _, hit = value.strip().partition(":")
    if point not in FAULT_POINTS:
        raise ValueError(
            f"{FAULT_POINT_ENV}={value!r}: unknown point {point!r}; known: {', '.join(FAULT_POINTS)}"
        )
    try:
        count = int(hit) if hit else 1
    except ValueError:
        raise ValueError(f"{FAULT_POINT_ENV}={value!r}: the hit after ':' must be an integer") from None
    if count < 1:
        raise ValueError(f"{FAULT_POINT_ENV}={value!r}: the hit must be >= 1")
    return point, count


def fault_point(name: str) -> None:
    """Pass the point ``name``: SIGKILL this process if the environment asks for this hit of it."""
    trace = os.environ.get(FAULT_TRACE_ENV)
    if trace:
        with open(trace, "a") as handle:
            handle.write(name + "\n")
    wanted = os.environ.get(FAULT_POINT_ENV)
    if not wanted:
        return
    point, hit = parse_fault(wanted)
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == hit:
        os.kill(os.getpid(), signal.SIGKILL)
