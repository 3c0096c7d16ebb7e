"""The slots' examination factors (``clickloop.position``) on synthetic windows with a known truth:
clicks drawn as factor[slot] × quality[ad], the top slot the reference."""

import duckdb
import numpy as np
import pandas as pd
import pytest

from clickloop.position import (
    FACTOR_BOUNDS,
    expected_impressions_sql,
    factors_markdown,
    fit_position_factors,
    slot_factor_sql,
)

TRUE_FACTOR = 0.6  # slot 2 against slot 1


def window(
    top_share_of_better_half: float, ads: int = 2_000, per_ad: int = 50, seed: int = 0
) -> pd.DataFrame:
    """(key, position, n, c) cells: each ad ``per_ad`` impressions; the better half of the ads is in
    the top slot ``top_share_of_better_half`` of the time, the worse half the rest of it."""
    rng = np.random.default_rng(seed)
    quality = rng.uniform(0.01, 0.08, ads)
    better = quality > np.median(quality)
    top = np.where(better, top_share_of_better_half, 1 - top_share_of_better_half)
    n1 = np.round(per_ad * top)
    n2 = per_ad - n1
    keys = [f"a{i}" for i in range(ads)]
    return pd.DataFrame(
        {
            "key": keys + keys,
            "position": [1] * ads + [2] * ads,
            "n": np.concatenate([n1, n2]),
            "c": np.concatenate(
                [rng.binomial(n1.astype(int), quality), rng.binomial(n2.astype(int), quality * TRUE_FACTOR)]
            ),
        }
    ).astype({"n": float, "c": float})


def plain_ratio(cells: pd.DataFrame) -> float:
    per_slot = cells.groupby("position")[["n", "c"]].sum()
    ctr = per_slot["c"] / per_slot["n"]
    return float(ctr[2] / ctr[1])


def test_a_random_policy_gives_the_true_factor() -> None:
    cells = window(0.5)
    factors = fit_position_factors(cells, reference=1)
    assert factors[1] == 1.0
    assert factors[2] == pytest.approx(TRUE_FACTOR, abs=0.05)


def test_a_policy_that_puts_its_best_ads_on_top_does_not_fool_the_fit() -> None:
    cells = window(0.9)
    naive = plain_ratio(cells)
    fitted = fit_position_factors(cells, reference=1)[2]
    assert naive < 0.4  # the better ads' clicks counted as the top slot's effect
    assert fitted == pytest.approx(TRUE_FACTOR, abs=0.05)


def test_the_fit_is_the_same_whatever_order_the_cells_come_in() -> None:
    cells = window(0.9)
    shuffled = cells.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert fit_position_factors(shuffled, 1) == fit_position_factors(
        cells.sort_values(["key", "position"]), 1
    )


def test_nothing_to_fit_gives_no_correction() -> None:
    empty = pd.DataFrame({"key": [], "position": [], "n": [], "c": []})
    assert fit_position_factors(empty, 1) == {}
    no_clicks = window(0.5).assign(c=0.0)
    assert fit_position_factors(no_clicks, 1) == {}
    assert expected_impressions_sql({}) == "count(*)::DOUBLE"
    assert slot_factor_sql({}) == "1.0::DOUBLE"
    assert "no position correction" in factors_markdown({})


def test_a_slot_never_clicked_is_shrunk_and_bounded() -> None:
    cells = window(0.5)
    cells.loc[cells["position"] == 2, "c"] = 0.0
    factors = fit_position_factors(cells, 1)
    assert FACTOR_BOUNDS[0] <= factors[2] < 0.1  # few pseudo-clicks: far below 1, not 0


def test_missing_reference_slot_falls_back_to_the_smallest_seen() -> None:
    cells = window(0.5)
    assert fit_position_factors(cells, reference=3)[1] == 1.0


def test_sql_weights_count_each_row_as_its_slots_factor() -> None:
    con = duckdb.connect()
    con.sql("CREATE TABLE h AS SELECT * FROM (VALUES (1), (1), (2), (2), (2), (NULL), (5)) t(position)")
    factors = {1: 1.0, 2: 0.5}
    ((total,),) = con.sql(f"SELECT {expected_impressions_sql(factors)} FROM h").fetchall()
    assert total == pytest.approx(2 * 1.0 + 3 * 0.5 + 2 * 1.0)  # NULL and unknown slots count as 1
    rows = con.sql(f"SELECT {slot_factor_sql(factors)} FROM h").fetchall()
    assert sorted(r[0] for r in rows) == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert "| 2 | 0.500 |" in factors_markdown(factors)
