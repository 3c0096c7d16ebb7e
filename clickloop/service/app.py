"""The ranking service as an ASGI app (FastAPI): ``/rank``, ``/explain``, ``/score``, ``/healthz``,
``/metrics`` (Prometheus).

:func:`create_app` takes a :class:`RankingEngine` (the models by alias and the features' source), so
tests and the command line (``pipelines/cli/serve.py``, ``make serve``) build it from their own
settings. Request bodies are validated against the log contract (:mod:`clickloop.service.schemas`):
a bad field is a 422 whose ``detail[].loc`` names it, an unknown ad a 422 naming
``candidates[i].ad_id``; with no model or no statistics yet the service answers 503.
"""

# no ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations, and the
# request models are built from the contract inside create_app

import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from clickloop.service.engine import RankingEngine, RequestError
from clickloop.service.schemas import (
    ExplainResponse,
    RankedAd,
    RankResponse,
    ScoreRequest,
    ScoreResponse,
    build_schemas,
)

#: latency buckets (seconds) of the request histogram: sub-millisecond to a second
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServiceMetrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "clickloop_ranker_requests",
            "Requests by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "clickloop_ranker_request_seconds",
            "Request latency by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.candidates = Counter(
            "clickloop_ranker_candidates_scored",
            "Candidates scored, by model version.",
            ["model_version"],
            registry=self.registry,
        )
        self.predicted_ctr = Histogram(
            "clickloop_ranker_predicted_ctr",
            "Predicted CTR of the ads ranked first.",
            ["model_version"],
            buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5),
            registry=self.registry,
        )
        self.model_info = Gauge(
            "clickloop_ranker_model",
            "1 for the version each alias serves.",
            ["alias", "model_version"],
            registry=self.registry,
        )


class MeasuringMiddleware:
    """Counts and times every HTTP request by path and status (a plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` costs a task and a stream per request)."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope["path"]
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
            self.metrics.requests.labels(path, str(status["code"])).inc()


def create_app(engine: RankingEngine) -> FastAPI:
    """The service over one engine."""
    schemas = build_schemas(engine.contract)
    RankRequest, ExplainRequest = schemas.rank, schemas.explain  # noqa: N806
    metrics = ServiceMetrics()
    app = FastAPI(
        title="clickloop ranker",
        description="Ranks candidate ads by predicted CTR x bid with the registered champion.",
    )
    app.state.engine, app.state.metrics = engine, metrics

    app.add_middleware(MeasuringMiddleware, metrics=metrics)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail()})

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """The versions each alias serves and the statistics' version; 503 before both exist."""
        versions = engine.models.versions()
        metrics.model_info.clear()
        for alias, version in versions.items():
            if version is not None:
                metrics.model_info.labels(alias, version).set(1)
        try:
            features = engine.features.snapshot().version
        except LookupError as exc:
            features, problem = None, str(exc)
        else:
            problem = None
        champion = versions.get(engine.models.aliases[0])
        body = {
            "status": "ok" if champion is not None and features is not None else "unavailable",
            "models": versions,
            "features_version": features,
            **({"problem": problem} if problem else {}),
        }
        return body if body["status"] == "ok" else JSONResponse(status_code=503, content=body)

    @app.post("/rank", response_model=RankResponse)
    def rank(body: RankRequest) -> RankResponse:  # type: ignore[valid-type]
        """The top ``k`` candidates by predicted CTR x bid."""
        ranked = engine.rank(
            body.context.model_dump(), [c.model_dump() for c in body.candidates], body.k, body.model_alias
        )
        version = ranked.model.served_version
        metrics.candidates.labels(version).inc(len(ranked.ad_ids))
        scores = ranked.scores()
        if len(ranked.order):
            metrics.predicted_ctr.labels(version).observe(float(ranked.predicted_ctr[ranked.order[0]]))
        return RankResponse(
            model_version=version,
            model_alias=body.model_alias,
            features_version=ranked.features_version,
            ranked=[
                RankedAd(
                    ad_id=ranked.ad_ids[i],
                    rank=r + 1,
                    predicted_ctr=float(ranked.predicted_ctr[i]),
                    bid_cpc=None if ranked.bids is None else float(ranked.bids[i]),
                    score=float(scores[i]),
                )
                for r, i in enumerate(ranked.order.tolist())
            ],
        )

    @app.post("/explain", response_model=ExplainResponse)
    def explain(body: ExplainRequest) -> ExplainResponse:  # type: ignore[valid-type]
        """Each feature's contribution (log-odds, XGBoost's pred_contribs) to one candidate's score."""
        model, features_version, values, explanation = engine.explain(
            body.context.model_dump(), body.candidate.model_dump(), body.model_alias
        )
        return ExplainResponse(
            model_version=model.served_version,
            model_alias=body.model_alias,
            features_version=features_version,
            ad_id=body.candidate.ad_id,
            features=values,
            contributions=explanation.contributions,
            bias=explanation.bias,
            margin=explanation.margin,
            predicted_ctr=explanation.predicted_ctr,
        )

    @app.post("/score", response_model=ScoreResponse)
    def score(body: ScoreRequest) -> ScoreResponse:
        """Predicted CTR of a batch of candidate rows (column by column): how an ad server that
        ranks itself (the simulator) uses the service."""
        model, features_version, predicted = engine.score(body.columns, body.model_alias, body.expect_version)
        metrics.candidates.labels(model.served_version).inc(len(predicted))
        return ScoreResponse(
            model_version=model.served_version,
            features_version=features_version,
            predicted_ctr=np.asarray(predicted, dtype=np.float64).tolist(),
        )

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
