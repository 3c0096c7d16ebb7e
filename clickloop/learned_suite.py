"""A validation suite learned from statistics of the training window (as TFX learns a schema).

The hand-written suites of :mod:`clickloop.checks` say what any day must hold by contract. This one
says what a day must look like to resemble the days the model was trained on, learned in DuckDB
from the features of the training window:

* per column, the share of nulls (a day may exceed it by a tolerance) and that it is not all null;
* per numeric feature but the hour and weekday (read off the clock; their ranges are the contract's),
  the range of its values (widened by a tolerance; a day may have a small share outside) and its
  median (within the training window's 5 %–95 % band, widened);
* per categorical column of the request context with a small domain, its categories: a category
  never seen in training that takes more than a share of the day fails, a small one passes;
* the click-through rate: within the training days' band, widened by a factor.

Each learned bound is a :class:`~clickloop.expectations.Rule` (a DuckDB aggregate over the day and
its bounds), so a day is still validated by Great Expectations on its one-row profile. The suite is
stored as a GX ExpectationSuite JSON (the aggregate, the learned statistic and whether it is pinned
in each expectation's ``meta``) and rendered as GX Data Docs. A person pins an expectation to fixed
bounds or disables it (:class:`Pin`); the stored suite says which ones are pinned.

Entity keys (ids with a click history of their own: ads, advertisers, sites) get no domain: new ones arrive
every day, and the share of traffic on keys without history is the novelty sensor's metric. Counts
(impressions in the history) get no learned upper bound: they grow with traffic and with a policy
that concentrates impressions; pin one when it matters.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from clickloop.checks import missing_columns_rule
from clickloop.contract import LABEL, Pin
from clickloop.expectations import Rule, suite_of
from clickloop.features import TIME_FEATURES, FeatureSpec
from clickloop.presentation import cell, markdown_table

if TYPE_CHECKING:
    import great_expectations as gx

from clickloop.storage import (
    StoragePath,
    atomic_write_text,
    is_remote,
    one_row,
    parquet_list_sql,
    parquet_sql,
    publish,
)

#: The asset (and folder under the warehouse) of the learned suite.
VALIDATION_SUITE = "validation_suite"
SUITE_FILE = "suite.json"
#: Rules about how the values are distributed (ranges, medians, a new category's share) describe how
#: the world and the serving policy move: a day failing only these is flagged for a person (a warning,
#: the drift sensors decide about retraining), not stopped. The other rules (the columns, the rows,
#: null shares, a column all null, the CTR band) say the data is broken, and block.
SHIFT_RULE_PREFIXES = ("outside_range:", "median:", "new_category:")


def only_shifts(failed: Sequence[str]) -> bool:
    """Whether every failed rule is a distribution shift (a warning, not a block)."""
    return bool(failed) and all(name.startswith(SHIFT_RULE_PREFIXES) for name in failed)


#: The quantiles whose band the day's median must lie in.
MEDIAN_BAND = (0.05, 0.95)


@dataclass(frozen=True)
class SuiteTolerances:
    """How far a new day may stray from the training window: the defaults, defined once."""

    #: a day's null share may exceed the training window's by this much
    null_share_tolerance: float = 0.05
    #: learned value ranges and median bands are widened by this share of their width on each side
    range_tolerance: float = 0.5
    #: share of a day's non-null values allowed outside the widened range
    max_out_of_range_share: float = 0.01
    #: largest share of a day one category never seen in training may take
    new_category_share: float = 0.05
    #: a categorical column with more categories than this in training gets no domain
    max_domain_size: int = 100
    #: the day's CTR must lie in [lowest daily CTR / factor, highest daily CTR × factor]
    ctr_factor: float = 4.0


@dataclass(frozen=True)
class LearnedRule:
    """A rule of the suite with what it was learned from, and whether a person pinned it."""

    rule: Rule
    learned: Mapping[str, Any]
    pinned: bool = False


@dataclass(frozen=True)
class LearnedSuite:
    """The learned rules, the training days they come from, the tolerances and the pins."""

    name: str
    training_days: tuple[str, ...]
    rows: int
    rules: tuple[LearnedRule, ...]
    tolerances: SuiteTolerances = field(default_factory=SuiteTolerances)
    disabled: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """The feature columns the rules read (the day must have them)."""
        return tuple(dict.fromkeys(c for r in self.rules if (c := r.learned.get("column"))))

    def day_rules(self, present: Sequence[str]) -> list[Rule]:
        """The rules to validate one day with: first that it has every column the suite reads."""
        schema = missing_columns_rule(present, self.columns, "the day's features")
        if schema.sql != "0":
            return [schema]
        return [schema, *(r.rule for r in self.rules)]

    def to_gx(self) -> gx.ExpectationSuite:
        """The suite as a Great Expectations ExpectationSuite on the day's one-row profile."""
        suite = suite_of(self.name, [r.rule for r in self.rules])
        for expectation, learned in zip(suite.expectations, self.rules, strict=True):
            expectation.meta = {
                **(expectation.meta or {}),
                "sql": learned.rule.sql,
                "learned": dict(learned.learned),
                "pinned": learned.pinned,
            }
        suite.meta = {
            **(suite.meta or {}),
            "training_days": list(self.training_days),
            "rows": self.rows,
            "tolerances": asdict(self.tolerances),
            "disabled": list(self.disabled),
        }
        return suite

    def to_json(self) -> str:
        return json.dumps(self.to_gx().to_json_dict(), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, where: str = "suite") -> LearnedSuite:
        """Read back a suite written by :meth:`to_json` (a GX ExpectationSuite JSON)."""
        data = json.loads(text)
        meta = data.get("meta") or {}
        rules = []
        for i, e in enumerate(data.get("expectations") or []):
            m, kwargs = e.get("meta") or {}, e.get("kwargs") or {}
            if "sql" not in m or "name" not in m:
                raise ValueError(f"{where}: expectation {i} has no learned rule in its meta")
            rule = Rule(
                m["name"],
                m["sql"],
                _stem(e.get("description") or ""),
                kwargs.get("min_value"),
                kwargs.get("max_value"),
            )
            rules.append(LearnedRule(rule, m.get("learned") or {}, bool(m.get("pinned"))))
        return cls(
            name=data["name"],
            training_days=tuple(meta.get("training_days") or ()),
            rows=int(meta.get("rows") or 0),
            rules=tuple(rules),
            tolerances=SuiteTolerances(**(meta.get("tolerances") or {})),
            disabled=tuple(meta.get("disabled") or ()),
        )

    def markdown(self) -> str:
        """Every expectation: its bounds, what it was learned from, pinned or learned."""
        rows = [
            (
                cell(r.rule.name, 60),
                cell(r.rule.description, 90),
                r.rule.bounds_text(),
                cell(_learned_text(r.learned), 60),
                "📌 pinned" if r.pinned else "learned",
            )
            for r in self.rules
        ]
        rows += [(name, "", "", "", "disabled") for name in self.disabled]
        return markdown_table(["expectation", "what", "bounds", "training window", ""], rows)


def _stem(description: str) -> str:
    """A rule's description without the bounds :func:`suite_of` appends (``": in [a, b]"``)."""
    return description.rsplit(": ", 1)[0] if ": " in description else description


def _learned_text(learned: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {_short(v)}" for k, v in learned.items() if k not in ("column", "domain"))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _widen(low: float, high: float, tolerance: float) -> tuple[float, float]:
    width = (high - low) or abs(high) or 1.0
    return low - tolerance * width, high + tolerance * width


# --- Learning ------------------------------------------------------------------------------------


def _null_rules(column: str, share: float, tol: SuiteTolerances) -> list[LearnedRule]:
    learned = {"column": column, "null_share": round(share, 6)}
    rules = [
        LearnedRule(
            Rule(
                f"null_share:{column}",
                f"avg(CASE WHEN {column} IS NULL THEN 1.0 ELSE 0.0 END)",
                f"share of rows with `{column}` null",
                None,
                min(1.0, share + tol.null_share_tolerance),
            ),
            learned,
        )
    ]
    if share < 1.0:
        rules.append(
            LearnedRule(
                Rule(
                    f"not_all_null:{column}",
                    f"count({column})",
                    f"rows with `{column}` not null (all null fails)",
                    1,
                    None,
                ),
                learned,
            )
        )
    return rules


def _numeric_rules(
    con: duckdb.DuckDBPyConnection, relation: str, column: str, count: bool, tol: SuiteTolerances
) -> list[LearnedRule]:
    """The range of a numeric feature and its median band."""
    q_low, q_high = MEDIAN_BAND
    row = one_row(
        con,
        f"SELECT min({column}), max({column}), quantile_cont({column}, {q_low}), "
        f"quantile_cont({column}, 0.5), quantile_cont({column}, {q_high}) FROM {relation}",
    )
    if row[0] is None:
        return []
    lo, hi, p_low, median, p_high = (float(v) for v in row)
    learned = {"column": column, "min": lo, "max": hi, "median": median, "p05": p_low, "p95": p_high}
    range_low, range_high = _widen(lo, hi, tol.range_tolerance)
    band_low, band_high = _widen(p_low, p_high, tol.range_tolerance)
    if count:  # counts grow with traffic: only the lower side is learned
        range_high = band_high = None
    outside = f"{column} < {range_low!r}" + (
        f" OR {column} > {range_high!r}" if range_high is not None else ""
    )
    text = f"[{range_low:.4g}, {range_high:.4g}]" if range_high is not None else f"≥ {range_low:.4g}"
    rules = [
        LearnedRule(
            Rule(
                f"outside_range:{column}",
                f"coalesce(avg(CASE WHEN {outside} THEN 1.0 ELSE 0.0 END) FILTER ({column} IS NOT NULL), 0)",
                f"share of `{column}` values outside {text}",
                None,
                tol.max_out_of_range_share,
            ),
            learned,
        ),
        LearnedRule(
            Rule(
                f"median:{column}", f"median({column})", f"the day's median `{column}`", band_low, band_high
            ),
            learned,
        ),
    ]
    return rules


def _domain_rule(
    con: duckdb.DuckDBPyConnection, relation: str, column: str, tol: SuiteTolerances
) -> list[LearnedRule]:
    counts = con.execute(
        f"SELECT CAST({column} AS VARCHAR) AS v, count(*) AS n FROM {relation} "
        f"WHERE {column} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {tol.max_domain_size + 1}"
    ).fetchall()
    if not counts or len(counts) > tol.max_domain_size:
        return []
    total = sum(n for _, n in counts)
    domain = sorted(v for v, _ in counts)
    values = ", ".join(_quote(v) for v in domain)
    new = f"CAST({column} AS VARCHAR) NOT IN ({values})"
    sql = f"coalesce(list_max(map_values(histogram({column}) FILTER ({new}))), 0) / count(*)"
    learned = {
        "column": column,
        "categories": len(domain),
        "smallest_share": round(min(n for _, n in counts) / total, 6),
        "domain": domain,
    }
    return [
        LearnedRule(
            Rule(
                f"new_category:{column}",
                sql,
                f"largest share of one `{column}` outside its {len(domain)} training categories",
                None,
                tol.new_category_share,
            ),
            learned,
        )
    ]


def _ctr_rule(
    con: duckdb.DuckDBPyConnection, paths: Sequence[StoragePath], tol: SuiteTolerances
) -> LearnedRule:
    ctrs = [float(one_row(con, f"SELECT avg({LABEL}) FROM {parquet_sql(p)}")[0] or 0.0) for p in paths]
    low, high = min(ctrs), max(ctrs)
    learned = {"column": LABEL, "lowest_daily_ctr": low, "highest_daily_ctr": high}
    return LearnedRule(
        Rule(
            "ctr",
            f"avg({LABEL})",
            "the day's click-through rate",
            low / tol.ctr_factor,
            min(1.0, high * tol.ctr_factor),
        ),
        learned,
    )


def learn_suite(
    con: duckdb.DuckDBPyConnection,
    spec: FeatureSpec,
    days: Sequence[str],
    paths: Sequence[StoragePath],
    tolerances: SuiteTolerances = SuiteTolerances(),
    pins: Sequence[Pin] = (),
) -> LearnedSuite:
    """Learn the suite from the features partitions of the training window (``days``, ``paths``),
    then apply the pins. Every statistic is a DuckDB aggregate over the window's rows."""
    if not paths:
        raise ValueError("learning a validation suite needs at least one training day of features")
    relation = parquet_list_sql(paths)
    columns = list(spec.columns)
    nulls = ", ".join(f"avg(CASE WHEN {c} IS NULL THEN 1.0 ELSE 0.0 END)" for c in columns)
    row = one_row(con, f"SELECT count(*), {nulls} FROM {relation}")
    rows, shares = int(row[0]), [float(s) for s in row[1:]]
    learned: list[LearnedRule] = [LearnedRule(Rule("rows", "count(*)", "rows", 1, None), {"rows": rows})]
    entity_keys = {e.columns[0] for e in spec.entities if len(e.columns) == 1}
    for column, share in zip(columns, shares, strict=True):
        learned += _null_rules(column, share, tolerances)
        if column in TIME_FEATURES:  # read off the clock: a day's weekday is its date, not data
            continue
        if column in spec.numeric:
            learned += _numeric_rules(con, relation, column, column in spec.count_features, tolerances)
        elif column not in entity_keys:
            learned += _domain_rule(con, relation, column, tolerances)
    learned.append(_ctr_rule(con, paths, tolerances))
    suite = LearnedSuite(VALIDATION_SUITE, tuple(days), rows, tuple(learned), tolerances)
    return apply_pins(suite, pins)


def merged_pins(kept: Sequence[Pin], this_run: Sequence[Pin]) -> list[Pin]:
    """The pins kept in the contract file, with this run's pins in place of any of the same name."""
    return list({p.name: p for p in [*kept, *this_run]}.values())


def apply_pins(suite: LearnedSuite, pins: Sequence[Pin]) -> LearnedSuite:
    """The suite with each pin's bounds in place of the learned ones, or its expectation removed.
    A pin naming no expectation of the suite is an error that lists the names it could take."""
    by_name = {p.name: p for p in pins}
    unknown = sorted(set(by_name) - {r.rule.name for r in suite.rules})
    if unknown:
        names = ", ".join(r.rule.name for r in suite.rules)
        raise ValueError(f"pin(s) {', '.join(unknown)} name no expectation of {suite.name}; it has: {names}")
    rules, disabled = [], list(suite.disabled)
    for learned in suite.rules:
        pin = by_name.get(learned.rule.name)
        if pin is None:
            rules.append(learned)
        elif pin.disabled:
            disabled.append(pin.name)
        else:
            rule = Rule(learned.rule.name, learned.rule.sql, learned.rule.description, pin.low, pin.high)
            rules.append(LearnedRule(rule, learned.learned, pinned=True))
    return LearnedSuite(
        suite.name, suite.training_days, suite.rows, tuple(rules), suite.tolerances, tuple(disabled)
    )


# --- Storing and rendering -----------------------------------------------------------------------


def suite_dir(root: StoragePath) -> StoragePath:
    return root / VALIDATION_SUITE


def suite_path(root: StoragePath) -> StoragePath:
    return suite_dir(root) / SUITE_FILE


def data_docs_dir(root: StoragePath) -> StoragePath:
    """Where the suite's Data Docs site is written (``index.html`` inside)."""
    return root / "reports" / "data_docs" / VALIDATION_SUITE


def write_suite(root: StoragePath, suite: LearnedSuite) -> StoragePath:
    """Write the suite's GX JSON atomically."""
    return atomic_write_text(suite_path(root), suite.to_json())


def read_suite(root: StoragePath) -> LearnedSuite | None:
    """The latest learned suite, or None before the first one."""
    path = suite_path(root)
    if not path.exists():
        return None
    return LearnedSuite.from_json(path.read_text(), str(path))


def render_data_docs(root: StoragePath, suite: LearnedSuite) -> StoragePath:
    """Render the suite with GX's own Data Docs into a temporary folder, then put the site in place
    (the previous site is replaced only once the new one is complete). Returns its ``index.html``."""
    target = data_docs_dir(root)
    import great_expectations as gx

    with tempfile.TemporaryDirectory(prefix=".data_docs.") as tmp:
        site = Path(tmp) / "site"
        context = gx.get_context(mode="ephemeral")
        context.add_data_docs_site(
            site_name=VALIDATION_SUITE,
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        context.suites.add(suite.to_gx())
        context.build_data_docs(site_names=[VALIDATION_SUITE])
        if not (site / "index.html").exists():
            raise RuntimeError(f"Great Expectations wrote no Data Docs index under {site}")
        if is_remote(target):  # each page is one whole object once uploaded (the site is not)
            for page in sorted(p for p in site.rglob("*") if p.is_file()):
                publish(page, target / page.relative_to(site).as_posix())
        else:
            staged = target.with_name(f".{target.name}.new")
            shutil.rmtree(staged, ignore_errors=True)
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(site, staged)
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                target.rename(old)
            staged.rename(target)
            shutil.rmtree(old, ignore_errors=True)
    return target / "index.html"
