"""Contract files: a log contract read from YAML (with errors that name the file and the key),
and written back."""

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from clickloop.contract import (
    AD_ID,
    BID,
    CLICK_ID,
    FIELD_TYPES,
    IMPRESSION_ID,
    LABEL,
    MODEL_VERSION,
    NEVER_FEATURES,
    POSITION,
    PREDICTED_CTR,
    PROPENSITY,
    REQUEST_ID,
    SHADOW_CTR,
    SHADOW_VERSION,
    TIME,
    TIME_FORMATS,
    USER_ID,
    ContractError,
    DayQuality,
    EntityKey,
    Field,
    FieldType,
    LogContract,
    LogKind,
    LogSpec,
    Pin,
    json_pointer,
)

DEFAULT_CONTRACT_PATH = Path(__file__).resolve().parent / "contracts" / "simulator.yaml"
#: what a column named for a nested source may be called (it is a column of every table)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_ROLE_TYPES: dict[str, FieldType] = {
    IMPRESSION_ID: "string",
    TIME: "timestamp",
    REQUEST_ID: "string",
    USER_ID: "string",
    AD_ID: "string",
    POSITION: "int",
    BID: "float",
    MODEL_VERSION: "string",
    PREDICTED_CTR: "float",
    PROPENSITY: "float",
    SHADOW_VERSION: "string",
    SHADOW_CTR: "float",
    CLICK_ID: "string",
    LABEL: "int",
}
_REQUIRED_ROLES: dict[str, tuple[str, ...]] = {
    "impressions": (IMPRESSION_ID, TIME, AD_ID),
    "clicks": (CLICK_ID, IMPRESSION_ID, TIME),
}


def _fail(where: str, message: str) -> ContractError:
    return ContractError(f"{where}: {message}")


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise _fail(where, f"expected a number, got {value!r}")
    return float(value)


def _parse_field(raw: Any, where: str) -> Field:
    if isinstance(raw, str):
        raw = {"source": raw}
    if not isinstance(raw, Mapping) or "source" not in raw:
        raise _fail(where, f"a field is a mapping with at least 'source', got {raw!r}")
    known = {
        *("source", "column", "type", "required", "allowed", "range", "min_exclusive", "format"),
        *("side", "personal"),
    }
    unknown = set(raw) - known
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(unknown)} (known: {sorted(known)})")
    source = str(raw["source"])
    if source.startswith("/"):  # a JSON Pointer into nested objects: the column is named
        if not all(json_pointer(source)):
            raise _fail(f"{where} ({source})", "a JSON Pointer source has a key between every '/'")
        if not isinstance(raw.get("column"), str) or not _IDENTIFIER.fullmatch(raw["column"]):
            raise _fail(
                f"{where} ({source})", "a JSON Pointer source needs a 'column': a name such as device_os"
            )
    column = str(raw.get("column", source))
    where = f"{where} ({source})"
    kind = raw.get("type", _ROLE_TYPES.get(column, "string"))
    if kind not in FIELD_TYPES:
        raise _fail(where, f"type must be one of {FIELD_TYPES}, not {kind!r}")
    if column in _ROLE_TYPES and kind != _ROLE_TYPES[column]:
        raise _fail(where, f"the loop's column {column!r} has type {_ROLE_TYPES[column]}, not {kind}")
    allowed = raw.get("allowed")
    if allowed is not None and (not isinstance(allowed, list) or not allowed):
        raise _fail(where, f"allowed must be a non-empty list, got {allowed!r}")
    low = high = None
    if "range" in raw:
        bounds = raw["range"]
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise _fail(where, f"range is [min, max] (null for no bound), got {bounds!r}")
        low, high = _number(bounds[0], where), _number(bounds[1], where)
        if kind not in ("int", "float"):
            raise _fail(where, f"a range needs a numeric type, not {kind}")
        if low is not None and high is not None and low > high:
            raise _fail(where, f"range min {low} is above max {high}")
    fmt = raw.get("format")
    if fmt is not None and kind != "timestamp":
        raise _fail(where, "format is for timestamps only")
    if fmt is not None and fmt not in TIME_FORMATS and "%" not in str(fmt):
        raise _fail(where, f"format is one of {TIME_FORMATS} or a strptime pattern, not {fmt!r}")
    side = raw.get("side", "ad" if column in (AD_ID, BID) else "request")
    if side not in ("request", "ad"):
        raise _fail(where, f"side is 'request' or 'ad', not {side!r}")
    personal = raw.get("personal", False)
    if not isinstance(personal, bool):
        raise _fail(where, f"personal is true or false, not {personal!r}")
    if personal and kind != "string":
        raise _fail(where, f"a personal id is stored as a pseudonym (text): type string, not {kind}")
    return Field(
        source=source,
        column=column,
        type=kind,
        required=bool(raw.get("required", True)),
        allowed=None if allowed is None else tuple(allowed),
        min=low,
        max=high,
        min_exclusive=bool(raw.get("min_exclusive", False)),
        format=None if fmt is None else str(fmt),
        side=side,
        personal=personal,
    )


def _parse_log(kind: LogKind, raw: Any, where: str) -> LogSpec:
    where = f"{where}: {kind}"
    if not isinstance(raw, Mapping) or not isinstance(raw.get("fields"), list):
        raise _fail(where, "expected a mapping with a list of 'fields'")
    fields = tuple(_parse_field(f, f"{where}.fields[{i}]") for i, f in enumerate(raw["fields"]))
    for attr in ("source", "column"):
        values = [getattr(f, attr) for f in fields]
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise _fail(where, f"duplicate {attr}(s) {duplicates}")
    paths = {f.path: f.source for f in fields}
    for path, source in paths.items():
        inside = [paths[path[:n]] for n in range(1, len(path)) if path[:n] in paths]
        if inside:
            raise _fail(
                where, f"{source!r} lies inside the field {inside[0]!r}: a JSON value is one or the other"
            )
    spec = LogSpec(kind, fields)
    required = _REQUIRED_ROLES[kind] if kind == "clicks" else _REQUIRED_ROLES["impressions"]
    for column in required:
        if not spec.has(column):
            raise _fail(where, f"a field must map to the loop's column {column!r}")
        if not spec.field(column).required:
            raise _fail(where, f"{column!r} must be required")
    return spec


def _pair(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise _fail(where, f"expected [low, high], got {value!r}")
    low, high = _number(value[0], where), _number(value[1], where)
    if low is None or high is None or low > high:
        raise _fail(where, f"expected low ≤ high, got {value!r}")
    return low, high


def parse_contract(raw: Any, where: str = "<contract>") -> LogContract:
    """A contract from its parsed YAML (a mapping); every problem names the file and the key."""
    if not isinstance(raw, Mapping):
        raise _fail(where, "a contract is a mapping")
    impressions = _parse_log("impressions", raw.get("impressions"), where)
    labelled = "label" in raw
    if labelled and "clicks" in raw:
        raise _fail(where, "declare either a clicks log or a label column, not both")
    if labelled:
        label = raw["label"]
        source = label.get("source") if isinstance(label, Mapping) else label
        if not isinstance(source, str):
            raise _fail(f"{where}: label", f"expected the label's source field, got {label!r}")
        label_field = Field(source=source, column=LABEL, type="int", required=True, allowed=(0, 1))
        if impressions.has(LABEL):
            raise _fail(f"{where}: label", f"an impression field already maps to {LABEL!r}")
        impressions = LogSpec("impressions", (*impressions.fields, label_field))
        clicks = None
    else:
        clicks = _parse_log("clicks", raw.get("clicks"), where)
    features = raw.get("features") or {}
    if not isinstance(features, Mapping):
        raise _fail(f"{where}: features", "expected a mapping")
    categorical = tuple(str(c) for c in features.get("categorical", ()))
    for column in categorical:
        if not impressions.has(column):
            raise _fail(f"{where}: features.categorical", f"{column!r} is not an impression column")
        if column in NEVER_FEATURES or column == POSITION:
            raise _fail(
                f"{where}: features.categorical",
                f"{column!r} is an id, the time, the price or what the serving policy logged: "
                "never a model input",
            )
    entities = []
    for i, entity in enumerate(features.get("entities", ())):
        here = f"{where}: features.entities[{i}]"
        if not isinstance(entity, Mapping) or "name" not in entity or "columns" not in entity:
            raise _fail(here, f"expected {{name, columns}}, got {entity!r}")
        columns = tuple(str(c) for c in entity["columns"])
        if not 1 <= len(columns) <= 2:
            raise _fail(here, "an entity has one or two columns")
        for column in columns:
            if not impressions.has(column):
                raise _fail(here, f"{column!r} is not an impression column")
        entities.append(EntityKey(str(entity["name"]), columns))
    names = [e.name for e in entities]
    if len(set(names)) != len(names):
        raise _fail(f"{where}: features.entities", f"duplicate names {names}")
    keys = [frozenset(e.columns) for e in entities]
    repeated = sorted({e.name for e, k in zip(entities, keys, strict=True) if keys.count(k) > 1})
    if repeated:
        raise _fail(f"{where}: features.entities", f"entities {repeated} group by the same columns")
    user_activity = bool(features.get("user_activity", impressions.has(USER_ID)))
    if user_activity and not impressions.has(USER_ID):
        raise _fail(f"{where}: features.user_activity", f"needs a {USER_ID!r} column")
    invariant = features.get("policy_invariant_history", False)
    if not isinstance(invariant, bool):
        raise _fail(
            f"{where}: features.policy_invariant_history", f"expected true or false, got {invariant!r}"
        )
    slices = tuple(str(s) for s in raw.get("slices", ()))
    for column in slices:
        if not impressions.has(column):
            raise _fail(f"{where}: slices", f"{column!r} is not an impression column")
    quality_raw = raw.get("quality") or {}
    defaults = DayQuality()
    quality = DayQuality(
        max_quarantine_share=float(quality_raw.get("max_quarantine_share", defaults.max_quarantine_share)),
        bid_median_range=_pair(quality_raw.get("bid_median_range"), f"{where}: quality"),
        ctr_range=_pair(quality_raw.get("ctr_range", list(defaults.ctr_range)), f"{where}: quality")
        or defaults.ctr_range,
    )
    if not 0 < quality.max_quarantine_share <= 1:
        raise _fail(f"{where}: quality.max_quarantine_share", "must be in (0, 1]")
    suite_pins = _parse_pins(raw.get("validation_suite") or {}, f"{where}: validation_suite")
    window = float(raw.get("attribution_window_hours", 24.0))
    if not 0 < window <= 24:
        raise _fail(f"{where}: attribution_window_hours", "must be in (0, 24]")
    return LogContract(
        name=str(raw.get("name", Path(where).stem)),
        impressions=impressions,
        clicks=clicks,
        categorical_features=categorical,
        entities=tuple(entities),
        user_activity=user_activity,
        policy_invariant_history=invariant,
        slices=slices,
        quality=quality,
        suite_pins=suite_pins,
        attribution_window_hours=window,
        description=str(raw.get("description", "")),
    )


def _parse_pins(raw: Any, where: str) -> tuple[Pin, ...]:
    """``validation_suite: {pins: [{name, low, high, disabled}, ...]}``: expectations of the learned
    suite pinned to fixed bounds or disabled, whatever a training learns."""
    if not isinstance(raw, Mapping) or set(raw) - {"pins"}:
        raise _fail(where, f"expected a mapping with 'pins', got {raw!r}")
    pins = []
    for i, pin in enumerate(raw.get("pins") or ()):
        here = f"{where}.pins[{i}]"
        if (
            not isinstance(pin, Mapping)
            or "name" not in pin
            or set(pin) - {"name", "low", "high", "disabled"}
        ):
            raise _fail(here, f"expected {{name, low, high, disabled}}, got {pin!r}")
        low, high = _number(pin.get("low"), f"{here}.low"), _number(pin.get("high"), f"{here}.high")
        if low is not None and high is not None and low > high:
            raise _fail(here, f"low {low:g} is above high {high:g}")
        pins.append(Pin(str(pin["name"]), low, high, bool(pin.get("disabled", False))))
    names = [p.name for p in pins]
    if len(set(names)) != len(names):
        raise _fail(f"{where}.pins", f"an expectation is pinned twice: {names}")
    return tuple(pins)


def load_contract(path: str | Path | None = None) -> LogContract:
    """The contract in a YAML file (the simulator's when ``path`` is None or empty)."""
    target = Path(path).expanduser().resolve() if path else DEFAULT_CONTRACT_PATH
    return _load_cached(str(target))


@cache
def _load_cached(path: str) -> LogContract:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ContractError(f"{path}: cannot read the log contract ({exc.strerror})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContractError(f"{path}: not valid YAML: {exc}") from exc
    return replace(parse_contract(raw, path), path=path)


def contract_to_dict(contract: LogContract) -> dict[str, Any]:
    """The YAML form of a contract (what :func:`parse_contract` reads back)."""

    def field_dict(f: Field) -> dict[str, Any]:
        out: dict[str, Any] = {"source": f.source}
        if f.column != f.source:
            out["column"] = f.column
        out["type"] = f.type
        if not f.required:
            out["required"] = False
        if f.allowed is not None:
            out["allowed"] = list(f.allowed)
        if f.has_range:
            out["range"] = [f.min, f.max]
        if f.min_exclusive:
            out["min_exclusive"] = True
        if f.format is not None:
            out["format"] = f.format
        out["side"] = f.side
        if f.personal:
            out["personal"] = True
        return out

    impression_fields = [
        f for f in contract.impressions.fields if not (contract.labelled and f.column == LABEL)
    ]
    out: dict[str, Any] = {"name": contract.name}
    if contract.description:
        out["description"] = contract.description
    out["impressions"] = {"fields": [field_dict(f) for f in impression_fields]}
    if contract.labelled:
        out["label"] = {"source": contract.impressions.field(LABEL).source}
    else:
        out["clicks"] = {"fields": [field_dict(f) for f in contract.log("clicks").fields]}
    out["features"] = {
        "categorical": list(contract.categorical_features),
        "entities": [{"name": e.name, "columns": list(e.columns)} for e in contract.entities],
        "user_activity": contract.user_activity,
        "policy_invariant_history": contract.policy_invariant_history,
    }
    if contract.slices:
        out["slices"] = list(contract.slices)
    q = contract.quality
    out["quality"] = {
        "max_quarantine_share": q.max_quarantine_share,
        "ctr_range": list(q.ctr_range),
        **({"bid_median_range": list(q.bid_median_range)} if q.bid_median_range else {}),
    }
    if contract.suite_pins:
        out["validation_suite"] = {
            "pins": [
                {k: v for k, v in asdict(p).items() if v is not None and (k != "disabled" or v)}
                for p in contract.suite_pins
            ]
        }
    out["attribution_window_hours"] = contract.attribution_window_hours
    return out


def dump_contract(contract: LogContract) -> str:
    return yaml.safe_dump(contract_to_dict(contract), sort_keys=False)
