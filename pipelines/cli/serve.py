"""`make serve` (``clickloop-ranker``): the ranking service on uvicorn.

Serves the registry's ``champion`` (and ``challenger`` when that alias is set) with the features of
the online store when ``CLICKLOOP_REDIS_URL`` is set (``--features redis``), else of the warehouse's
newest ``feature_stats`` partition. Binds 127.0.0.1 unless ``CLICKLOOP_SERVICE_HOST`` (or
``--host``) says otherwise. Every other setting is the deployment's (:meth:`Settings.from_env`).
"""

import click
import uvicorn
from fastapi import FastAPI

from clickloop.features import FeatureSpec
from clickloop.service.app import create_app
from clickloop.service.engine import FeatureSource, RankingEngine
from clickloop.service.features import DEFAULT_TTL_S, RedisFeatures, WarehouseFeatures
from clickloop.service.models import ModelCache
from pipelines.definitions import build_resources
from pipelines.settings import Settings
from resources.tracking import CHALLENGER_ALIAS, CHAMPION_ALIAS

FEATURE_SOURCES = ("auto", "redis", "warehouse")
DEFAULT_PORT = 8000


def build_app(settings: Settings, features: str = "auto", ttl_s: float = DEFAULT_TTL_S) -> FastAPI:
    """The service of a deployment's settings; ``features``: ``redis``, ``warehouse`` or ``auto``
    (Redis when the settings name one)."""
    if features not in FEATURE_SOURCES:
        raise ValueError(f"features must be one of {FEATURE_SOURCES}, not {features!r}")
    resources = build_resources(settings)
    # outside a run, EnvVar settings are resolved here
    registry = resources["model_registry"].process_config_and_initialize()
    contract_resource = resources["log_contract"].process_config_and_initialize()
    contract = contract_resource.get()
    spec = FeatureSpec.from_contract(contract)
    use_redis = features == "redis" or (
        features == "auto" and bool(settings.resource("online_store").get("url"))
    )
    source: FeatureSource
    if use_redis:
        source = RedisFeatures(
            resources["online_store"].process_config_and_initialize().client(), spec, ttl_s
        )
    else:
        source = WarehouseFeatures(resources["warehouse"].process_config_and_initialize().get(), spec, ttl_s)
    models = ModelCache(registry, (CHAMPION_ALIAS, CHALLENGER_ALIAS), ttl_s)
    return create_app(RankingEngine(contract, models, source, contract_resource.pseudonymiser()))


@click.command(name="clickloop-ranker")
@click.option("--host", envvar="CLICKLOOP_SERVICE_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="CLICKLOOP_SERVICE_PORT", default=DEFAULT_PORT, type=int, show_default=True)
@click.option(
    "--features",
    envvar="CLICKLOOP_SERVICE_FEATURES",
    type=click.Choice(FEATURE_SOURCES),
    default="auto",
    show_default=True,
    help="where candidates' features come from (auto: Redis when CLICKLOOP_REDIS_URL is set)",
)
@click.option(
    "--ttl",
    "ttl_s",
    envvar="CLICKLOOP_SERVICE_TTL_S",
    default=DEFAULT_TTL_S,
    type=float,
    show_default=True,
    help="seconds between looks at the model aliases and the newest statistics",
)
def cli(host: str, port: int, features: str, ttl_s: float) -> None:
    """Serve /rank, /explain, /score, /healthz and /metrics."""
    app = build_app(Settings.from_env(), features, ttl_s)
    click.echo(f"clickloop ranker on http://{host}:{port} (features: {features})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    cli()
