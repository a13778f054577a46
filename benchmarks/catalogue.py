"""A second long-tailed world for the benchmarks, in which parts differ in shape, not by a factor.

A catalogue of ``parts`` parts whose popularity falls as 1/rank (a few parts take most orders,
most parts are ordered a handful of times a week or never), each with its own fixed truth:
a base time, a saturating rise to a ceiling at its own order scale, and its own order volume.
Weeks differ in their draws (and grow 2% a week, as trade grows) but share the truth.

``pipeline.simulate.catalogue_world`` is the project's own long-tailed world (parts differ by a
factor, the warehouse by a factor from week to week); :class:`ShapedWorld` has the same
``tranche(week, draw)`` interface, so the benchmarks can check the model on both
(``bench_catalogue.py --world shaped``, ``bench_train.py --world shaped``) and nothing is tuned
to one simulator.
"""
from __future__ import annotations

import io
from datetime import datetime
from dataclasses import dataclass
from typing import List, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

from pipeline.simulate import SimulatedTranche, delivery_times, tranche_key, week_seed
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


@dataclass(frozen=True)
class ShapedWorld:
    """The shaped catalogue as weekly tranches with their truth (as ``CatalogueWorld``)."""

    truth: Truth
    rows: int
    weeks: int
    seed: int

    def tranche(self, week: int, draw: int = 0) -> SimulatedTranche:
        """One week's orders; ``draw`` > 0 gives a fresh draw of the same week."""
        seed = week_seed(self.seed, week) + 7919 * draw
        frame = catalogue_tranche(self.truth, self.rows, seed, week)
        rank = frame["product_code"].cat.codes.to_numpy()
        orders = frame["orders_placed"].to_numpy()
        t = self.truth
        expected = t.base[rank] + t.ceiling[rank] * (1.0 - np.exp(-orders / t.scale[rank]))
        return SimulatedTranche(frame["hours_to_dispatch"].to_numpy(), orders,
                                frame["product_code"].astype(str).to_numpy(), expected)


def shaped_world(parts: int, rows: int, weeks: int, seed: int = 0) -> ShapedWorld:
    """A shaped catalogue of ``parts`` parts, ``rows`` orders a week over ``weeks`` weeks."""
    return ShapedWorld(catalogue_truth(parts, seed), rows, weeks, seed)


def to_csv(frame: pd.DataFrame) -> bytes:
    """A tranche as the data team delivers it."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.4f", lineterminator="\n")
    return buffer.getvalue().encode()


def write_shaped(store: Store, world: ShapedWorld, until: datetime) -> List[str]:
    """Write the shaped world's weekly tranches, oldest first, and return their keys."""
    keys = []
    for week, moment in enumerate(delivery_times(world.weeks, until)):
        key = tranche_key(moment.strftime("%Y-%m-%dT%H:%M:%S"))
        frame = catalogue_tranche(world.truth, world.rows, week_seed(world.seed, week), week)
        store.write_bytes(key, to_csv(frame))
        keys.append(key)
    return keys
