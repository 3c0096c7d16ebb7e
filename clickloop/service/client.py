"""The simulator's ranking policy over HTTP: the ad server asks the ranking service for its scores.

:class:`HttpRankingPolicy` implements the simulator's :class:`RankingPolicy` (``version`` and
``predict_ctr``) by posting each chunk of candidate rows to the service's ``/score``, column by
column, in batches. Its ``version`` is the one the service's champion had when the policy was made;
the service refuses a batch (409) if the alias moved since, so a day's logs never mix two models
under one name. The simulator still ranks (by predicted CTR x its true bid, ties at random), so a
day served through the service equals a day served in-process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import requests

from clickloop.model import served_version

#: rows per ``/score`` call
SCORE_BATCH_ROWS = 20_000
#: seconds a call may take
TIMEOUT_S = 60.0


class RankerError(RuntimeError):
    """The ranking service answered with an error (its status and detail are in the message)."""


def _raise_for(response: requests.Response, what: str) -> None:
    if response.status_code >= 400:
        raise RankerError(f"{what}: HTTP {response.status_code} {response.text[:500]}")


class HttpRankingPolicy:
    """The service's ``alias`` model as the simulator's ranking policy."""

    def __init__(self, url: str, columns: tuple[str, ...], alias: str = "champion") -> None:
        self.url = url.rstrip("/")
        self.columns = columns
        self.alias = alias
        self.session = requests.Session()
        response = self.session.get(f"{self.url}/healthz", timeout=TIMEOUT_S)
        body = (
            response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        )
        version = (body.get("models") or {}).get(alias)
        if version is None:
            raise RankerError(
                f"the ranking service at {self.url} serves no {alias!r} model: {response.text[:300]}"
            )
        self.model_version = str(version)
        self.version = served_version(str(version))

    def _payload(self, chunk: pd.DataFrame) -> dict[str, Any]:
        columns: dict[str, list[Any]] = {}
        for name in self.columns:
            values = chunk[name]
            if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(values):
                epoch = pd.Timestamp(0, tz="UTC")
                columns[name] = ((values - epoch) // pd.Timedelta(milliseconds=1)).tolist()  # epoch ms
            else:
                columns[name] = values.astype(object).where(values.notna(), None).tolist()
        return {"columns": columns, "model_alias": self.alias, "expect_version": self.version}

    def predict_ctr(self, candidates: pd.DataFrame) -> np.ndarray:
        """The service's predicted CTR of every candidate row."""
        out = np.empty(len(candidates), dtype=np.float64)
        for start in range(0, len(candidates), SCORE_BATCH_ROWS):
            chunk = candidates.iloc[start : start + SCORE_BATCH_ROWS]
            response = self.session.post(f"{self.url}/score", json=self._payload(chunk), timeout=TIMEOUT_S)
            _raise_for(response, f"POST {self.url}/score")
            out[start : start + len(chunk)] = response.json()["predicted_ctr"]
        return out
