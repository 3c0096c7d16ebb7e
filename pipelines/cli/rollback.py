"""`make rollback`: put the previous champion back in service.

The registry keeps every promotion as an undo stack (``resources.tracking``): a rollback moves the
``champion`` alias back one step, and the ad server ranks with that version from the next day it
serves. Uses the deployment's settings (``MLFLOW_TRACKING_URI``, ``CLICKLOOP_DATA_DIR``).
"""

import sys

from clickloop.alerts import rollback_alert
from pipelines.definitions import build_resources
from pipelines.settings import Settings
from resources.alerts import AlertDeliveryError, AlertWebhook
from resources.tracking import ModelRegistry, NoPreviousChampionError


def rollback(registry: ModelRegistry, alerts: AlertWebhook | None = None) -> str:
    """Restore the previous champion (and post the alert); a sentence saying what changed."""
    result = registry.rollback()
    said = f"champion rolled back from v{result.from_version} to v{result.to_version}"
    if alerts is not None:
        try:
            if alerts.send(rollback_alert(result.from_version, result.to_version, "make rollback")):
                said += " (alert sent)"
        except AlertDeliveryError as exc:
            said += f" (alert not delivered: {exc})"
    return said


def main() -> int:
    # outside a run, EnvVar settings are resolved here
    resources = build_resources(Settings.from_env())
    registry = resources["model_registry"].process_config_and_initialize()
    alerts = resources["alerts"].process_config_and_initialize()
    try:
        print(rollback(registry, alerts))
    except NoPreviousChampionError as exc:
        print(f"nothing to roll back to: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
