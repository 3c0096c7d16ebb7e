"""The bodies of the service's requests and responses, built from the log contract.

A request's ``context`` holds the request-side columns a candidate's features need (the time, the
user, the site, the device… as the contract names and types them); each candidate is an ad id, or an
object with the id and any of the ad's own columns (which then win over the catalog's). Pydantic
validates the bodies: a missing, mistyped or unknown field is a 422 whose ``loc`` names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from clickloop.contract import AD_ID, BID, TIME, LogContract
from clickloop.service.catalog import catalog_columns

_TYPES: dict[str, type] = {"string": str, "int": int, "float": float, "timestamp": datetime}
#: The most candidates one ``/rank`` or ``/explain`` request may carry.
MAX_CANDIDATES = 1_000
#: The most rows one ``/score`` batch may carry.
MAX_SCORE_ROWS = 100_000
DEFAULT_K = 2


def _field(contract: LogContract, column: str, required: bool) -> tuple[Any, Any]:
    kind = _TYPES[contract.impressions.field(column).type]
    if column == BID:
        return (float | None, Field(default=None, gt=0))
    if required:
        return (kind, Field(...))
    return (kind | None, Field(default=None))


def context_columns(contract: LogContract) -> tuple[str, ...]:
    """The request-side columns a candidate needs, in the contract's order."""
    request = set(contract.request_side)
    return tuple(c for c in contract.candidate_columns if c in request)


@dataclass(frozen=True)
class Schemas:
    """The pydantic models of one contract's requests."""

    context: type[BaseModel]
    candidate: type[BaseModel]
    rank: type[BaseModel]
    explain: type[BaseModel]
    context_columns: tuple[str, ...]
    ad_columns: tuple[str, ...]


def build_schemas(contract: LogContract) -> Schemas:
    """Request models whose fields are the contract's columns (their names, their types)."""
    strict = ConfigDict(extra="forbid")
    context_cols = context_columns(contract)
    required_context = {TIME, *contract.entity_columns}
    context = create_model(
        "RankContext",
        __config__=strict,
        **{
            c: _field(contract, c, c in required_context or contract.impressions.field(c).required)
            for c in context_cols
        },
    )
    ad_cols = catalog_columns(contract)
    candidate = create_model(
        "Candidate",
        __config__=strict,
        **{AD_ID: (str, Field(..., min_length=1))},
        **{c: _field(contract, c, False) for c in ad_cols},
    )

    def as_candidate(value: Any) -> Any:
        return {AD_ID: value} if isinstance(value, str) else value

    class RankRequest(BaseModel):
        model_config = strict
        context: context  # type: ignore[valid-type]
        candidates: list[candidate] = Field(..., min_length=1, max_length=MAX_CANDIDATES)  # type: ignore[valid-type]
        k: int = Field(default=DEFAULT_K, ge=1, le=MAX_CANDIDATES)
        model_alias: str = "champion"

        @field_validator("candidates", mode="before")
        @classmethod
        def _ids(cls, value: Any) -> Any:
            return [as_candidate(v) for v in value] if isinstance(value, list) else value

    class ExplainRequest(BaseModel):
        model_config = strict
        context: context  # type: ignore[valid-type]
        candidate: candidate  # type: ignore[valid-type]
        model_alias: str = "champion"

        @field_validator("candidate", mode="before")
        @classmethod
        def _id(cls, value: Any) -> Any:
            return as_candidate(value)

    return Schemas(context, candidate, RankRequest, ExplainRequest, context_cols, ad_cols)


class ScoreRequest(BaseModel):
    """A batch of candidate rows, column by column (the simulator's chunks of requests)."""

    model_config = ConfigDict(extra="forbid")
    columns: dict[str, list[Any]]
    model_alias: str = "champion"
    #: the served version the caller expects (its logs name it): a moved alias is a 409, not a mix
    expect_version: str | None = None


class RankedAd(BaseModel):
    ad_id: str
    rank: int
    predicted_ctr: float
    bid_cpc: float | None
    #: predicted CTR x bid (expected revenue per impression), or the predicted CTR without a price
    score: float


class RankResponse(BaseModel):
    model_version: str
    model_alias: str
    features_version: str
    ranked: list[RankedAd]


class ExplainResponse(BaseModel):
    model_version: str
    model_alias: str
    features_version: str
    ad_id: str
    features: dict[str, Any]
    contributions: dict[str, float]
    bias: float
    margin: float
    predicted_ctr: float


class ScoreResponse(BaseModel):
    model_version: str
    features_version: str
    predicted_ctr: list[float]
