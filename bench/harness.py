"""What every step and the parent share: the settings, a step's context (:class:`Ctx`) and its
timed block, the :class:`Step` type, and one child process (:func:`run_child`, :class:`Run`).

Only the standard library is imported at module level: the parent imports this module, and a heavy
parent would inflate every child's peak memory (see the package docstring). Step functions import
what they need inside their bodies, in the child.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

# --- Settings ----------------------------------------------------------------------------------

#: The repository root: children run ``python -m bench`` with it on PYTHONPATH.
ROOT = Path(__file__).resolve().parent.parent
#: ``make bench``: every step at 1M impressions a day, and the daily refresh also at 10M and 50M
#: (:data:`bench.refresh.LARGE_POINTS`); ``--sizes 1000000 5000000`` adds the steps at 5M.
DEFAULT_SIZES: tuple[int, ...] = (1_000_000,)
QUICK_SIZE = 100_000
#: Both sides of every comparison use the warehouse's DuckDB settings (clickloop.storage.DuckDBSettings).
DUCKDB_THREADS = 2
#: 2GB so that the whole refresh (DuckDB and the Python around it) can stay within 3 GiB.
DUCKDB_MEMORY_LIMIT = "2GB"
SEED = 7
#: The measured day D; D-1 and D+1 are simulated for the join, D-7 .. D-1 label the window.
DAY = date(2026, 10, 8)
HISTORY_DAYS = 7
ROLES = ("prepare", "ours", "floor")
#: The warehouse tables of the raw logs (the raw assets' names, assets/raw_logs.py RAW_TABLES).
RAW_TABLES = {"impressions": "raw_impressions", "clicks": "raw_clicks"}


def data_dir() -> Path:
    """The data directory (``CLICKLOOP_DATA_DIR`` or ``./data``), as ``pipelines.settings`` has it;
    not imported from there because that module imports Dagster into the parent."""
    return Path(os.getenv("CLICKLOOP_DATA_DIR", "data")).expanduser().resolve()


def size_label(size: int) -> str:
    """``5000000`` -> ``5M``, ``100000`` -> ``100k``."""
    for unit, suffix in ((1_000_000, "M"), (1_000, "k")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return f"{size:,}"


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- What a child sees -------------------------------------------------------------------------


@dataclass
class Timing:
    """What one ``with ctx.timed():`` block measured."""

    wall_s: float
    cpu_s: float
    rss_start_mib: float
    hwm_end_mib: float


def _proc_status_mib(field_name: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (0 where /proc is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Ctx:
    """One size's scratch folder and the paths and helpers every step function shares."""

    size: int
    work: Path
    #: what this measurement is taken at (rows, candidates); the day's size unless a step's
    #: ``points`` say otherwise
    rows: int = 0
    timing: Timing | None = field(default=None, init=False)
    #: the seconds reported instead of the timed block's wall time (see :meth:`report_seconds`)
    reported_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.rows <= 0:
            self.rows = self.size

    # -- the timed block -------------------------------------------------------------------

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Time exactly the measured work; a step function uses this once."""
        if self.timing is not None:
            raise RuntimeError("a step function times one block only")
        rss = _proc_status_mib("VmRSS")
        cpu, wall = time.process_time(), time.perf_counter()
        yield
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.timing = Timing(wall, cpu, rss, _proc_status_mib("VmHWM"))

    def report_seconds(self, seconds: float) -> None:
        """Report ``seconds`` (e.g. the median of repetitions timed inside the block) as this
        run's time; the block's own wall time is kept as ``block_wall_s``."""
        self.reported_s = float(seconds)

    # -- days and paths --------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """Page views per day: two impressions each."""
        return max(1, self.size // 2)

    def day(self, offset: int = 0) -> date:
        return DAY + timedelta(days=offset)

    def key(self, offset: int = 0) -> str:
        return self.day(offset).isoformat()

    @property
    def landing(self) -> Path:
        """The simulator's landing folder, faults injected at the default rates."""
        return self.work / "landing"

    @property
    def landing_clean(self) -> Path:
        """Day D written again with every fault rate at 0 (pyarrow's JSON reader needs it)."""
        return self.work / "landing_clean"

    @property
    def floor_dir(self) -> Path:
        return self.work / "floor"

    def traffic_path(self, offset: int = 0) -> Path:
        """The pickled ``DayTraffic`` of a simulated day (input of clickloop's writer)."""
        return self.work / "pickles" / f"traffic-{self.key(offset)}.pkl"

    def frames_path(self, offset: int = 0) -> Path:
        """The clean impressions and clicks frames of a day (input of the writing floor)."""
        return self.work / "pickles" / f"frames-{self.key(offset)}.pkl"

    def warehouse(self, name: str = "warehouse") -> Any:
        """clickloop's warehouse under the scratch folder, with the benchmark's DuckDB settings
        (no spill folder set: DuckDB spills to ``.tmp`` in the child's working directory, the
        scratch folder)."""
        from clickloop.storage import DuckDBSettings, Warehouse

        return Warehouse(self.work / name, DuckDBSettings(DUCKDB_THREADS, DUCKDB_MEMORY_LIMIT))

    def table_path(self, table: str, offset: int = 0, name: str = "warehouse") -> Path:
        """A partition file of the scratch warehouse, without importing it (the floors use this;
        :func:`same_layout` checks it against the warehouse's own path on clickloop's side)."""
        return self.work / name / table / f"date={self.key(offset)}" / "part-0.parquet"

    def floor_path(self, name: str) -> Path:
        path = self.floor_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def same_layout(warehouse_path: Path, bench_path: Path) -> None:
    """The floors find clickloop's files without importing the warehouse: the layouts must agree."""
    if warehouse_path.resolve() != bench_path.resolve():
        raise RuntimeError(f"warehouse layout changed: {warehouse_path} != {bench_path}")


def floor_connection() -> Any:
    """A bare DuckDB connection with the warehouse's settings."""
    import duckdb

    con = duckdb.connect(config={"threads": DUCKDB_THREADS, "memory_limit": DUCKDB_MEMORY_LIMIT})
    con.execute("SET TimeZone = 'UTC'")
    return con


def dump(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)


def load(path: Path) -> Any:
    with open(path, "rb") as handle:
        return pickle.load(handle)


def sql_list(paths: Sequence[Path]) -> str:
    return "[" + ", ".join(f"'{p}'" for p in paths) + "]"


def total_bytes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def bench_settings(ctx: Ctx) -> dict[str, object]:
    """What the manifests record about who wrote the days."""
    return {"source": "bench", "seed": SEED, "requests_per_day": ctx.requests}


# --- The step type -----------------------------------------------------------------------------

StepFn = Callable[[Ctx], dict[str, object]]


@dataclass(frozen=True)
class Step:
    """One measured step: clickloop's function next to its floor (None: nothing to compare)."""

    name: str
    title: str
    ours: StepFn
    floor: StepFn | None
    floor_label: str
    prepare: Callable[[Ctx], None] | None = None
    #: the steps whose files this one reads (run first, unreported, when ``--steps`` omits them)
    needs: tuple[str, ...] = ()
    #: what the step is measured at for a day's size, given the run's sizes (the table's "size");
    #: None: the day's size. An empty tuple skips the step at that size.
    points: Callable[[int, Sequence[int]], Sequence[int]] | None = None
    #: the table's last column, from the row's facts
    detail: Callable[[dict[str, Any]], str] | None = None

    def points_at(self, size: int, sizes: Sequence[int]) -> tuple[int, ...]:
        return (size,) if self.points is None else tuple(self.points(size, sizes))


# --- Child processes ---------------------------------------------------------------------------


def child_run(step: Step, role: str, size: int, work: Path, result: Path, rows: int | None) -> int:
    """Run one role of one step in this (child) process; write its measurement to ``result``."""
    ctx = Ctx(size=size, work=work, rows=rows or size)
    work.mkdir(parents=True, exist_ok=True)
    if role == "prepare":
        if step.prepare is None:
            raise ValueError(f"step {step.name} has nothing to prepare")
        step.prepare(ctx)
        result.write_text(json.dumps({}))
        return 0
    fn = step.ours if role == "ours" else step.floor
    if fn is None:
        raise ValueError(f"step {step.name} has no floor")
    info = fn(ctx)
    if ctx.timing is None:
        raise RuntimeError(f"{step.name}/{role} never entered ctx.timed()")
    payload = {**ctx.timing.__dict__, "info": info}
    if ctx.reported_s is not None:
        payload["block_wall_s"] = payload["wall_s"]
        payload["wall_s"] = ctx.reported_s
    result.write_text(json.dumps(payload, default=str))
    return 0


@dataclass(frozen=True)
class Run:
    """One child's measurement as the parent sees it."""

    wall_s: float
    cpu_s: float
    peak_mib: float
    rss_start_mib: float
    hwm_end_mib: float
    child_wall_s: float
    info: dict[str, object]
    #: the timed block's wall time when the child reported another time (a median)
    block_wall_s: float | None = None


class ChildFailed(RuntimeError):
    """A child process exited with an error; the message holds the end of its log."""


#: Set to 1, every "child" runs in the benchmark's own process, one after the other: no interpreter
#: start and no imports per step, which is most of a smoke run's time (``tests/e2e/test_bench.py``).
#: Times and CPU are the timed blocks', as in a child; a peak is the process's high-water mark so
#: far, not the step's own: a measurement run never sets it.
IN_PROCESS_ENV = "CLICKLOOP_BENCH_IN_PROCESS"


def _run_in_process(role: str, step: Step, size: int, work: Path, rows: int, result: Path) -> Run:
    """:func:`child_run` in this process, in the scratch folder as a child would be."""
    import traceback

    cwd = os.getcwd()
    start = time.perf_counter()
    try:
        os.chdir(work)
        child_run(step, role, size, work, result, rows)
    except Exception as error:
        raise ChildFailed(
            f"{step.name}/{role} at {rows:,} (day {size:,}) failed in process:\n{traceback.format_exc()[-4000:]}"
        ) from error
    finally:
        os.chdir(cwd)
    return _run_of(json.loads(result.read_text()), _proc_status_mib("VmHWM"), time.perf_counter() - start)


def _run_of(payload: dict[str, Any], peak_mib: float, child_wall_s: float) -> Run:
    return Run(
        wall_s=payload.get("wall_s", 0.0),
        cpu_s=payload.get("cpu_s", 0.0),
        peak_mib=peak_mib,
        rss_start_mib=payload.get("rss_start_mib", 0.0),
        hwm_end_mib=payload.get("hwm_end_mib", 0.0),
        child_wall_s=child_wall_s,
        info=payload.get("info", {}),
        block_wall_s=payload.get("block_wall_s"),
    )


def run_child(role: str, step: Step, size: int, work: Path, rows: int | None = None) -> Run:
    """Start one child, wait for it with ``os.wait4`` and return its timing and peak RSS (with
    :data:`IN_PROCESS_ENV` set: run it in this process)."""
    rows = rows or size
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result = logs / f"{step.name}-{rows}-{role}.json"
    log = logs / f"{step.name}-{rows}-{role}.log"
    result.unlink(missing_ok=True)
    if os.getenv(IN_PROCESS_ENV) == "1":  # (``work`` exists: it holds ``logs``)
        return _run_in_process(role, step, size, work, rows, result)
    command = [sys.executable, "-m", "bench", "--child", role, "--step", step.name]
    command += ["--size", str(size), "--rows", str(rows)]
    command += ["--work", str(work), "--result", str(result)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = str(DUCKDB_THREADS)  # pyarrow's and XGBoost's thread pools
    env["PYTHONWARNINGS"] = "ignore"
    start = time.perf_counter()
    with open(log, "wb") as out:
        # cwd = the scratch folder: DuckDB's spill directory (.tmp) lands there and is removed.
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=work, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: stop our child, then let the interruption through
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    child_wall = time.perf_counter() - start
    if proc.returncode != 0 or not result.exists():
        tail = log.read_text(errors="replace")[-4000:]
        raise ChildFailed(f"{step.name}/{role} at {rows:,} (day {size:,}) exited {proc.returncode}:\n{tail}")
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    return _run_of(json.loads(result.read_text()), peak, child_wall)
