"""Long-tailed catalogue tranches for the training benchmarks, generated without per-row loops.

A catalogue of ``parts`` parts whose popularity falls as 1/rank (a few parts take most orders,
most parts are ordered a handful of times a week or never), each with its own fixed truth:
a base time, a saturating rise to a ceiling at its own order scale, and its own order volume.
Weeks differ in their draws (and grow 2% a week, as trade grows) but share the truth.
"""
from __future__ import annotations

import io
from datetime import datetime
from typing import List, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

from pipeline.simulate import delivery_times, tranche_key, week_seed
from pipeline.store import Store

FloatArray = npt.NDArray[np.float64]
NOISE_SD = 0.5


class Truth(NamedTuple):
    """Every part's fixed parameters, in rank order (rank 0 is the busiest part)."""

    names: npt.NDArray[np.str_]
    base: FloatArray
    ceiling: FloatArray
    scale: FloatArray
    volume: FloatArray


def catalogue_truth(parts: int, seed: int) -> Truth:
    """Per-part truth, like pipeline.simulate's five parts but drawn for each of ``parts``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, parts, 16]))
    names = np.char.add("P", np.char.zfill(rng.permutation(parts).astype(str), 6))
    return Truth(
        names,
        rng.uniform(1.0, 4.0, parts),
        rng.uniform(3.0, 10.0, parts),
        rng.uniform(50.0, 150.0, parts),
        rng.uniform(60.0, 140.0, parts),
    )


def catalogue_tranche(truth: Truth, rows: int, seed: int, week: int = 0) -> pd.DataFrame:
    """One week's orders: the part of each drawn with probability proportional to 1/rank."""
    rng = np.random.default_rng(seed)
    parts = len(truth.names)
    popularity = 1.0 / np.arange(1, parts + 1)
    rank = np.searchsorted(np.cumsum(popularity / popularity.sum()), rng.random(rows),
                           side="right").clip(0, parts - 1)
    busy = rng.uniform(0.1, 2.5, rows)
    orders = rng.poisson(truth.volume[rank] * busy * (1.0 + 0.02 * week))
    expected = truth.base[rank] + truth.ceiling[rank] * (1.0 - np.exp(-orders / truth.scale[rank]))
    hours = np.maximum(expected + rng.normal(0.0, NOISE_SD, rows), 0.0)
    codes = pd.Categorical.from_codes(rank, categories=pd.Index(truth.names))
    return pd.DataFrame({"hours_to_dispatch": hours, "orders_placed": orders,
                         "product_code": codes})


def to_csv(frame: pd.DataFrame) -> bytes:
    """A tranche as the data team delivers it."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.4f", lineterminator="\n")
    return buffer.getvalue().encode()


def write_catalogue(store: Store, parts: int, rows: int, weeks: int, seed: int,
                    until: datetime) -> List[str]:
    """Write ``weeks`` weekly tranches of a ``parts``-part catalogue, oldest first; their keys."""
    truth = catalogue_truth(parts, seed)
    keys = []
    for week, moment in enumerate(delivery_times(weeks, until)):
        key = tranche_key(moment.strftime("%Y-%m-%dT%H:%M:%S"))
        store.write_bytes(key, to_csv(catalogue_tranche(truth, rows, week_seed(seed, week), week)))
        keys.append(key)
    return keys
