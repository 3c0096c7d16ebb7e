"""The experiment tracker and model registry: MLflow, embedded on SQLite by default.

Every training of ``ctr_model`` is one MLflow run (parameters, metrics, the validation curve, the
feature importance table and the model) and one new version of the one registered model
``ctr_model``. The model is stored as an MLflow ``xgboost`` flavor whose data file is XGBoost's own
UBJSON format (never a pickle), so ``xgboost.Booster(model_file=...)`` and ``mlflow models serve``
both read it.

Which version serves is the alias ``champion``. Promotions are an undo stack kept as a tag of the
registered model (``champion_history``): :meth:`ModelRegistry.promote` pushes, and
:meth:`ModelRegistry.rollback` pops, so rolling back twice after three promotions restores the
first champion. The alias ``previous_champion`` always names the version a rollback would restore,
so the MLflow UI shows it too.

Embedded default: ``sqlite:///<data_dir>/mlflow/mlflow.db`` with artifacts under
``<data_dir>/mlflow/artifacts``. Production: give ``tracking_uri`` a PostgreSQL URL (from the
environment) and ``artifact_location`` a shared store.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import xgboost as xgb
from dagster import ConfigurableResource

from clickloop.champion_stack import (
    HISTORY_TAG,
    NoPreviousChampionError,
    parse_history,
    popped,
    previous_in,
    pushed,
)
from clickloop.faults import fault_point
from clickloop.gains import PROMOTED_AT_TAG

if TYPE_CHECKING:  # MLflow takes a second or two to import: only where the registry is used
    from mlflow import MlflowClient
    from mlflow.entities import Metric

CHAMPION_ALIAS = "champion"
PREVIOUS_CHAMPION_ALIAS = "previous_champion"
#: A model that passed the offline gate while a rollout is on: it serves in shadow, then as canary.
CHALLENGER_ALIAS = "challenger"
#: The challenger's rollout state on the registered model (JSON: version, stage, since per stage).
ROLLOUT_TAG = "rollout"
#: the artifact folder of a run that holds the MLflow model (xgboost flavor).
MODEL_ARTIFACT_PATH = "model"
MODEL_FORMAT = "ubj"
#: MLflow refuses more than 1000 metrics in one batch.
_METRIC_BATCH = 1000
_QUIET_LOGGERS = ("mlflow", "alembic", "urllib3")
#: MLflow's error codes (the names of its protobuf enum) the registry expects and handles
RESOURCE_ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
RESOURCE_DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"


def quiet_mlflow_logging() -> None:
    """Keep MLflow's (and its migrations') INFO chatter and download progress bars out of the
    run logs (an explicit setting of the variable wins)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


#: SQLite stores this process has already created (or found) and migrated.
_SQLITE_READY: set[str] = set()


def _create_sqlite_store(db: Path, client: MlflowClient) -> None:
    """Create and migrate an embedded SQLite store once, under a file lock: two steps of one run
    (separate processes) opening a new store at once would both migrate it and one would fail."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client.search_experiments(max_results=1)  # opens the store: creates the schema
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Promotion:
    """What :meth:`ModelRegistry.promote` changed."""

    version: str
    previous_champion: str | None

    @property
    def changed(self) -> bool:
        return self.version != self.previous_champion


@dataclass(frozen=True)
class Rollback:
    """What :meth:`ModelRegistry.rollback` changed: the champion went from ``from_version`` to
    ``to_version``; ``previous_champion`` is what a further rollback would restore."""

    from_version: str
    to_version: str
    previous_champion: str | None


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run of one training and its model artifact."""

    run_id: str
    experiment_id: str
    model_uri: str


def _is(exc: BaseException, code: str) -> bool:
    """Whether ``exc`` is an MLflow error carrying the given error code."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.error_code == code


def metric_entities(
    metrics: Mapping[str, float], history: Mapping[str, Sequence[float]], timestamp_ms: int
) -> list[Metric]:
    """Final metrics (step 0) and per-step curves as MLflow metric entities."""
    from mlflow.entities import Metric

    entities = [Metric(k, float(v), timestamp_ms, 0) for k, v in metrics.items()]
    for key, values in history.items():
        entities.extend(Metric(key, float(v), timestamp_ms, step) for step, v in enumerate(values))
    return entities


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ModelRegistry(ConfigurableResource):
    """MLflow tracking and registry for ``ctr_model``.

    Attributes:
        data_dir: the loop's data directory; the embedded store lives in ``<data_dir>/mlflow``.
        tracking_uri: an MLflow tracking URI (e.g. ``postgresql://…`` from the environment);
            empty means ``sqlite:///<data_dir>/mlflow/mlflow.db``.
        registry_uri: the model registry's URI; empty means the tracking URI.
        artifact_location: where a new experiment stores artifacts; empty means
            ``<data_dir>/mlflow/artifacts``.
        experiment_name: the MLflow experiment of the training runs.
        registered_model_name: the one registered model every training adds a version to.
        ui_url: the MLflow UI's base URL, for links from the Dagster UI.
    """

    data_dir: str
    tracking_uri: str = ""
    registry_uri: str = ""
    artifact_location: str = ""
    experiment_name: str = "clickloop-ctr"
    registered_model_name: str = "ctr_model"
    ui_url: str = "http://127.0.0.1:5000"

    # --- connection ---------------------------------------------------------------------------

    @property
    def store_dir(self) -> Path:
        return Path(self.data_dir).expanduser().resolve() / "mlflow"

    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.store_dir / 'mlflow.db'}"

    def resolved_artifact_location(self) -> str:
        if self.artifact_location:
            return self.artifact_location
        return (self.store_dir / "artifacts").as_uri()

    def client(self) -> MlflowClient:
        """An MLflow client bound to this registry's stores (no global MLflow state is touched)."""
        from mlflow import MlflowClient

        quiet_mlflow_logging()
        uri = self.resolved_tracking_uri()
        client = MlflowClient(tracking_uri=uri, registry_uri=self.registry_uri or uri)
        if uri.startswith("sqlite:///") and uri not in _SQLITE_READY:
            _create_sqlite_store(Path(uri.removeprefix("sqlite:///")), client)
            _SQLITE_READY.add(uri)
        return client

    def experiment_id(self, client: MlflowClient | None = None) -> str:
        """The id of ``experiment_name``, created on first use."""
        client = client or self.client()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(
                self.experiment_name, artifact_location=self.resolved_artifact_location()
            )
        except Exception as exc:  # another process created it meanwhile
            if not _is(exc, RESOURCE_ALREADY_EXISTS):
                raise
            return client.get_experiment_by_name(self.experiment_name).experiment_id

    def run_url(self, run_id: str) -> str:
        """The MLflow UI page of a run."""
        experiment_id = self.client().get_run(run_id).info.experiment_id
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, version: str) -> str:
        """The MLflow UI page of a version of the registered model."""
        return f"{self.ui_url.rstrip('/')}/#/models/{self.registered_model_name}/versions/{version}"

    # --- tracking -----------------------------------------------------------------------------

    def log_training_run(
        self,
        booster: xgb.Booster,
        *,
        run_name: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        metric_history: Mapping[str, Sequence[float]] | None = None,
        feature_importance: pd.DataFrame | None = None,
        tags: Mapping[str, str] | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> TrackedRun:
        """Record one training as a finished MLflow run with its model; a failure marks the run
        FAILED and re-raises.

        ``metric_history`` holds per-iteration curves (step = boosting round);
        ``feature_importance`` is logged as an MLflow table and a CSV; ``artifacts`` maps an
        artifact file name to text content (e.g. a JSON summary of the hyper-parameter search).
        """
        from mlflow.entities import Param

        client = self.client()
        run = client.create_run(self.experiment_id(client), run_name=run_name, tags=dict(tags or {}))
        run_id = run.info.run_id
        fault_point("registry.run_created")
        try:
            now = int(time.time() * 1000)
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])
            for batch in _chunks(metric_entities(metrics, metric_history or {}, now), _METRIC_BATCH):
                client.log_batch(run_id, metrics=batch)
            if feature_importance is not None:
                client.log_table(run_id, feature_importance, "feature_importance.json")
                client.log_text(run_id, feature_importance.to_csv(index=False), "feature_importance.csv")
            for name, text in (artifacts or {}).items():
                client.log_text(run_id, text, name)
            self._log_model(client, run_id, booster)
            fault_point("registry.model_logged")
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
        return TrackedRun(
            run_id=run_id,
            experiment_id=run.info.experiment_id,
            model_uri=f"{run.info.artifact_uri}/{MODEL_ARTIFACT_PATH}",
        )

    @staticmethod
    def _log_model(client: MlflowClient, run_id: str, booster: xgb.Booster) -> None:
        """Save the booster as an MLflow xgboost model (UBJSON data file) and upload it."""
        import mlflow.xgboost  # heavy: imported where it is used

        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / MODEL_ARTIFACT_PATH
            mlflow.xgboost.save_model(
                booster,
                str(model_dir),
                model_format=MODEL_FORMAT,
                pip_requirements=[f"xgboost=={xgb.__version__}"],
                signature=False,
            )
            client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT_PATH)

    # --- registry -----------------------------------------------------------------------------

    def _ensure_registered_model(self, client: MlflowClient) -> None:
        try:
            client.get_registered_model(self.registered_model_name)
        except Exception as exc:
            if not _is(exc, RESOURCE_DOES_NOT_EXIST):
                raise
            try:
                client.create_registered_model(
                    self.registered_model_name,
                    description="Click-through-rate model of clickloop (XGBoost, UBJSON).",
                )
            except Exception as exc2:
                if not _is(exc2, RESOURCE_ALREADY_EXISTS):
                    raise

    def register(self, run: TrackedRun, tags: Mapping[str, str] | None = None, description: str = "") -> str:
        """Add the run's model as a new version of ``registered_model_name``; returns the version."""
        client = self.client()
        self._ensure_registered_model(client)
        version = client.create_model_version(
            self.registered_model_name,
            source=run.model_uri,
            run_id=run.run_id,
            tags=dict(tags or {}),
            description=description or None,
            run_link=self.run_url(run.run_id),
        )
        fault_point("registry.version_created")
        return str(version.version)

    def versions(self) -> list[str]:
        """Every registered version, oldest first."""
        client = self.client()
        found = client.search_model_versions(f"name = '{self.registered_model_name}'")
        return sorted((str(v.version) for v in found), key=int)

    def version_tags(self, version: str) -> dict[str, str]:
        return dict(self.client().get_model_version(self.registered_model_name, version).tags)

    def tags_by_version(self) -> dict[str, dict[str, str]]:
        """Every registered version's tags (one query)."""
        found = self.client().search_model_versions(f"name = '{self.registered_model_name}'")
        return {str(v.version): dict(v.tags) for v in found}

    def set_version_tags(self, version: str, tags: Mapping[str, str]) -> None:
        """Tag a registered version (shown on its page in the registry)."""
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(self.registered_model_name, str(version), key, value)

    def _alias(self, client: MlflowClient, alias: str) -> str | None:
        """The version an alias points at; None if the alias (or the registered model) is absent."""
        try:
            aliases = client.get_registered_model(self.registered_model_name).aliases
        except Exception as exc:
            if _is(exc, RESOURCE_DOES_NOT_EXIST):
                return None
            raise
        version = aliases.get(alias)
        return None if version is None else str(version)

    def alias_version(self, alias: str) -> str | None:
        """The version any alias points at, or None (one registry read: the ranking service polls it)."""
        return self._alias(self.client(), alias)

    def champion_version(self) -> str | None:
        """The version the alias ``champion`` points at, or None before the first promotion."""
        return self._alias(self.client(), CHAMPION_ALIAS)

    def previous_champion_version(self) -> str | None:
        return self._alias(self.client(), PREVIOUS_CHAMPION_ALIAS)

    def load_version(self, version: str) -> xgb.Booster:
        """Download a version's model and load it with XGBoost (UBJSON, no pickle)."""
        client = self.client()
        model_version = client.get_model_version(self.registered_model_name, version)
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(model_version.run_id, MODEL_ARTIFACT_PATH, tmp)
            return xgb.Booster(model_file=str(Path(local) / f"model.{MODEL_FORMAT}"))

    def champion(self) -> tuple[str, xgb.Booster] | None:
        """The current champion as (version, booster), or None when there is none yet."""
        version = self.champion_version()
        return None if version is None else (version, self.load_version(version))

    def _history(self, client: MlflowClient) -> list[str]:
        model = client.get_registered_model(self.registered_model_name)
        return parse_history(model.tags.get(HISTORY_TAG))

    def _write_stack(self, client: MlflowClient, stack: Sequence[str]) -> str | None:
        """Store the undo stack and point the aliases at the rollback target and its top. The
        ``champion`` alias is written last: a process that dies before it leaves the champion as
        it was, and the undo stack it wrote is recognised by :func:`pushed` on the next try."""
        name = self.registered_model_name
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(list(stack)))
        fault_point("registry.promote.history")
        previous = previous_in(stack)
        if previous is None:
            if self._alias(client, PREVIOUS_CHAMPION_ALIAS) is not None:
                client.delete_registered_model_alias(name, PREVIOUS_CHAMPION_ALIAS)
        else:
            client.set_registered_model_alias(name, PREVIOUS_CHAMPION_ALIAS, previous)
        client.set_registered_model_alias(name, CHAMPION_ALIAS, stack[-1])
        return previous

    def promote(self, version: str, reason: str = "") -> Promotion:
        """Make ``version`` the champion, remembering the one it replaces for :meth:`rollback`."""
        client = self.client()
        version = str(version)
        client.get_model_version(self.registered_model_name, version)  # fails if unknown
        current = self._alias(client, CHAMPION_ALIAS)
        stamp = pd.Timestamp.now(tz="UTC").isoformat()
        client.set_model_version_tag(self.registered_model_name, version, PROMOTED_AT_TAG, stamp)
        if reason:
            client.set_model_version_tag(self.registered_model_name, version, "promotion_reason", reason)
        fault_point("registry.promote.tags")
        stack = pushed(self._history(client), current, version)
        self._write_stack(client, stack)  # moves the champion alias last
        fault_point("registry.promote.done")
        return Promotion(version=version, previous_champion=current)

    def rollback(self) -> Rollback:
        """Restore the champion before the current one; repeated calls walk further back.

        Raises :class:`NoPreviousChampionError` when there is no champion or no earlier one.
        """
        client = self.client()
        current = self._alias(client, CHAMPION_ALIAS)
        if current is None:
            raise NoPreviousChampionError("there is no champion to roll back")
        target, stack = popped(self._history(client), current)
        previous = self._write_stack(client, stack)
        stamp = pd.Timestamp.now(tz="UTC").isoformat()
        client.set_model_version_tag(self.registered_model_name, current, "rolled_back_at", stamp)
        return Rollback(from_version=current, to_version=target, previous_champion=previous)

    # --- the challenger of a rollout ------------------------------------------------------------

    def challenger(self) -> dict[str, Any] | None:
        """The challenger's rollout state (``version``, ``stage``, ``since``: the first day of each
        stage), or None when no challenger is on."""
        client = self.client()
        version = self._alias(client, CHALLENGER_ALIAS)
        if version is None:
            return None
        state = json.loads(
            client.get_registered_model(self.registered_model_name).tags.get(ROLLOUT_TAG, "{}")
        )
        if state.get("version") != version:
            raise ValueError(f"the {ROLLOUT_TAG} tag {state} does not describe the challenger v{version}")
        return state

    def set_challenger(self, version: str, stage: str, day: str) -> dict[str, Any]:
        """Point the ``challenger`` alias at ``version`` in ``stage`` from ``day`` on (a new
        challenger replaces the old one; the same one moves to the next stage)."""
        client, name, version = self.client(), self.registered_model_name, str(version)
        client.get_model_version(name, version)  # fails if unknown
        current = self.challenger()
        since = dict(current["since"]) if current and current["version"] == version else {}
        since.setdefault(stage, day)
        state = {"version": version, "stage": stage, "since": since}
        client.set_registered_model_tag(name, ROLLOUT_TAG, json.dumps(state))
        client.set_registered_model_alias(name, CHALLENGER_ALIAS, version)
        client.set_model_version_tag(name, version, "rollout_stage", stage)
        return state

    def end_challenger(self, outcome: str, reason: str = "") -> str | None:
        """Remove the challenger (after its promotion or its rollback); the champion is untouched.
        Returns the version it was, None when there was none."""
        client, name = self.client(), self.registered_model_name
        version = self._alias(client, CHALLENGER_ALIAS)
        if version is None:
            return None
        client.delete_registered_model_alias(name, CHALLENGER_ALIAS)
        client.set_registered_model_tag(name, ROLLOUT_TAG, "{}")
        client.set_model_version_tag(name, version, "rollout_stage", outcome)
        if reason:
            client.set_model_version_tag(name, version, "rollout_reason", reason[:5000])
        return version


def relocate_mlflow_store(db: Path, old_root: Path, new_root: Path) -> int:
    """Point an embedded (SQLite) MLflow store that was copied from ``old_root`` to ``new_root``
    at the copied artifacts: every stored path or URI under the old folder is rewritten. Returns
    the number of values changed. (MLflow keeps artifact locations as absolute URIs.)"""
    import sqlite3

    old, new = str(Path(old_root).resolve()), str(Path(new_root).resolve())
    changed = 0
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [
                r[1]
                for r in con.execute(f'PRAGMA table_info("{table}")')
                if "CHAR" in r[2].upper() or "TEXT" in r[2].upper()
            ]
            for column in columns:
                cursor = con.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                    (old, new, old),
                )
                changed += cursor.rowcount
    return changed
