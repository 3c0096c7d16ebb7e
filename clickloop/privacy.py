"""Personal ids: pseudonymised with a keyed hash at ingest, redacted from quarantined lines.

A contract marks the fields that hold personal ids (``personal: true``; the simulator's
``user_id``). Ingest stores each such value as its HMAC-SHA256 under a secret key (64 hex digits),
computed by DuckDB once per distinct id of a chunk (no per-row Python): the same id gives the same
pseudonym on every day, so the per-user features still join, and without the key a pseudonym
cannot be turned back into the id nor recomputed from a guessed one. Serving reaches the same
pseudonym from the raw id the ad server sends (:meth:`Pseudonymiser.frame`, Python's :mod:`hmac`; a
test holds both equal). A quarantined line keeps its file, line number and reason; its text has
every personal value replaced by :data:`REDACTED` (a line whose fields cannot be located is withheld
whole).

The key comes from the environment (``CLICKLOOP_PSEUDONYM_KEY``) and is never logged nor shown
(its ``repr`` is hidden). Without a key (:func:`pseudonymiser_for`): the embedded simulator's
contract, whose ids are synthetic, uses the public :data:`SIMULATOR_KEY`; any other contract that
marks a personal field refuses to ingest (a :class:`PrivacyError` naming the variable), so raw ids
are never stored silently. A contract without personal fields needs no key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clickloop.contract import LogContract, sql_literal
from clickloop.readers import CSV_SYNTAX, FIELD_COUNT, NOT_AN_OBJECT
from clickloop.storage import registered

#: The environment variable holding the pseudonymisation key.
PSEUDONYM_KEY_ENV = "CLICKLOOP_PSEUDONYM_KEY"
#: The key of the embedded simulator's synthetic ids when none is set (public: not a secret).
SIMULATOR_KEY = "clickloop-simulator-synthetic-ids"
#: The contract whose ids are synthetic (the simulator's, the default contract).
SIMULATOR_CONTRACT = "simulator"
#: What stands in a quarantined line for a personal value.
REDACTED = "<redacted>"
#: A quarantined line whose personal fields cannot be located (a CSV record with another number
#: of fields, JSON that is not an object) is stored as this text.
WITHHELD = "<withheld: personal fields not locatable>"
#: Reasons a line cannot be searched for its personal fields by value or key.
UNLOCATABLE_REASONS: tuple[str, ...] = (FIELD_COUNT, CSV_SYNTAX, NOT_AN_OBJECT)
_BLOCK = 64  # SHA-256's block size in bytes
#: the DuckDB variables holding the padded keys (set by :meth:`Pseudonymiser.bind`)
_INNER_PAD, _OUTER_PAD = "clickloop_pseudonym_ipad", "clickloop_pseudonym_opad"


class PrivacyError(ValueError):
    """Personal ids that would be stored raw (no key for a contract that marks them)."""


@dataclass(frozen=True)
class Pseudonymiser:
    """HMAC-SHA256 of personal ids under one key, as SQL (ingest) and in Python (serving)."""

    key: bytes = field(repr=False)
    #: the personal columns it replaces in a frame of candidates
    columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.key:
            raise PrivacyError(f"an empty pseudonymisation key ({PSEUDONYM_KEY_ENV})")

    def _pads(self) -> tuple[str, str]:
        """The key XOR the inner and outer pads, as hex (RFC 2104)."""
        key = hashlib.sha256(self.key).digest() if len(self.key) > _BLOCK else self.key
        key = key.ljust(_BLOCK, b"\0")
        return bytes(b ^ 0x36 for b in key).hex(), bytes(b ^ 0x5C for b in key).hex()

    def bind(self, con: duckdb.DuckDBPyConnection) -> None:
        """Give a connection the padded keys :meth:`sql` reads, as DuckDB variables set through
        query parameters: the key never appears in a query's text (which an error may echo)."""
        inner, outer = self._pads()
        con.execute(f"SET VARIABLE {_INNER_PAD} = unhex($1)", [inner])
        con.execute(f"SET VARIABLE {_OUTER_PAD} = unhex($1)", [outer])

    @staticmethod
    def sql(value: str) -> str:
        """The DuckDB expression of the pseudonym (lower-case hex) of the text ``value`` on a
        connection :meth:`bind` prepared; NULL stays NULL. HMAC = H(key ^ opad || H(key ^ ipad ||
        message)) from DuckDB's ``sha256``."""
        inner, outer = f"getvariable('{_INNER_PAD}')", f"getvariable('{_OUTER_PAD}')"
        return f"sha256({outer} || unhex(sha256({inner} || encode(CAST({value} AS VARCHAR)))))"

    def column(self, con: duckdb.DuckDBPyConnection, ids: pa.Array | pa.ChunkedArray) -> pa.Array:
        """The pseudonyms of a column of ids (text; NULL stays NULL), each distinct id hashed once,
        by DuckDB on ``con`` (:meth:`sql`): a day's rows repeat their users' ids many times."""
        encoded = pc.dictionary_encode(ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids)
        self.bind(con)
        with registered(con, pa.table({"id": encoded.dictionary}), "pseudonym_ids") as view:
            hashed = con.sql(f"SELECT {self.sql('id')} AS pseudonym FROM {view}").to_arrow_table()
        return hashed.column(0).combine_chunks().take(encoded.indices)

    def value(self, text: str) -> str:
        """The pseudonym of one id (Python's :mod:`hmac`)."""
        return hmac.new(self.key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def values(self, ids: pd.Series | Sequence[object]) -> pd.Categorical:
        """The pseudonyms of a column of ids, as a categorical of them: each distinct id present is
        hashed once (of a categorical column, only the categories its rows use); missing stay
        missing. A lookup of the pseudonyms then reads the codes instead of hashing text again."""
        series = pd.Series(ids)
        if isinstance(series.dtype, pd.CategoricalDtype):
            codes, used = pd.factorize(series.cat.codes.to_numpy())  # -1 (missing) is a value here
            texts = [None if c < 0 else str(series.cat.categories[c]) for c in used]
        else:
            codes, uniques = pd.factorize(series.astype(object), use_na_sentinel=True)
            texts = [str(u) for u in uniques]
        present = np.array([t is not None for t in texts], dtype=bool)
        hashed = np.array([self.value(t) for t in texts if t is not None], dtype=object)
        # one category per pseudonym (ids of other types with the same text share one)
        categories, inverse = np.unique(hashed, return_inverse=True)
        remap = np.full(len(texts), -1, dtype=np.int64)
        remap[present] = inverse
        out = np.full(len(codes), -1, dtype=np.int64)
        known = codes >= 0
        out[known] = remap[codes[known]]
        return pd.Categorical.from_codes(out, categories=categories)

    def frame(self, candidates: pd.DataFrame) -> pd.DataFrame:
        """Candidates as the ad server sent them, their personal columns as pseudonyms (categorical);
        the caller's frame is left as it is."""
        present = [c for c in self.columns if c in candidates.columns]
        if not present:
            return candidates
        out = candidates.copy(deep=False)  # the columns replaced below are new arrays
        for column in present:
            out[column] = self.values(candidates[column])
        return out


def pseudonymiser_for(contract: LogContract, key: str | None) -> Pseudonymiser | None:
    """The pseudonymiser of a contract's personal columns under ``key``; None when the contract
    marks none. Without a key, the simulator's contract uses :data:`SIMULATOR_KEY`; another
    contract raises a :class:`PrivacyError` (raw ids are never stored silently)."""
    columns = personal_columns(contract)
    if not columns:
        return None
    if not key:
        if contract.name != SIMULATOR_CONTRACT:
            raise PrivacyError(
                f"the log contract {contract.name!r} marks personal field(s) {', '.join(columns)}: "
                f"set {PSEUDONYM_KEY_ENV} to the key their pseudonyms are made with "
                "(they are never stored raw)"
            )
        key = SIMULATOR_KEY
    return Pseudonymiser(key.encode("utf-8"), columns)


def personal_columns(contract: LogContract) -> tuple[str, ...]:
    """Every personal column of the contract's logs."""
    specs = [contract.log(kind) for kind in contract.log_kinds]
    return tuple(dict.fromkeys(c for spec in specs for c in spec.personal_columns))


def redact_sql(line: str, reason: str, values: Sequence[str], sources: Sequence[str], kind: str) -> str:
    """The DuckDB expression of a quarantined line's text without its personal values: each value
    read from the line (``values``: SQL expressions, NULL when not read) is replaced by
    :data:`REDACTED`; in JSON, so is whatever follows each personal key (``sources``), which finds
    the id in a truncated line; a line of an :data:`UNLOCATABLE_REASONS` reason is withheld."""
    text = line
    for value in values:
        text = f"CASE WHEN coalesce({value}, '') = '' THEN {text} ELSE replace({text}, {value}, '{REDACTED}') END"
    if kind == "json":
        for source in sources:
            pattern = sql_literal(r'("\Q' + source + r'\E"\s*:\s*)("(?:[^"\\]|\\.)*"?|[^,}\s]+)')
            text = f"regexp_replace({text}, {pattern}, '\\1\"{REDACTED}\"', 'g')"
    withheld = ", ".join(sql_literal(r) for r in UNLOCATABLE_REASONS)
    return f"CASE WHEN {reason} IN ({withheld}) THEN '{WITHHELD}' ELSE {text} END"
