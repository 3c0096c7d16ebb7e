"""`make rollback`: put the previous champion back in service.

The registry keeps every promotion as an undo stack (``resources.tracking``): a rollback moves the
``champion`` alias back one step, and the ad server ranks with that version from the next day it
serves. Uses the deployment's settings (``MLFLOW_TRACKING_URI``, ``CLICKLOOP_DATA_DIR``).
"""

import sys

from pipelines.definitions import build_resources
from pipelines.settings import Settings
from resources.tracking import ModelRegistry, NoPreviousChampionError


def rollback(registry: ModelRegistry) -> str:
    """Restore the previous champion; a sentence saying what changed."""
    result = registry.rollback()
    return f"champion rolled back from v{result.from_version} to v{result.to_version}"


def main() -> int:
    # outside a run, EnvVar settings are resolved here
    registry = build_resources(Settings.from_env())["model_registry"].process_config_and_initialize()
    try:
        print(rollback(registry))
    except NoPreviousChampionError as exc:
        print(f"nothing to roll back to: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
