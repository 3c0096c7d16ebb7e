"""The log contract: what an ad server's landing logs hold, and what each column means to the loop.

A contract is declared once, in a YAML file (``clickloop/contracts/simulator.yaml`` is the default:
the embedded simulator's logs), and every stage reads it: ingest types and quarantines by it, the
checks derive their columns and rules from it, the features, the drift report, the evaluation slices
and serving take their columns from its roles. Nothing downstream names a column of one ad server.

Per source field: the canonical column it becomes, its type, whether it is required, and optional row
rules (allowed values, a range). A row that breaks a rule is quarantined with the reason
(``out_of_range:<column>``, ``not_allowed:<column>``); a required field that is missing or null, or
a value of the wrong type, quarantines the line too (``null:<column>``, ``bad_type:<column>``).

The loop's own roles have fixed canonical columns (:data:`IMPRESSION_ID`, :data:`TIME`, ...): a
contract maps its source fields onto them. Other columns are the ad server's own (context of the
request, attributes of the ad); the ``features`` section says which of them are model inputs and
which are entities whose click history becomes CTR features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

FieldType = Literal["string", "int", "float", "timestamp"]
FIELD_TYPES: tuple[str, ...] = ("string", "int", "float", "timestamp")
Side = Literal["request", "ad"]
LogKind = Literal["impressions", "clicks"]
LOG_KINDS: tuple[LogKind, ...] = ("impressions", "clicks")

# --- Canonical columns of the loop's roles -------------------------------------------------------

IMPRESSION_ID = "impression_id"
TIME = "ts"
REQUEST_ID = "request_id"
USER_ID = "user_id"
AD_ID = "ad_id"
POSITION = "position"
BID = "bid_cpc"
MODEL_VERSION = "model_version"
PREDICTED_CTR = "predicted_ctr"
#: Rollout columns (optional): the probability the serving policy had of showing this ad in this
#: slot for this request (exploration traffic: 1/candidates), and a shadow model's score of the ad.
PROPENSITY = "propensity"
SHADOW_VERSION = "shadow_version"
SHADOW_CTR = "shadow_ctr"
CLICK_ID = "click_id"
LABEL = "clicked"
#: Where a typed row came from (added by ingest to every valid row and quarantined line).
SOURCE_FILE = "source_file"
LINE_NUMBER = "line_number"

#: Role columns that are never model inputs: ids, the price, and what the serving policy logged
#: (a model fed its predecessor's prediction or its price learns the policy, not the user).
NEVER_FEATURES: frozenset[str] = frozenset(
    {IMPRESSION_ID, REQUEST_ID, USER_ID, AD_ID, CLICK_ID, BID, MODEL_VERSION, PREDICTED_CTR, LABEL, TIME}
    | {PROPENSITY, SHADOW_VERSION, SHADOW_CTR}
)

#: Timestamp formats: ISO-8601 text, numbers of seconds or milliseconds since the epoch, or a
#: ``strptime`` pattern (e.g. ``%y%m%d%H`` for logs stamped by the hour).
TIME_FORMATS: tuple[str, ...] = ("iso8601", "epoch_s", "epoch_ms")


def sql_literal(value: object) -> str:
    """A value as a SQL literal (strings quoted, quotes doubled)."""
    return "'" + value.replace("'", "''") + "'" if isinstance(value, str) else repr(value)


class ContractError(ValueError):
    """A contract that cannot be used; the message names the file and the field."""


def json_pointer(pointer: str) -> tuple[str, ...]:
    """The keys of a JSON Pointer (RFC 6901) such as ``/device/os``."""
    return tuple(part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:])


@dataclass(frozen=True)
class Field:
    """One field of a log line and the canonical column it becomes."""

    #: the field's name in the log; in JSON lines a JSON Pointer (RFC 6901, ``/device/os``) reaches
    #: into nested objects
    source: str
    column: str
    type: FieldType
    required: bool = True
    #: the value set a row must be in (row rule ``not_allowed:<column>``)
    allowed: tuple[Any, ...] | None = None
    #: inclusive bounds a row must be in (row rule ``out_of_range:<column>``); None = unbounded
    min: float | None = None
    max: float | None = None
    #: the lower bound itself is out of range (a price must be > 0)
    min_exclusive: bool = False
    #: timestamps: ``iso8601`` (default), ``epoch_s``, ``epoch_ms`` or a strptime pattern
    format: str | None = None
    #: which side of the auction the column describes (the request, or the candidate ad)
    side: Side = "request"
    #: a personal id (a user's): stored only as a keyed pseudonym, redacted from quarantined lines
    #: (:mod:`clickloop.privacy`)
    personal: bool = False

    @property
    def path(self) -> tuple[str, ...]:
        """The keys leading to the value in a JSON object: the source's JSON Pointer segments (with
        ``~1`` for ``/`` and ``~0`` for ``~``), or the source itself."""
        return json_pointer(self.source) if self.source.startswith("/") else (self.source,)

    @property
    def has_range(self) -> bool:
        return self.min is not None or self.max is not None

    def not_allowed_sql(self, value: str) -> str | None:
        """The SQL condition that ``value`` breaks the allowed set (None without one)."""
        if self.allowed is None:
            return None
        return f"{value} NOT IN ({', '.join(sql_literal(v) for v in self.allowed)})"

    def out_of_range_sql(self, value: str) -> str | None:
        """The SQL condition that ``value`` lies outside the range (None without one)."""
        out = []
        if self.min is not None:
            out.append(f"{value} {'<=' if self.min_exclusive else '<'} {self.min!r}")
        if self.max is not None:
            out.append(f"{value} > {self.max!r}")
        return f"({' OR '.join(out)})" if out else None

    def rule_text(self) -> str:
        """The field's row rules in words (for the UI), empty when it has none."""
        parts = []
        if self.allowed is not None:
            parts.append(f"in {{{', '.join(map(str, self.allowed))}}}")
        if self.has_range:
            low = "" if self.min is None else f"{'>' if self.min_exclusive else '≥'} {self.min:g}"
            high = "" if self.max is None else f"≤ {self.max:g}"
            parts.append(" and ".join(p for p in (low, high) if p))
        return "; ".join(parts)


@dataclass(frozen=True)
class LogSpec:
    """The fields of one log (impressions or clicks), in the order a typed table holds them."""

    kind: LogKind
    fields: tuple[Field, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.fields)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(f.source for f in self.fields)

    def field(self, column: str) -> Field:
        for f in self.fields:
            if f.column == column:
                return f
        raise KeyError(f"the {self.kind} log has no column {column!r}")

    def has(self, column: str) -> bool:
        return column in self.columns

    @property
    def personal_columns(self) -> tuple[str, ...]:
        """Columns holding personal ids (pseudonymised at ingest)."""
        return tuple(f.column for f in self.fields if f.personal)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.fields if f.required)

    @property
    def typed_columns(self) -> tuple[str, ...]:
        """The columns of the typed table: every field, then where each row came from."""
        return (*self.columns, SOURCE_FILE, LINE_NUMBER)


@dataclass(frozen=True)
class EntityKey:
    """Columns whose click history becomes CTR features (an ad, an advertiser, an ad × site…)."""

    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class DayQuality:
    """What makes a whole day implausible (blocking checks), whatever its single rows look like."""

    #: the share of a day's lines quarantined for any one reason above which the day is refused
    max_quarantine_share: float = 0.02
    #: a plausible band for the day's median bid (prices logged in cents fall out of it)
    bid_median_range: tuple[float, float] | None = None
    #: a plausible band for the day's click-through rate (a broken join gives 0 or 1)
    ctr_range: tuple[float, float] = (0.001, 0.3)


@dataclass(frozen=True)
class Pin:
    """A person's override of one expectation of the learned validation suite, by its name
    (``ctr``, ``null_share:os``…): fixed bounds (None: unbounded on that side), or disabled."""

    name: str
    low: float | None = None
    high: float | None = None
    disabled: bool = False


@dataclass(frozen=True)
class LogContract:
    """Everything the loop knows about one ad server's logs."""

    name: str
    impressions: LogSpec
    #: the click log; None when clicks come as a label column on the impression rows
    clicks: LogSpec | None
    #: model inputs taken as categories, in the order the model sees them
    categorical_features: tuple[str, ...]
    #: columns whose click history becomes CTR features
    entities: tuple[EntityKey, ...]
    #: whether each user's impressions on the latest finished day are a feature
    user_activity: bool = True
    #: history statistics that keep their meaning when the serving policy changes: CTRs at the
    #: reference slot, request-side keys relative to the ads they showed, the mean ad's CTR as prior
    #: (:mod:`clickloop.position`, :func:`clickloop.features.feature_stats_sql`)
    policy_invariant_history: bool = False
    #: slices the evaluation and the promotion gate compare on
    slices: tuple[str, ...] = ()
    quality: DayQuality = field(default_factory=DayQuality)
    #: pins of the learned validation suite, kept across trainings (the file's ``validation_suite``)
    suite_pins: tuple[Pin, ...] = ()
    #: the attribution window (hours) clicks are joined within; labelled logs ignore it
    attribution_window_hours: float = 24.0
    description: str = ""
    path: str | None = None

    # --- roles ------------------------------------------------------------------------------

    @property
    def labelled(self) -> bool:
        """Clicks come as a label on each impression row instead of a click log."""
        return self.clicks is None

    @property
    def has_position(self) -> bool:
        return self.impressions.has(POSITION)

    @property
    def positions(self) -> tuple[int, ...] | None:
        """The ad slots a page has (the allowed values of ``position``), None without a position."""
        if not self.has_position:
            return None
        allowed = self.impressions.field(POSITION).allowed
        return tuple(int(v) for v in allowed) if allowed else None

    @property
    def reference_position(self) -> int | None:
        """Ranking happens before a slot is known: candidates are scored at the top slot."""
        positions = self.positions
        return min(positions) if positions else None

    @property
    def has_bid(self) -> bool:
        return self.impressions.has(BID)

    @property
    def has_user(self) -> bool:
        return self.impressions.has(USER_ID)

    @property
    def has_served_predictions(self) -> bool:
        return self.impressions.has(PREDICTED_CTR) and self.impressions.has(MODEL_VERSION)

    def log(self, kind: LogKind) -> LogSpec:
        spec = self.impressions if kind == "impressions" else self.clicks
        if spec is None:
            raise ContractError(f"{self.name}: this contract has no {kind} log (labelled impressions)")
        return spec

    @property
    def log_kinds(self) -> tuple[LogKind, ...]:
        return ("impressions",) if self.labelled else LOG_KINDS

    # --- what the stages derive -------------------------------------------------------------

    @property
    def request_side(self) -> tuple[str, ...]:
        """Impression columns that describe the request (known before the ad is chosen)."""
        return tuple(f.column for f in self.impressions.fields if f.side == "request")

    @property
    def ad_side(self) -> tuple[str, ...]:
        """Impression columns that describe the candidate ad."""
        return tuple(f.column for f in self.impressions.fields if f.side == "ad")

    @property
    def request_context(self) -> tuple[str, ...]:
        """Categorical features that describe the request: their drift does not depend on which
        ads the serving policy chose (the drift sensor counts these)."""
        return tuple(c for c in self.categorical_features if c in self.request_side)

    @property
    def entity_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for e in self.entities for c in e.columns))

    @property
    def candidate_columns(self) -> tuple[str, ...]:
        """What a candidate row (request × ad) needs for its features: the time, the user, the
        ad, the categorical features and the entity columns (never the position: see
        :attr:`reference_position`)."""
        columns = [TIME, AD_ID, *([USER_ID] if self.user_activity else [])]
        columns += [*self.categorical_features, *self.entity_columns]
        return tuple(dict.fromkeys(columns))

    @property
    def evaluation_slices(self) -> tuple[str, ...]:
        if self.slices:
            return self.slices
        return (*self.request_context, *((POSITION,) if self.has_position else ()))

    def describe(self) -> str:
        """One line for the UI: the contract and what it lacks."""
        notes = []
        if self.labelled:
            notes.append("clicks as a label on impressions")
        if not self.has_position:
            notes.append("no position: ranking needs no reference slot")
        if not self.has_bid:
            notes.append("no bid: ranking and revenue fall back to CTR")
        return f"{self.name}" + (f" ({'; '.join(notes)})" if notes else "")


def require_columns(available: Sequence[str], needed: Sequence[str], what: str) -> None:
    """A clear error naming the columns ``what`` lacks."""
    missing = [c for c in needed if c not in available]
    if missing:
        raise ValueError(f"{what} lack(s) column(s): {', '.join(missing)}")
