"""`make scenario name=rollout`, end to end in its own process: a deliberately worse challenger is
rolled back and a better one promoted, each decided by ``rollout_sensor`` and ``rollout_decision``
on online evidence, with its counterfactual estimate taken before it served any traffic.

Scale: 7 days served by the random policy (every request explored) at 3,000 requests a day, the
modest first champion, then the two challengers through shadow (1 day) and canary (half the
requests) with 5 % exploration.
"""

from typing import Any

from tests.e2e.support import RolloutRun


def test_a_worse_challenger_is_rolled_back_and_a_better_one_promoted(rollout_result: RolloutRun) -> None:
    """(The scenario runs in the background from the tier's first test: tests/e2e/conftest.py.)"""
    done = rollout_result
    steps: list[dict[str, Any]] = done.steps
    final = [s for s in steps if s["action"] in ("promote", "rollback")]
    assert [s["action"] for s in final] == ["rollback", "promote"], [
        (s["action"], s["reason"]) for s in steps
    ]
    worse, better = final
    assert "worse beyond the interval" in worse["reason"]
    assert "better beyond the interval" in better["reason"]
    # rolled back: the champion did not change; promoted: the challenger is the champion
    assert worse["numbers"]["champion_version"] != worse["challenger"]
    assert better["numbers"]["champion_version"] == better["challenger"]
    # the canary's numbers came with each decision, the interval on the difference excluding 0
    for step, sign in ((worse, -1), (better, 1)):
        n = step["numbers"]
        assert n["challenger_requests"] > 500 and n["champion_requests"] > 500
        assert any(
            sign * n[f"diff_{m}_{'low' if sign > 0 else 'high'}"] > 0
            for m in ("revenue_per_1000_requests", "ctr")
        )
    # every challenger went shadow -> canary, and its counterfactual estimate was taken before
    moves = [s for s in steps if s["action"] == "to_canary"]
    assert [s["challenger"] for s in moves] == [worse["challenger"], better["challenger"]]
    for move in moves:
        n = move["numbers"]
        assert n["offpolicy_challenger_requests"] > 1000
        assert (
            n["offpolicy_challenger_snips_revenue_per_1000_low"]
            <= n["offpolicy_challenger_snips_revenue_per_1000"]
        )
    # the output puts the counterfactual estimate next to the canary's revenue
    assert "counterfactual rev/1000 req" in done.output and "| rollback |" in done.output
    assert "| promote |" in done.output
