"""testing_support/worlds.py's heavy-tailed world (bench_catalogue.py --world heavy): its truth
is the conditional median it claims."""
from __future__ import annotations

import numpy as np

from testing_support.worlds import heavy_world


def test_the_truth_is_each_orders_conditional_median_and_the_p90_its_p90() -> None:
    world = heavy_world(parts=40, rows=20_000, weeks=3, seed=5)
    tranche = world.tranche(2, draw=1)
    hours, median = tranche.hours_to_dispatch, tranche.expected_hours
    assert 0.485 <= np.mean(hours <= median) <= 0.515
    part = np.searchsorted(world.codes, tranche.product_code)
    p90 = world.quantile(part, tranche.orders_placed.astype(float), 2, q=0.9)
    assert 0.89 <= np.mean(hours <= p90) <= 0.91
    busy = tranche.orders_placed > np.median(tranche.orders_placed)
    for rows in (busy, ~busy):  # the median holds along orders_placed too, not just overall
        assert 0.47 <= np.mean(hours[rows] <= median[rows]) <= 0.53


def test_orders_placed_carries_signal_on_some_parts_only_and_tails_are_heavy() -> None:
    world = heavy_world(parts=200, rows=20_000, weeks=2, seed=1)
    tranche = world.tranche(1)
    part = np.searchsorted(world.codes, tranche.product_code)
    flat = world.rise[part] == 0
    assert 0 < flat.mean() < 1
    spread = {"flat": 1.0, "rising": np.inf}
    for which in np.unique(part):  # how far each part's median moves with orders_placed
        rows = part == which
        if rows.sum() >= 50:
            values = tranche.expected_hours[rows]
            key = "flat" if world.rise[which] == 0 else "rising"
            ratio = values.max() / values.min()
            spread[key] = max(spread[key], ratio) if key == "flat" else min(spread[key], ratio)
    assert spread["flat"] < 1 + 1e-9 and spread["rising"] > 1.2
    hours = tranche.hours_to_dispatch
    assert np.quantile(hours, 0.9) > 2.5 * np.median(hours)
    assert (hours > 1000).any()
