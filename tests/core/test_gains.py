"""Offline gain at promotion against online gain once served, per promoted version."""

import numpy as np
import pytest

from clickloop.evaluation import BASE_RATE, CHAMPION, MODEL, Evaluation, compute_metrics
from clickloop.gains import (
    OFFLINE_NE_TAG,
    OFFLINE_REFERENCE_NE_TAG,
    OFFLINE_REFERENCE_TAG,
    PROMOTED_AT_TAG,
    gain_rows,
    gains_markdown,
    offline_gain_tags,
)

RNG = np.random.default_rng(0)
TRUTH = RNG.uniform(0.01, 0.2, 5000)
LABELS = (RNG.random(5000) < TRUTH).astype(float)


def evaluation(with_champion: bool) -> Evaluation:
    metrics = {
        MODEL: compute_metrics(LABELS, TRUTH),
        BASE_RATE: compute_metrics(LABELS, np.full(5000, LABELS.mean())),
    }
    if with_champion:
        metrics[CHAMPION] = compute_metrics(LABELS, np.clip(TRUTH * 1.5, 0, 1))
    return Evaluation("2", "run", "2026-10-10", {}, "1" if with_champion else None, None, 0.1, metrics, [])


def online(day: str, version: str, ne: float, revenue: float, requests: int = 1000) -> dict:
    return {
        "day": day,
        "model_version": version,
        "requests": requests,
        "impressions": 2 * requests,
        "normalized_entropy": ne,
        "revenue_per_1000_requests": revenue,
    }


def test_the_offline_side_is_the_champion_or_else_the_base_rate() -> None:
    first, second = evaluation(False), evaluation(True)
    tags = offline_gain_tags(first)
    assert tags[OFFLINE_REFERENCE_TAG] == BASE_RATE
    assert float(tags[OFFLINE_REFERENCE_NE_TAG]) == pytest.approx(first.metrics[BASE_RATE].normalized_entropy)
    assert float(tags[OFFLINE_NE_TAG]) == first.metrics[MODEL].normalized_entropy  # exact: repr round-trips
    tags = offline_gain_tags(second)
    assert tags[OFFLINE_REFERENCE_TAG] == "v1"
    assert float(tags[OFFLINE_REFERENCE_NE_TAG]) == second.metrics[CHAMPION].normalized_entropy


def test_each_promoted_version_has_its_offline_and_online_gain() -> None:
    tags = {
        "1": {
            PROMOTED_AT_TAG: "2026-10-11T01:00:00+00:00",
            OFFLINE_REFERENCE_TAG: BASE_RATE,
            OFFLINE_REFERENCE_NE_TAG: "1.0",
            OFFLINE_NE_TAG: "0.9",
        },
        "2": {
            PROMOTED_AT_TAG: "2026-10-14T01:00:00+00:00",
            OFFLINE_REFERENCE_TAG: "v1",
            OFFLINE_REFERENCE_NE_TAG: "0.9",
            OFFLINE_NE_TAG: "0.88",
        },
        "3": {
            OFFLINE_REFERENCE_TAG: "v2",
            OFFLINE_REFERENCE_NE_TAG: "0.88",
            OFFLINE_NE_TAG: "0.95",
        },  # refused
        "4": {
            PROMOTED_AT_TAG: "2026-10-20T01:00:00+00:00",
            OFFLINE_REFERENCE_TAG: "v2",
            OFFLINE_REFERENCE_NE_TAG: "0.88",
            OFFLINE_NE_TAG: "0.87",
        },  # not served yet
    }
    rows = [
        online("2026-10-10", "random-v0", 1.0, 30.0),
        online("2026-10-11", "random-v0", 1.0, 40.0, requests=3000),
        online("2026-10-12", "ctr_model-v1", 0.86, 160.0),
        online("2026-10-13", "ctr_model-v1", 0.88, 140.0, requests=3000),
        # a canary day: v2 takes a share, v1 still carries most of the traffic
        online("2026-10-14", "ctr_model-v1", 0.87, 150.0, requests=900),
        online("2026-10-14", "ctr_model-v2", 0.84, 170.0, requests=100),
        online("2026-10-15", "ctr_model-v2", 0.85, 165.0),
    ]
    gains = gain_rows(tags, rows)
    assert [g.version for g in gains] == ["1", "2", "4"]
    v1, v2, v4 = gains
    assert v1.offline_ne_gain == pytest.approx(0.1)
    assert v1.before.version == "random-v0" and v1.before.days == 2  # type: ignore[union-attr]
    assert v1.before.revenue_per_1000_requests == pytest.approx((30 + 3 * 40) / 4)  # type: ignore[union-attr]
    assert v1.after.days == 3  # type: ignore[union-attr]  # its days up to the window, canary day too
    assert v1.online_ne_gain == pytest.approx(1.0 - (0.86 * 2 + 0.88 * 6 + 0.87 * 1.8) / 9.8)
    assert v2.offline_ne_gain == pytest.approx(0.02)
    assert v2.before.version == "ctr_model-v1"  # type: ignore[union-attr]
    assert v2.after.normalized_entropy == pytest.approx((0.84 * 0.2 + 0.85 * 2) / 2.2)  # type: ignore[union-attr]
    assert v2.online_revenue_gain > 0  # type: ignore[operator]
    assert v4.before is None and v4.after is None and v4.online_ne_gain is None
    # a shorter window sees only the first day after
    assert gain_rows(tags, rows, window_days=1)[0].after.days == 1  # type: ignore[union-attr]

    table = gains_markdown(gains).splitlines()
    assert table[0].startswith(
        "| version | promoted | offline vs | offline NE | offline NE gain | online vs |"
    )
    assert table[2].startswith(
        "| v1 | 2026-10-11 | base_rate | 1.0000 → 0.9000 | +0.1000 | random-v0 | 2 / 3 |"
    )
    assert "| v4 | 2026-10-20 | v2 | 0.8800 → 0.8700 | +0.0100 | not served yet | 0 / 0 |" in table[4]
    assert "no promoted version yet" in gains_markdown([])
