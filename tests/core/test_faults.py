"""The fault-injection hook: inert unless asked, kills at exactly the hit it is asked for, refuses
an unknown point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from clickloop.faults import FAULT_POINT_ENV, FAULT_TRACE_ENV, fault_point, parse_fault

PROGRAM = (
    "from clickloop.faults import fault_point\n"
    "for i in range(3):\n"
    "    fault_point('ingest.chunk')\n"
    "    print(i, flush=True)\n"
)


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLICKLOOP_")}
    return subprocess.run(
        [sys.executable, "-c", PROGRAM], env={**clean, **env}, capture_output=True, text=True
    )


def test_a_process_dies_by_sigkill_at_the_hit_it_names(tmp_path) -> None:
    trace = tmp_path / "trace.txt"
    done = run({FAULT_POINT_ENV: "ingest.chunk:2", FAULT_TRACE_ENV: str(trace)})
    assert done.returncode == -signal.SIGKILL and done.stdout == "0\n"
    assert trace.read_text() == "ingest.chunk\ningest.chunk\n"
    other = run({FAULT_POINT_ENV: "training.fitted"})  # another point: never reached, no effect
    assert other.returncode == 0 and other.stdout == "0\n1\n2\n"


def test_the_hook_is_inert_when_unset_and_refuses_unknown_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAULT_POINT_ENV, raising=False)
    monkeypatch.delenv(FAULT_TRACE_ENV, raising=False)
    fault_point("write.before_rename")  # this process lives on
    assert parse_fault("registry.promote.done") == ("registry.promote.done", 1)
    assert parse_fault("write.after_rename:3") == ("write.after_rename", 3)
    with pytest.raises(ValueError, match="unknown point 'write.somewhere'"):
        parse_fault("write.somewhere")
    with pytest.raises(ValueError, match="must be an integer"):
        parse_fault("ingest.chunk:x")
    with pytest.raises(ValueError, match=">= 1"):
        parse_fault("ingest.chunk:0")
