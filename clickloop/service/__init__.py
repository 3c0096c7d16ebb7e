"""The ranking service's core, without Dagster: what ``/rank``, ``/explain`` and ``/score`` do.

* :mod:`clickloop.service.schemas`: the request and response bodies, built from the log contract
  (a context field is a request-side column of the contract; a bad one gets a 422 naming it);
* :mod:`clickloop.service.catalog`: the ad catalog (each ad's own columns: advertiser, category,
  bid), from the ``ad_events`` of the statistics' window;
* :mod:`clickloop.service.features`: where a candidate's features come from: the warehouse's
  Parquet (:class:`clickloop.lookup.StatsLookup`) or the online store in Redis
  (:mod:`clickloop.service.store`), one snapshot per ``feature_stats`` partition;
* :mod:`clickloop.service.models`: the registered models by alias, reloaded when an alias moves;
* :mod:`clickloop.service.engine`: candidates -> features -> predictions, ranking, explanations;
* :mod:`clickloop.service.app`: the ASGI app (FastAPI) and its Prometheus metrics;
* :mod:`clickloop.service.client`: the simulator's ranking policy over HTTP.
"""
