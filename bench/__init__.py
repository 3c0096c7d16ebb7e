"""The benchmark of clickloop: each step of the loop next to the bare library doing the same work.

``make bench`` (``python -m bench`` from the repository root) simulates days of 1M impressions
(``--sizes 1000000 5000000`` adds 5M; ``--quick`` is one day of 100k, each step at its first
point; the daily refresh is also measured at 10M and 50M at full scale) and, for
each size, runs every step of :data:`bench.steps.STEPS` twice on the same files in the same run:
clickloop's own function (the domain core, ``clickloop/``; the daily refresh through the Dagster
jobs of ``pipelines/``), and a *floor*, the bare library (DuckDB, pyarrow, XGBoost, Evidently) doing
the same work without clickloop's guarantees (quarantine, deduplication, accounting, ordering,
atomic writes, category pinning, sampling). Speed is reported as a ratio (clickloop seconds / floor
seconds): the machine may be shared and noisy, a ratio of two neighbours is not.

The steps: simulate, write logs, ingest (with faults and clean), the ad_events join, feature
stats, features, training (``fit_ctr_model`` against ``xgboost.train``, 100 rounds), scoring (one
request x 1M candidates through ``ChampionPolicy.predict_ctr`` against ``inplace_predict``; median
and p99 of 20 calls), the drift report (``read_sample`` + ``compute_drift`` against Evidently on
frames already sampled, at the day's rows and 10x as many) and the daily refresh (three Dagster
runs against the sum of their floors). Scoring, drift and the refresh do not depend on the day's
size: they are measured at the first size only (a step's ``points``). ``--steps`` measures only
the named steps; the steps they need run first, clickloop's side only, unreported.

How a number is taken:

- Every measured run (clickloop or floor) is its own child process,
  ``python -m bench --child ours|floor --step NAME --size N --rows N --work DIR --result FILE``,
  with the repository root on ``PYTHONPATH``. The child imports what it needs, loads its inputs,
  and times only the work (wall clock and process CPU time); the parent reads the child's peak
  resident memory from ``os.wait4`` (``ru_maxrss``), so each peak is that run's own, imports and
  loaded inputs included.
- The parent imports the standard library only (every module of this package imports the
  libraries inside its functions): ``subprocess`` starts children with ``vfork``, and a child's
  ``ru_maxrss`` starts at its parent's high-water mark, so a heavy parent would inflate every peak.
  Untimed preparation (simulating the neighbour days, ingesting them) runs in children too
  (``--child prepare``).
- DuckDB runs with the warehouse's settings on both sides (:data:`bench.harness.DUCKDB_THREADS`
  threads, :data:`bench.harness.DUCKDB_MEMORY_LIMIT`, UTC); pyarrow and OpenMP get the same
  thread count.

Results: a Markdown table on stdout, ``<data_dir>/bench/results.md`` and ``results.json`` (both
written atomically); scratch files live in ``<data_dir>/bench/work`` and are removed at the end
(``--keep-work`` keeps them). The data directory is ``CLICKLOOP_DATA_DIR`` or ``./data``.

Layout: :mod:`bench.harness` (settings, :class:`~bench.harness.Ctx`, the timed block, the
:class:`~bench.harness.Step` type, child processes), :mod:`bench.report` (rows, Markdown, atomic
writes), the steps by stage (:mod:`bench.steps_logs`, :mod:`bench.steps_model`,
:mod:`bench.steps_serving`, :mod:`bench.refresh`), :mod:`bench.steps` (the ordered list and the
notes) and :mod:`bench.__main__` (the command line, the parent's loop).

Adding a step: write its ``ours`` and ``floor`` functions (each loads its inputs, wraps exactly the
measured work in ``with ctx.timed():`` and returns a small dict of facts), optionally a ``prepare``
function that leaves the inputs in ``ctx.work``, and append a :class:`~bench.harness.Step` to
:data:`bench.steps.STEPS` (``needs``: the steps whose files it reads; ``points``: what it is
measured at, when not the day's size; ``detail``: the table's last column). Steps run in list
order, so a step may use what an earlier one left behind. A function timing repetitions inside its
block reports their median with ``ctx.report_seconds``.
"""
