"""The asset tier reads one simulated history, built once per session (``tests/assets/history.py``)."""

import pytest

from tests.assets.history import History, PriceBugLoop, shared_history, shared_price_bug_loop


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    """12 days through the repository's jobs, the first training, the champion serving."""
    return shared_history(tmp_path_factory)


@pytest.fixture(scope="session")
def price_bug(tmp_path_factory: pytest.TempPathFactory) -> PriceBugLoop:
    """Three days whose prices are logged in cents from the second on."""
    return shared_price_bug_loop(tmp_path_factory)
