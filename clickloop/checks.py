"""The rules that judge a day, derived from the log contract: what blocks training and what does not.

* Row rules (ranges, allowed sets, required fields, the day's own timestamps) are applied at ingest:
  a bad row is quarantined with its reason and the day goes on (:mod:`clickloop.ingest`). The
  rules here re-count them exactly on the typed table as hard contracts (must be 0: a violation is
  a bug upstream, never data).
* Day rules judge the whole day: the share of its lines quarantined for any one reason (a unit
  bug, a broken exporter), a plausible median price, a plausible click-through rate, the columns
  the contract promises. A day that breaks one is refused by a blocking check, and nothing is
  trained on it.

Every rule is one DuckDB aggregate (exact, one scan of the partition); see
:mod:`clickloop.expectations` for how GX validates them on the day's one-row profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from clickloop.contract import (
    AD_ID,
    BID,
    CLICK_ID,
    IMPRESSION_ID,
    LABEL,
    POSITION,
    REQUEST_ID,
    TIME,
    USER_ID,
    Field,
    LogContract,
    LogSpec,
)
from clickloop.expectations import Rule, zero
from clickloop.features import TIME_FEATURES, FeatureSpec
from clickloop.ingest import TimeWindow


def missing_columns_rule(present: Sequence[str], expected: Sequence[str], table: str) -> Rule:
    """The columns the contract promises that the table lacks (must be none)."""
    missing = [c for c in expected if c not in present]
    detail = f" ({', '.join(missing)})" if missing else ""
    return zero("missing_columns", str(len(missing)), f"contract columns missing from {table}{detail}")


def null_rules(columns: Sequence[str]) -> list[Rule]:
    return [zero(f"null:{c}", f"count(*) FILTER ({c} IS NULL)", f"rows with `{c}` null") for c in columns]


def field_rules(field: Field) -> list[Rule]:
    """A field's row rules, re-counted on the typed rows."""
    rules = []
    c = field.column
    if (not_allowed := field.not_allowed_sql(c)) is not None:
        allowed = ", ".join(map(str, field.allowed or ()))
        rules.append(
            zero(
                f"not_allowed:{c}",
                f"count(*) FILTER ({not_allowed})",
                f"rows with `{c}` outside {{{allowed}}}",
            )
        )
    if (out_of_range := field.out_of_range_sql(c)) is not None:
        rules.append(
            zero(
                f"out_of_range:{c}",
                f"count(*) FILTER {out_of_range}",
                f"rows breaking `{c}` {field.rule_text()}",
            )
        )
    return rules


def window_rule(window: TimeWindow, column: str = TIME) -> Rule:
    start, end = window.sql()
    return zero(
        f"outside_partition:{column}",
        f"count(*) FILTER ({column} < {start} OR {column} >= {end})",
        f"rows with `{column}` outside [{window.start.isoformat()}, {window.end.isoformat()})",
    )


def quarantine_rules(by_reason: Mapping[str, int], lines: int, max_share: float) -> list[Rule]:
    """The share of the day's lines quarantined for each reason (at most ``max_share`` each)."""
    if not by_reason:
        return [Rule("quarantine_share", "0.0", "share of lines quarantined", None, max_share)]
    return [
        Rule(
            f"quarantine_share:{reason}",
            repr(count / lines if lines else 1.0),
            f"share of lines quarantined as `{reason}` ({count:,} of {lines:,})",
            None,
            max_share,
        )
        for reason, count in sorted(by_reason.items())
    ]


def raw_log_rules(
    contract: LogContract,
    spec: LogSpec,
    window: TimeWindow,
    present: Sequence[str],
    quarantined: Mapping[str, int],
    lines_read: int,
) -> list[Rule]:
    """The rules of one day of a typed log: its schema and hard contracts, the share of lines
    quarantined per reason, and (impressions) at least one row and a plausible median price."""
    rules = [missing_columns_rule(present, spec.typed_columns, f"raw {spec.kind}")]
    if rules[0].sql == "0":  # the table has every column: its rows can be counted
        if spec.kind == "impressions":
            rules.append(Rule("rows", "count(*)", "rows", 1, None))
        rules += null_rules(spec.required_columns)
        for field in spec.fields:
            rules += field_rules(field)
        if spec.has(TIME):
            rules.append(window_rule(window))
        band = contract.quality.bid_median_range
        if spec.kind == "impressions" and spec.has(BID) and band is not None:
            rules.append(
                Rule(
                    "median_bid", f"median({BID})", f"the day's median `{BID}` (cents for units fail)", *band
                )
            )
    rules += quarantine_rules(quarantined, lines_read, contract.quality.max_quarantine_share)
    return rules


def events_rules(contract: LogContract, window: TimeWindow, present: Sequence[str]) -> list[Rule]:
    """The contract of one day of joined events: one row per impression, labels consistent with
    the clicks, no negative delay, the day's timestamps, a plausible click-through rate."""
    expected = (*contract.impressions.columns, LABEL, CLICK_ID, "click_ts", "click_delay_s")
    rules = [missing_columns_rule(present, dict.fromkeys(expected), "ad_events")]
    if rules[0].sql != "0":
        return rules
    keys = [c for c in (IMPRESSION_ID, REQUEST_ID, USER_ID, AD_ID, TIME, LABEL) if c in present]
    rules += [
        Rule("rows", "count(*)", "events", 1, None),
        zero(
            "duplicate_impressions",
            f"count(*) - count(DISTINCT {IMPRESSION_ID})",
            f"rows beyond one per `{IMPRESSION_ID}`",
        ),
        *null_rules(keys),
        zero(
            "label_not_binary", f"count(*) FILTER ({LABEL} NOT IN (0, 1))", f"rows with `{LABEL}` not 0 or 1"
        ),
        window_rule(window),
    ]
    if not contract.labelled:
        rules += [
            zero(
                "clicked_without_click",
                f"count(*) FILTER ({LABEL} = 1 AND {CLICK_ID} IS NULL)",
                f"clicked rows without a `{CLICK_ID}`",
            ),
            zero(
                "click_without_label",
                f"count(*) FILTER ({LABEL} = 0 AND {CLICK_ID} IS NOT NULL)",
                f"rows not clicked with a `{CLICK_ID}`",
            ),
            zero(
                "negative_click_delay",
                "count(*) FILTER (click_delay_s < 0)",
                "clicks before their impression",
            ),
        ]
    if contract.has_position:
        rules += field_rules(contract.impressions.field(POSITION))
    low, high = contract.quality.ctr_range
    rules.append(Rule("ctr", f"avg({LABEL})", "the day's click-through rate", low, high))
    return rules


def features_rules(spec: FeatureSpec, contract: LogContract, present: Sequence[str]) -> list[Rule]:
    """The contract of one day of features; every rule is hard (a violation is a bug)."""
    rules = [missing_columns_rule(present, (IMPRESSION_ID, TIME, LABEL, *spec.columns), "features")]
    if rules[0].sql != "0":
        return rules
    required = (IMPRESSION_ID, TIME, LABEL, *TIME_FEATURES, *((POSITION,) if spec.has_position else ()))
    rules += [Rule("rows", "count(*)", "rows", 1, None), *null_rules((*required, *spec.historical))]
    rules.append(
        zero(
            "label_not_binary", f"count(*) FILTER ({LABEL} NOT IN (0, 1))", f"rows with `{LABEL}` not 0 or 1"
        )
    )
    if spec.has_position:
        rules += field_rules(contract.impressions.field(POSITION))
    bounds = [("hour", 0, 23), ("weekday", 0, 6)] + [(c, 0, 1) for c in spec.ctr_features]
    bounds += [(c, 0, None) for c in spec.count_features]
    for column, low, high in bounds:
        condition = f"{column} < {low}" + (f" OR {column} > {high}" if high is not None else "")
        text = f"in [{low}, {high}]" if high is not None else f"≥ {low}"
        rules.append(
            zero(f"range:{column}", f"count(*) FILTER ({condition})", f"rows with `{column}` not {text}")
        )
    return rules
