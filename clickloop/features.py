"""Point-in-time features for the CTR model: day D is described with history from before D only.

Two tables, both per day:

* ``feature_stats`` (D): historical statistics usable on day D, computed from the ``ad_events`` of
  the ``window_days`` days whose labels were final when D began, D-1-W … D-2 (the caller passes
  them; in Dagster a partition mapping chooses them). D-1 is left out: its clicks keep arriving
  during D, so neither the ad server on D nor the model may count them. One long table::

      key_type        key1      key2      impressions  clicks  ctr
      global          NULL      NULL      window rows  clicks  prior
      <entity name>   column 1  column 2  ...          ...     smoothed CTR
      user_prev_day   user_id   NULL      the user's impressions on D-2 (ctr NULL)

  The entities come from the log contract (an ad, an advertiser, a site, an ad × site category…).
  Smoothed CTR = (clicks + m · prior) / (x + m), ``m = PRIOR_STRENGTH``; a key never seen gets the
  prior and 0 impressions. A day with no history has only the ``global`` row, with ``DEFAULT_CTR``
  as prior. By default x = impressions and the prior is the window's CTR. With the contract's
  ``policy_invariant_history`` the statistics keep their meaning when the serving policy changes:
  x counts each impression as its slot's examination factor (clicks over expected clicks at the
  reference slot, :mod:`clickloop.position`); for a request-side key (a site) each impression
  counts as the expected clicks of the ad shown, in units of the mean ad; the prior is the mean
  ad's CTR at the reference slot.

* ``features`` (D): every event of ``ad_events`` (D) with the model's feature columns, joined to
  ``feature_stats`` (D).

Leakage: no statistic of day D comes from day D or from D-1's unfinished labels. The user's
activity is their impressions on one whole finished day (D-2), not a rolling count inside D.

Position bias: ``position`` is a feature at training time, but ranking happens before the slot is
known, so serving scores every candidate at the contract's reference position (and, with
``policy_invariant_history``, the historical CTRs are at that slot too).

Train/serve skew: one SQL builder (:func:`features_sql`) defines every feature, for the rows of a
day (training) and for candidates (serving) alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from clickloop.contract import LABEL, POSITION, TIME, USER_ID, EntityKey, LogContract, require_columns
from clickloop.position import (
    estimate_position_factors,
    expected_impressions_sql,
    factors_markdown,
    slot_factor_sql,
)
from clickloop.storage import atomic_copy_query_to_parquet, parquet_list_sql, parquet_sql, registered

#: Days of history behind each day's statistics.
DEFAULT_WINDOW_DAYS = 7
#: Pseudo-impressions of the prior in the smoothed CTR: a key needs ~m impressions to move far.
PRIOR_STRENGTH = 100.0
#: The prior CTR when there is no history at all (the first day of the loop).
DEFAULT_CTR = 0.02
GLOBAL_KEY_TYPE = "global"
USER_KEY_TYPE = "user_prev_day"
USER_ACTIVITY = "user_impressions_24h"
WEEKDAY = "weekday"
TIME_FEATURES = ("hour", WEEKDAY)
#: ``ad_events`` columns the ``features`` table leaves out: the raw user id (its activity is a
#: feature; the id itself is needed by nothing downstream) and the click's own columns (the label
#: stays).
LEFT_IN_EVENTS = (USER_ID, "click_id", "click_ts", "click_delay_s")
_ROW = "__row"  # input order of rows given to add_features


def impressions_feature(entity: EntityKey) -> str:
    return f"hist_{entity.name}_impressions"


def ctr_feature(entity: EntityKey) -> str:
    return f"hist_{entity.name}_ctr"


@dataclass(frozen=True)
class FeatureSpec:
    """Every feature of the model, derived from the log contract."""

    categorical: tuple[str, ...]
    entities: tuple[EntityKey, ...]
    user_activity: bool
    has_position: bool
    reference_position: int | None
    #: columns that describe the request, not the ad (their keys' CTRs are relative to the ads shown)
    context_columns: tuple[str, ...] = ()
    #: slot-corrected CTRs, request-side keys relative to their ads, the mean ad's CTR as prior
    policy_invariant: bool = False
    #: the clock's features among the model's inputs (a training window may leave weekday out)
    time_features: tuple[str, ...] = TIME_FEATURES

    @classmethod
    def from_contract(cls, contract: LogContract) -> FeatureSpec:
        return cls(
            categorical=contract.categorical_features,
            entities=contract.entities,
            user_activity=contract.user_activity,
            has_position=contract.has_position,
            reference_position=contract.reference_position,
            context_columns=contract.request_side,
            policy_invariant=contract.policy_invariant_history,
        )

    @property
    def ctr_features(self) -> tuple[str, ...]:
        return tuple(ctr_feature(e) for e in self.entities)

    @property
    def count_features(self) -> tuple[str, ...]:
        user = (USER_ACTIVITY,) if self.user_activity else ()
        return tuple(impressions_feature(e) for e in self.entities) + user

    @property
    def historical(self) -> tuple[str, ...]:
        pairs = tuple(f for e in self.entities for f in (impressions_feature(e), ctr_feature(e)))
        return pairs + ((USER_ACTIVITY,) if self.user_activity else ())

    @property
    def numeric(self) -> tuple[str, ...]:
        """The clock's features (hour and weekday, UTC, Monday = 0; a training spec may leave weekday
        out), the slot, and the history."""
        return self.time_features + ((POSITION,) if self.has_position else ()) + self.historical

    @property
    def columns(self) -> tuple[str, ...]:
        """The model's inputs, in order."""
        return self.categorical + self.numeric

    @property
    def entity_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for e in self.entities for c in e.columns))

    @property
    def input_columns(self) -> tuple[str, ...]:
        """What a row needs for :func:`features_sql` (besides ``position`` for training rows)."""
        user = (USER_ID,) if self.user_activity else ()
        return tuple(dict.fromkeys((TIME, *user, *self.categorical, *self.entity_columns)))

    @property
    def seen_entity(self) -> EntityKey | None:
        """The first single-column entity: its count tells whether a row's key had history."""
        return next((e for e in self.entities if len(e.columns) == 1), None)


# --- feature_stats: the history of a day ----------------------------------------------------------


def _history_sql(spec: FeatureSpec, paths: Sequence[Path]) -> str:
    """The window's events with only the columns the statistics need (typed even when empty)."""
    columns = [*spec.entity_columns, *((USER_ID,) if spec.user_activity else ())]
    columns = list(dict.fromkeys(columns))
    slot = [POSITION] if spec.has_position else []
    if not paths:
        nulls = [f"NULL::VARCHAR AS {c}" for c in columns] + [f"NULL::INTEGER AS {c}" for c in slot]
        return f"SELECT {', '.join([*nulls, f'NULL::TINYINT AS {LABEL}'])} LIMIT 0"
    selected = [f"CAST({c} AS VARCHAR) AS {c}" for c in columns] + [
        f"CAST({c} AS INTEGER) AS {c}" for c in slot
    ]
    return f"SELECT {', '.join([*selected, LABEL])} FROM {parquet_list_sql(paths)}"


def window_position_factors(
    con: duckdb.DuckDBPyConnection, spec: FeatureSpec, history: Sequence[Path]
) -> dict[int, float]:
    """Each slot's examination factor in the window (:mod:`clickloop.position`); empty without a
    slot in the contract or without history."""
    if not spec.policy_invariant or not spec.has_position or not history:
        return {}
    key = spec.seen_entity.columns[0] if spec.seen_entity else None
    return estimate_position_factors(con, _history_sql(spec, history), key, spec.reference_position)


def _grouping_key_type_sql(spec: FeatureSpec) -> str:
    """A CASE naming the grouping set of each row (GROUPING() bitmask over every key column)."""
    columns = spec.entity_columns
    cases = []
    for entity in spec.entities:
        mask = sum(1 << (len(columns) - 1 - i) for i, c in enumerate(columns) if c not in entity.columns)
        cases.append(f"WHEN {mask} THEN '{entity.name}'")
    return f"CASE grouping({', '.join(columns)}) {' '.join(cases)} END"


def _key_expr_sql(spec: FeatureSpec, position: int) -> str:
    """``key1``/``key2`` of a grouped row: the entity's n-th column (NULL when it has fewer)."""
    cases = " ".join(
        f"WHEN '{e.name}' THEN {e.columns[position]}" for e in spec.entities if len(e.columns) > position
    )
    return f"CAST(CASE key_type {cases} END AS VARCHAR)" if cases else "NULL::VARCHAR"


def feature_stats_sql(
    spec: FeatureSpec,
    history: Sequence[Path],
    previous_day: Path | None,
    position_factors: Mapping[int, float] | None = None,
    prior_strength: float = PRIOR_STRENGTH,
    default_ctr: float = DEFAULT_CTR,
) -> str:
    """The long statistics table of a day from its history files (see the module docstring).

    ``history`` are the ``ad_events`` files of the window (days strictly before D), ``previous_day``
    the latest of them (for the per-user counts), or None when the window is empty.
    ``position_factors`` (slot → examination factor) turn impressions into reference-slot
    impressions for every CTR; None or empty counts every impression as 1.
    """
    m = repr(float(prior_strength))
    factors = position_factors or {}
    expected = expected_impressions_sql(factors)
    ad = spec.seen_entity if spec.policy_invariant else None
    context = [e.name for e in spec.entities if ad and set(e.columns) <= set(spec.context_columns)]
    parts = [
        f"""SELECT '{GLOBAL_KEY_TYPE}' AS key_type, NULL::VARCHAR AS key1, NULL::VARCHAR AS key2,
               total_n AS impressions, total_c AS clicks, prior AS ctr
        FROM g CROSS JOIN p"""
    ]
    if ad:
        # the prior: the mean ad's CTR at the reference slot (not the window's, which rises when
        # a policy shows the better ads more often)
        quality = f""",
        a AS (
            SELECT {ad.columns[0]} AS ad_key, count(*)::BIGINT AS n, sum({LABEL})::BIGINT AS c,
                   {expected} AS x
            FROM h GROUP BY 1
        ),
        p AS (
            SELECT coalesce(round(avg(c / x), 12), any_value(g.window_prior))::DOUBLE AS prior
            FROM a RIGHT JOIN g ON true
        )"""
    else:
        quality = """,
        p AS (SELECT window_prior AS prior FROM g)"""
    rows = "h"
    if context:
        # a request-side key's impressions count as the expected clicks of the ads it was shown,
        # in impressions of the mean ad: its CTR is then its own, not its ads'
        quality += f""",
        hq AS (
            SELECT h.*, {slot_factor_sql(factors)} * coalesce((a.c + {m} * p.prior) / (a.x + {m}) / p.prior, 1.0)
                   AS wq
            FROM h LEFT JOIN a ON h.{ad.columns[0]} = a.ad_key CROSS JOIN p
        )"""
        rows = "hq"
    grouped = ""
    if spec.entities:
        key_sets = ", ".join(f"({', '.join(e.columns)})" for e in spec.entities)
        names = ", ".join(f"'{n}'" for n in context)
        weight = f"CASE WHEN key_type IN ({names}) THEN xq ELSE x END" if context else "x"
        xq = ", round(sum(wq), 9) AS xq" if context else ""
        grouped = f""",
        grouped AS (
            SELECT {_grouping_key_type_sql(spec)} AS key_type, {", ".join(spec.entity_columns)},
                   count(*)::BIGINT AS n, sum({LABEL})::BIGINT AS c, {expected} AS x{xq}
            FROM {rows} GROUP BY GROUPING SETS ({key_sets})
        )"""
        parts.append(
            f"""SELECT key_type, {_key_expr_sql(spec, 0)}, {_key_expr_sql(spec, 1)}, n, c,
               ((c + {m} * p.prior) / ({weight} + {m}))::DOUBLE
        FROM grouped CROSS JOIN p"""
        )
    if spec.user_activity:
        users = _history_sql(spec, [previous_day] if previous_day else [])
        parts.append(
            f"""SELECT '{USER_KEY_TYPE}', {USER_ID}, NULL, count(*)::BIGINT, sum({LABEL})::BIGINT,
               NULL::DOUBLE
        FROM ({users}) GROUP BY {USER_ID}"""
        )
    union = "\n        UNION ALL\n        ".join(parts)
    return f"""
        WITH h AS ({_history_sql(spec, history)}),
        g AS (
            SELECT count(*)::BIGINT AS total_n, coalesce(sum({LABEL}), 0)::BIGINT AS total_c,
                   CASE WHEN count(*) > 0 THEN coalesce(sum({LABEL}), 0) / {expected}
                        ELSE {float(default_ctr)!r} END::DOUBLE AS window_prior
            FROM h
        ){quality}{grouped}
        {union}
        ORDER BY key_type, key1, key2 NULLS FIRST
    """


@dataclass(frozen=True)
class StatsSummary:
    """What one ``feature_stats`` partition holds."""

    history_days: tuple[str, ...]
    history_rows: int
    history_clicks: int
    prior: float
    keys: dict[str, int]
    position_factors: dict[int, float]

    def markdown(self) -> str:
        keys = "| key type | keys |\n|---|---:|\n" + "\n".join(
            f"| {k} | {n:,} |" for k, n in self.keys.items()
        )
        if not self.position_factors:  # the default history: raw counts, no slot table to show
            return keys
        return f"{keys}\n\n**Slots** (CTRs are at the reference slot):\n\n{factors_markdown(self.position_factors)}"


def build_feature_stats(
    con: duckdb.DuckDBPyConnection,
    spec: FeatureSpec,
    day: str,
    history: Sequence[tuple[str, Path]],
    target: Path,
) -> StatsSummary:
    """Write the statistics of ``day`` to ``target`` (atomically) from its (key, path) history.

    Every history key must be strictly before ``day``: a day's own events never describe it. The
    latest key (D-2 in the loop) is the source of the users' activity.
    """
    late = [k for k, _ in history if k >= day]
    if late:
        raise ValueError(f"feature_stats {day}: history must be strictly before the day, got {late}")
    ordered = sorted(history)
    previous = ordered[-1][1] if ordered else None
    paths = [p for _, p in ordered]
    factors = window_position_factors(con, spec, paths)
    atomic_copy_query_to_parquet(con, feature_stats_sql(spec, paths, previous, factors), target)
    counts = dict(con.sql(f"SELECT key_type, count(*) FROM {parquet_sql(target)} GROUP BY ALL").fetchall())
    prior = read_prior(con, target)
    ((rows, clicks),) = con.sql(
        f"SELECT impressions, clicks FROM {parquet_sql(target)} WHERE key_type = '{GLOBAL_KEY_TYPE}'"
    ).fetchall()
    names = [e.name for e in spec.entities] + ([USER_KEY_TYPE] if spec.user_activity else [])
    return StatsSummary(
        history_days=tuple(k for k, _ in ordered),
        history_rows=int(rows),
        history_clicks=int(clicks),
        prior=prior,
        keys={name: int(counts.get(name, 0)) for name in names},
        position_factors=factors,
    )


def read_prior(con: duckdb.DuckDBPyConnection, stats_path: Path) -> float:
    """The prior CTR of a statistics file; a file without exactly one ``global`` row is an error."""
    rows = con.sql(
        f"SELECT ctr FROM {parquet_sql(stats_path)} WHERE key_type = '{GLOBAL_KEY_TYPE}'"
    ).fetchall()
    if len(rows) != 1 or rows[0][0] is None:
        raise ValueError(f"{stats_path}: expected one '{GLOBAL_KEY_TYPE}' row with a prior CTR")
    return float(rows[0][0])


# --- features: the one definition of every feature ------------------------------------------------


def _lookup_join_sql(alias: str, key_type: str, columns: Sequence[str]) -> str:
    """LEFT JOIN of the rows ``r`` to the statistics of one key type (NULL keys match NULL)."""
    conditions = " AND ".join(
        f"{alias}.key{i + 1} IS NOT DISTINCT FROM CAST(r.{c} AS VARCHAR)" for i, c in enumerate(columns)
    )
    return (
        f"LEFT JOIN (SELECT key1, key2, impressions, ctr FROM stats WHERE key_type = '{key_type}') "
        f"{alias} ON {conditions}"
    )


def features_sql(
    spec: FeatureSpec,
    rows_relation: str,
    stats_path: Path,
    *,
    keep: Sequence[str],
    position: int | None = None,
    order_by: str | None = None,
) -> str:
    """A SELECT returning the ``keep`` columns of each row followed by the spec's feature columns.

    ``rows_relation`` is anything DuckDB can select from, with :attr:`FeatureSpec.input_columns`
    (and ``position`` for training rows). ``position=None`` keeps the logged slot (training); an
    int sets it for every row (serving). Hour and weekday are of the time in UTC.
    """
    utc = f"timezone('UTC', CAST(r.{TIME} AS TIMESTAMPTZ))"
    columns = [f"r.{c}" for c in keep] + [f"r.{c}" for c in spec.categorical]
    columns += [
        f"CAST(hour({utc}) AS INTEGER) AS hour",
        f"CAST(isodow({utc}) - 1 AS INTEGER) AS weekday",
    ]
    if spec.has_position:
        slot = f"r.{POSITION}" if position is None else str(int(position))
        columns.append(f"CAST({slot} AS INTEGER) AS {POSITION}")
    joins = []
    for i, entity in enumerate(spec.entities):
        columns += [
            f"coalesce(k{i}.impressions, 0)::BIGINT AS {impressions_feature(entity)}",
            f"coalesce(k{i}.ctr, p.prior)::DOUBLE AS {ctr_feature(entity)}",
        ]
        joins.append(_lookup_join_sql(f"k{i}", entity.name, entity.columns))
    if spec.user_activity:
        columns.append(f"coalesce(u.impressions, 0)::BIGINT AS {USER_ACTIVITY}")
        joins.append(_lookup_join_sql("u", USER_KEY_TYPE, (USER_ID,)))
    order = f"ORDER BY {order_by}" if order_by else ""
    return f"""
        WITH stats AS (SELECT * FROM {parquet_sql(stats_path)}),
        p AS (SELECT ctr AS prior FROM stats WHERE key_type = '{GLOBAL_KEY_TYPE}')
        SELECT {", ".join(columns)}
        FROM {rows_relation} r CROSS JOIN p
        {" ".join(joins)}
        {order}
    """


def add_features(
    con: duckdb.DuckDBPyConnection,
    spec: FeatureSpec,
    rows: pa.Table | str,
    stats_path: Path,
    *,
    position: int | None = None,
) -> pa.Table:
    """``rows`` with the feature columns computed from the statistics at ``stats_path``.

    The same function for training rows (``position=None``: the logged slot) and for serving
    candidates (``position`` = the reference slot; candidates need no ``position`` column). The
    result has every input column that is not a feature, then the features, in input order.
    """
    table = rows if isinstance(rows, pa.Table) else con.sql(rows).to_arrow_table()
    needed = spec.input_columns + ((POSITION,) if spec.has_position and position is None else ())
    require_columns(table.column_names, needed, "rows for features")
    read_prior(con, stats_path)
    keep = [c for c in table.column_names if c not in spec.columns]
    numbered = table.append_column(_ROW, pa.array(range(table.num_rows), pa.int64()))
    with registered(con, numbered, "feature_rows") as view:
        sql = features_sql(spec, view, stats_path, keep=keep, position=position, order_by=f"r.{_ROW}")
        return con.sql(sql).to_arrow_table()


def candidate_features(
    con: duckdb.DuckDBPyConnection, spec: FeatureSpec, candidates: pa.Table | str, stats_path: Path
) -> pa.Table:
    """Serving: features of candidate (request × ad) rows, scored at the reference slot."""
    return add_features(con, spec, candidates, stats_path, position=spec.reference_position)


def build_features(
    con: duckdb.DuckDBPyConnection, spec: FeatureSpec, events_path: Path, stats_path: Path, target: Path
) -> None:
    """Write the ``features`` table of one day of events to ``target`` (atomically, by DuckDB): the
    impression's columns that are not features (but the raw user id), its label, then the features."""
    atomic_copy_query_to_parquet(con, events_features_sql(con, spec, events_path, stats_path), target)


def events_features_sql(
    con: duckdb.DuckDBPyConnection, spec: FeatureSpec, events_path: Path, stats_path: Path
) -> str:
    """The query of :func:`build_features`: a day of events with the features of a statistics file."""
    events = parquet_sql(events_path)
    columns = con.sql(f"SELECT * FROM {events} LIMIT 0").columns
    needed = spec.input_columns + (LABEL,) + ((POSITION,) if spec.has_position else ())
    require_columns(columns, needed, str(events_path))
    read_prior(con, stats_path)
    keep = [c for c in columns if c not in spec.columns and c not in LEFT_IN_EVENTS]
    return features_sql(spec, events, stats_path, keep=keep, order_by=f"r.{TIME}, r.impression_id")


def features_summary(con: duckdb.DuckDBPyConnection, spec: FeatureSpec, path: Path) -> dict[str, object]:
    """Row count, CTR, numeric min/mean/max (as a Markdown table) and the share of rows whose key
    had no history."""
    stats = ", ".join(f"min({c}), avg({c}), max({c})" for c in spec.numeric)
    seen = spec.seen_entity
    unseen = f"avg(({impressions_feature(seen)} = 0)::DOUBLE)" if seen else "NULL"
    ((rows, ctr, unseen_share, *values),) = con.sql(
        f"SELECT count(*), avg({LABEL}), {unseen}, {stats} FROM {parquet_sql(path)}"
    ).fetchall()
    lines = ["| feature | min | mean | max |", "|---|---:|---:|---:|"]
    for i, name in enumerate(spec.numeric):
        lo, mean, hi = values[3 * i : 3 * i + 3]
        lines.append(f"| {name} | {_num(lo)} | {_num(mean)} | {_num(hi)} |")
    return {
        "rows": int(rows),
        "ctr": float(ctr or 0.0),
        "unseen_share": None if unseen_share is None else float(unseen_share),
        "unseen_entity": seen.name if seen else None,
        "numeric_markdown": "\n".join(lines),
    }


def _num(value: float | int | None) -> str:
    return "" if value is None else f"{float(value):.4g}"
