"""The champion's undo stack: every promotion pushed, a rollback pops back to the version before.

The registry (``resources.tracking.ModelRegistry``) stores the stack as JSON in a tag of the
registered model; these functions say what the stack becomes, without touching the registry.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

#: the registered model's tag that holds the stack, and how many promotions it keeps
HISTORY_TAG = "champion_history"
HISTORY_LIMIT = 100


class NoPreviousChampionError(RuntimeError):
    """A rollback was asked for, but no earlier champion is recorded."""


def parse_history(value: str | None) -> list[str]:
    """The champion undo stack stored in the registered model's tag (oldest first)."""
    if not value:
        return []
    history = json.loads(value)
    if not isinstance(history, list):
        raise ValueError(f"{HISTORY_TAG} tag is not a JSON list: {value!r}")
    return [str(v) for v in history]


def pushed(history: Sequence[str], current: str | None, version: str) -> list[str]:
    """The undo stack after promoting ``version`` while ``current`` is champion.

    If the stack lost track of the current champion (an alias set by hand), it is pushed first so
    that a rollback still returns to it. A stack that already ends with ``current``, ``version``
    is one a promotion wrote before it died (the alias is written last): it is kept as it is.
    """
    stack = list(history)
    if stack and stack[-1] == version and current != version:
        earlier = stack[-2] if len(stack) > 1 else None
        if earlier == current:  # a promotion of ``version`` died after writing the stack: finish it
            return stack[-HISTORY_LIMIT:]
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)
    if not stack or stack[-1] != version:
        stack.append(version)
    return stack[-HISTORY_LIMIT:]


def popped(history: Sequence[str], current: str) -> tuple[str, list[str]]:
    """The version a rollback restores, and the stack after it.

    Every trailing entry equal to the current champion is dropped; the new top is the target.
    """
    stack = list(history)
    while stack and stack[-1] == current:
        stack.pop()
    if not stack:
        raise NoPreviousChampionError(
            f"no champion before version {current} is recorded: nothing to roll back to"
        )
    return stack[-1], stack


def previous_in(stack: Sequence[str]) -> str | None:
    """The version a rollback from the top of ``stack`` would restore."""
    top = stack[-1] if stack else None
    earlier = [v for v in stack if v != top]
    return earlier[-1] if earlier else None
