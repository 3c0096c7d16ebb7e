"""The ranking service for real: ``clickloop-ranker`` (uvicorn) on 127.0.0.1 in a subprocess, over
a copy of the session's history (its champion in MLflow, its statistics in the warehouse)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests
import xgboost as xgb

from clickloop.calibration import newest_from_tags
from clickloop.model import model_frame_for
from clickloop.ranking import STATS_TABLE, ChampionPolicy
from clickloop.service.catalog import AD_CATALOG
from clickloop.service.client import HttpRankingPolicy
from clickloop.simulator import candidate_frame, draw_context
from resources.tracking import CHAMPION_ALIAS
from tests.assets.history import History, shared_history
from tests.e2e.support import VENV_BIN, ManagedProcess, free_port, process_env, wait_until

#: seconds between the service's looks at the aliases (the switch test waits a few of them)
TTL_S = 0.2


@dataclass
class Ranker:
    url: str
    history: History
    day: str
    process: ManagedProcess

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.url}{path}", json=body, timeout=30)


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ranker]:
    history = shared_history(tmp_path_factory).copy(tmp_path_factory.mktemp("ranker"))
    day = history.warehouse.partition_keys(STATS_TABLE)[-1]
    result = history.materialize([AD_CATALOG], partition=day)
    assert result.success
    port = free_port()
    env = process_env(CLICKLOOP_DATA_DIR=str(history.settings.data_dir))
    argv = [
        str(VENV_BIN / "clickloop-ranker"),
        "--port",
        str(port),
        "--features",
        "warehouse",
        "--ttl",
        str(TTL_S),
    ]
    process = ManagedProcess.start("ranker", argv, env, history.root / "logs")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 200,
            90,
            "the ranker",
            alive=[process],
        )
        yield Ranker(url, history, day, process)
    finally:
        process.stop()


def _request(ranker: Ranker, n: int = 32) -> dict[str, Any]:
    """A request of day ``day`` (a logged impression's context) with ``n`` catalog ads."""
    events = ranker.history.warehouse.read_partition("ad_events", ranker.history.event_days[-1]).to_pandas()
    row = events.iloc[0]
    catalog = pq.read_table(ranker.history.warehouse.partition_path(AD_CATALOG, ranker.day)).to_pandas()
    context = {
        "ts": f"{ranker.day}T10:15:00Z",
        **{
            c: row[c]
            for c in ("user_id", "user_segment", "site_id", "site_category", "device_type", "os", "country")
        },
    }
    return {"context": context, "candidates": catalog["ad_id"].head(n).tolist(), "k": 3}


def test_rank_returns_the_top_k_by_expected_revenue(ranker: Ranker) -> None:
    body = _request(ranker)
    response = ranker.post("/rank", {**body, "k": 32})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_version"] == "ctr_model-v1" and answer["features_version"] == ranker.day
    ranked = answer["ranked"]
    assert [r["rank"] for r in ranked] == list(range(1, 33))
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    for r in ranked:
        assert r["score"] == pytest.approx(r["predicted_ctr"] * r["bid_cpc"], rel=1e-12)
    # the same numbers as the in-process policy on the same candidates
    frame = pd.DataFrame([{**body["context"], "ad_id": r["ad_id"]} for r in ranked])
    catalog = pq.read_table(ranker.history.warehouse.partition_path(AD_CATALOG, ranker.day)).to_pandas()
    frame = frame.merge(catalog.drop(columns=["last_seen"]), on="ad_id", how="left")
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    registry = ranker.history.registry
    version, booster = registry.champion()
    policy = ChampionPolicy(
        version,
        booster,
        ranker.history.warehouse.partition_path(STATS_TABLE, ranker.day),
        ranker.history.resources["log_contract"].features(),
        newest_from_tags(version, registry.version_tags(version)),
        ranker.history.resources["log_contract"].pseudonymiser(),
    )
    assert not policy.calibration.is_identity  # the service serves calibrated probabilities
    np.testing.assert_allclose([r["predicted_ctr"] for r in ranked], policy.predict_ctr(frame), rtol=1e-12)
    top = ranker.post("/rank", body).json()["ranked"]
    assert [r["ad_id"] for r in top] == [r["ad_id"] for r in ranked[:3]]


def test_bad_input_is_a_422_naming_the_field(ranker: Ranker) -> None:
    body = _request(ranker)
    missing = {**body, "context": {k: v for k, v in body["context"].items() if k != "site_id"}}
    response = ranker.post("/rank", missing)
    assert response.status_code == 422
    assert ["body", "context", "site_id"] in [e["loc"] for e in response.json()["detail"]]
    wrong = {**body, "context": {**body["context"], "ts": "yesterday"}}
    assert ["body", "context", "ts"] in [e["loc"] for e in ranker.post("/rank", wrong).json()["detail"]]
    bid = {**body, "candidates": [{"ad_id": "a-1", "bid_cpc": -1}]}
    assert ["body", "candidates", 0, "bid_cpc"] in [
        e["loc"] for e in ranker.post("/rank", bid).json()["detail"]
    ]
    k = ranker.post("/rank", {**body, "k": 0})
    assert k.status_code == 422 and ["body", "k"] in [e["loc"] for e in k.json()["detail"]]


def test_an_unknown_ad_is_a_clear_error(ranker: Ranker) -> None:
    body = _request(ranker, n=3)
    body["candidates"].append("ad-that-does-not-exist")
    response = ranker.post("/rank", body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "candidates", 3, "ad_id"] and error["type"] == "unknown_ad"
    assert "ad-that-does-not-exist" in error["msg"] and "bid_cpc" in error["msg"]
    # an ad the catalog lacks is served when the request brings its columns
    body["candidates"][3] = {"ad_id": "ad-that-does-not-exist", "advertiser_id": "adv-1", "bid_cpc": 0.5}
    assert ranker.post("/rank", body).status_code == 200


def test_explain_contributions_add_up_to_the_margin(ranker: Ranker) -> None:
    body = _request(ranker, n=1)
    response = ranker.post("/explain", {"context": body["context"], "candidate": body["candidates"][0]})
    assert response.status_code == 200, response.text
    answer = response.json()
    total = sum(answer["contributions"].values()) + answer["bias"]
    assert total == pytest.approx(answer["margin"], abs=1e-4)
    assert set(answer["contributions"]) == set(answer["features"])
    ranked = ranker.post("/rank", {**body, "k": 1}).json()["ranked"][0]
    assert answer["predicted_ctr"] == pytest.approx(ranked["predicted_ctr"], rel=1e-5)


def test_metrics_and_health(ranker: Ranker) -> None:
    health = requests.get(f"{ranker.url}/healthz", timeout=5).json()
    assert health["status"] == "ok" and health["models"][CHAMPION_ALIAS] == "1"
    text = requests.get(f"{ranker.url}/metrics", timeout=5).text
    assert 'clickloop_ranker_requests_total{endpoint="/rank",status="200"}' in text
    assert "clickloop_ranker_request_seconds_bucket" in text


def test_the_simulator_ranks_through_the_service(ranker: Ranker) -> None:
    """The HTTP policy gives the in-process champion's numbers on a simulated chunk of requests."""
    simulator = ranker.history.simulator
    world = simulator.world()
    day = pd.Timestamp(ranker.day).date()
    context = draw_context(world, world.scenario, day, 50, np.random.default_rng(3))
    rows = np.repeat(np.arange(50), 32)
    ads = np.random.default_rng(4).integers(0, len(world.ad_bid_cpc), rows.size)
    frame = candidate_frame(world, day, context, rows, ads)
    contract = ranker.history.resources["log_contract"].get()
    policy = HttpRankingPolicy(ranker.url, contract.candidate_columns)
    assert policy.version == "ctr_model-v1"
    registry = ranker.history.registry
    version, booster = registry.champion()
    local = ChampionPolicy(
        version,
        booster,
        ranker.history.warehouse.partition_path(STATS_TABLE, ranker.day),
        ranker.history.resources["log_contract"].features(),
        newest_from_tags(version, registry.version_tags(version)),
        ranker.history.resources["log_contract"].pseudonymiser(),
    )
    np.testing.assert_allclose(policy.predict_ctr(frame), local.predict_ctr(frame), rtol=1e-12)


def test_a_moved_alias_is_served_without_a_restart(ranker: Ranker) -> None:
    """A second version promoted in the registry answers the next requests (after the TTL)."""
    registry = ranker.history.registry
    features = ranker.history.warehouse.read_partition("features", ranker.history.event_days[-1])
    _, champion = registry.champion()
    frame = model_frame_for(champion, features)
    labels = features.column("clicked").to_numpy()
    booster = xgb.train(
        {"max_depth": 2, "objective": "binary:logistic", "nthread": 1},
        xgb.DMatrix(frame, labels, enable_categorical=True),
        num_boost_round=5,
    )
    run = registry.log_training_run(booster, run_name="switch", params={}, metrics={})
    version = registry.register(run)
    registry.promote(version)
    body = _request(ranker)

    def served() -> str | None:
        answer = ranker.post("/rank", body).json()
        return answer["model_version"] if answer["model_version"] == f"ctr_model-v{version}" else None

    wait_until(served, 30, f"the service to serve v{version}", interval_s=TTL_S, alive=[ranker.process])
    assert ranker.process.alive()
    registry.rollback()
    wait_until(
        lambda: ranker.post("/rank", body).json()["model_version"] == "ctr_model-v1",
        30,
        "the rollback to reach the service",
        interval_s=TTL_S,
    )


def test_compose_runs_the_ranker_next_to_redis() -> None:
    """The compose file's ``ranker`` runs this command with the online store of its ``redis``."""
    from urllib.parse import urlsplit

    from tests.e2e.test_deployment import compose, option, service_running

    service = service_running("clickloop-ranker")
    argv = service.argv or []
    assert option(argv, "--features") == "redis" and option(argv, "--host") == "0.0.0.0"
    redis_host = urlsplit(service.environment["CLICKLOOP_REDIS_URL"]).hostname
    assert redis_host in compose()["services"] and "healthcheck" in compose()["services"][redis_host]
    assert service.spec["depends_on"][redis_host]["condition"] == "service_healthy"
    assert any(str(p).startswith("127.0.0.1:") for p in service.spec["ports"])


def test_the_service_reads_the_online_store_when_configured(ranker: Ranker) -> None:
    """Started with a Redis URL, the service ranks from the store's snapshot: the same answer as
    from the warehouse's Parquet."""
    import redis

    from clickloop.service.store import write_snapshot

    url = "redis://127.0.0.1:6379/12"  # a database of the local Redis that only this test uses
    client = redis.Redis.from_url(url)
    client.flushdb()
    warehouse = ranker.history.warehouse
    stats = pq.read_table(warehouse.partition_path(STATS_TABLE, ranker.day)).to_pandas()
    catalog = pq.read_table(warehouse.partition_path(AD_CATALOG, ranker.day)).to_pandas()
    spec = ranker.history.resources["log_contract"].features()
    write_snapshot(client, spec, ranker.day, stats, catalog)
    port = free_port()
    env = process_env(CLICKLOOP_DATA_DIR=str(ranker.history.settings.data_dir), CLICKLOOP_REDIS_URL=url)
    argv = [str(VENV_BIN / "clickloop-ranker"), "--port", str(port)]  # --features auto: Redis
    process = ManagedProcess.start("ranker-redis", argv, env, ranker.history.root / "logs")
    try:
        online = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: requests.get(f"{online}/healthz", timeout=5).status_code == 200,
            90,
            "the ranker",
            alive=[process],
        )
        body = {**_request(ranker), "k": 32}
        answer = requests.post(f"{online}/rank", json=body, timeout=30).json()
        assert answer["features_version"] == ranker.day
        assert answer["ranked"] == ranker.post("/rank", body).json()["ranked"]
    finally:
        process.stop()
        client.flushdb()
