"""The ranking service of the benchmark: ``clickloop.service`` over a model file and a statistics
file (no registry, no Dagster), on uvicorn at 127.0.0.1. ``python -m bench.ranker_server --help``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class FileModels:
    """A model source with one version, ``bench``, under every alias (clickloop.service.models)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def alias_version(self, alias: str) -> str | None:
        return "1" if alias == "champion" else None

    def load_version(self, version: str) -> Any:
        from clickloop.model import load_booster

        return load_booster(self.path)

    def version_tags(self, version: str) -> dict[str, str]:
        return {}  # no calibration: the bench scores the bare model


class FixedFeatures:
    """One Parquet snapshot with a catalog from a JSON file."""

    def __init__(self, stats: Path, catalog: Path, version: str) -> None:
        from clickloop.contract_file import load_contract
        from clickloop.features import FeatureSpec
        from clickloop.service.features import ParquetSnapshot

        self._snapshot = ParquetSnapshot(FeatureSpec.from_contract(load_contract()), version, stats, None)
        self._snapshot.catalog = json.loads(catalog.read_text())

    def snapshot(self) -> Any:
        return self._snapshot


def build_engine(model: Path, stats: Path, catalog: Path) -> Any:
    from clickloop.contract_file import load_contract
    from clickloop.privacy import pseudonymiser_for
    from clickloop.service.engine import RankingEngine
    from clickloop.service.models import ModelCache

    models = ModelCache(FileModels(model), ("champion",), ttl_s=3600.0)
    contract = load_contract()
    features = FixedFeatures(stats, catalog, "bench")
    return RankingEngine(contract, models, features, pseudonymiser_for(contract, None))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ranker_server")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    from clickloop.service.app import create_app

    app = create_app(build_engine(args.model, args.stats, args.catalog))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
