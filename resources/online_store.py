"""The online feature store as a Dagster resource: Redis (``CLICKLOOP_REDIS_URL``).

What is stored and how is :mod:`clickloop.service.store`; this resource names the server and hands
out clients. The ranking service reads the same store (``make serve`` with ``CLICKLOOP_REDIS_URL``).
"""

import redis
from dagster import ConfigurableResource

#: The local Redis of a development machine.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class OnlineFeatureStore(ConfigurableResource):
    """A Redis server holding the per-entity features the ranking service reads."""

    url: str = DEFAULT_REDIS_URL

    def client(self) -> redis.Redis:
        """A client of the store (connections are opened on first use)."""
        return redis.Redis.from_url(self.url, socket_timeout=10)
