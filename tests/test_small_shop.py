"""A small shop's store, like the real data (issue 20): a model every Friday with the defaults.

The store is simulated here, never read from ../shared: 27-163 orders a week, hours heavy tailed
(median about 44 h, 90th percentile about 140 h, now and then a parcel forgotten for 1,000-1,500
h), little signal in the product code and none in ``orders_placed``, 60 categories with a long
tail (many have one or two orders a week). The shop installs the pipeline with four weeks of back
orders; then every Friday a tranche lands and ``train_model`` runs with its defaults.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import List

import numpy as np
import pytest

from pipeline import artefacts
from pipeline.simulate import tranche_key
from pipeline.store import open_store
from pipeline.train_model import main

CATEGORIES = 60
BACK_WEEKS = 4
FRIDAYS = 6
FIRST = datetime(2017, 5, 5, 23, tzinfo=timezone.utc)
HEADER = "hours_to_dispatch,orders_placed,product_code"


def small_shop_week(rng: np.random.Generator, effects: np.ndarray) -> bytes:
    """One week of a small shop's orders as a tranche."""
    orders = int(rng.integers(27, 164))
    popularity = 1.0 / np.arange(1, CATEGORIES + 1) ** 1.2
    codes = rng.choice(CATEGORIES, size=orders, p=popularity / popularity.sum())
    hours = 44.0 * np.exp(effects[codes] + rng.normal(0.0, 0.9, orders))
    if rng.random() < 0.5:
        hours[rng.integers(orders)] = rng.uniform(1000.0, 1500.0)
    placed = rng.integers(19, 786, orders)
    lines = [HEADER] + [f"{h:.4f},{o},category_{c:02d}" for h, o, c in zip(hours, placed, codes)]
    return ("\n".join(lines) + "\n").encode()


def test_the_store_looks_like_the_real_data() -> None:
    rng = np.random.default_rng(0)
    effects = rng.normal(0.0, 0.3, CATEGORIES)
    weeks = [small_shop_week(rng, effects).decode().splitlines()[1:] for _ in range(35)]
    hours = np.array([float(line.split(",")[0]) for week in weeks for line in week])
    assert 27 <= min(map(len, weeks)) and max(map(len, weeks)) <= 163
    assert 35.0 < np.median(hours) < 55.0 and 110.0 < np.quantile(hours, 0.9) < 170.0
    assert 5 <= int((hours > 1000.0).sum()) <= 30
    last = [line.split(",")[2] for line in weeks[-1]]
    rows = np.unique(last, return_counts=True)[1]
    assert (rows <= 2).sum() > len(rows) / 2, "most categories have one or two orders a week"


def test_a_small_shop_gets_a_model_every_friday_with_the_defaults(
    local_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(20)
    effects = rng.normal(0.0, 0.3, CATEGORIES)
    store = open_store(local_url)
    for week in range(BACK_WEEKS):
        store.write_bytes(tranche_key((FIRST + timedelta(weeks=week)).isoformat()),
                          small_shop_week(rng, effects))
    outcomes: List[str] = []
    for friday in range(BACK_WEEKS, BACK_WEEKS + FRIDAYS):
        key = tranche_key((FIRST + timedelta(weeks=friday)).isoformat())
        store.write_bytes(key, small_shop_week(rng, effects))
        caplog.clear()
        with caplog.at_level(logging.INFO):
            status = main([local_url, "--no-report"])
        refused = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert status == 0, refused
        live = artefacts.load_latest(store).metadata
        kept = any("deliberately kept" in r.getMessage() for r in caplog.records)
        assert kept or live.tranche.key == key
        outcomes.append("kept" if kept else "published")
    assert outcomes[0] == "published"
