"""Simulated catalogue worlds of the benchmarks' own (their truths checked by
tests/test_bench_worlds.py): a second long-tailed world, in which parts differ in shape, not by
a factor, and a heavy-tailed third (:class:`HeavyWorld`).

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
from scipy import special

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


# ---------------------------------------------------------------------------------------------
# A third world, written for validation by someone other than the model's author: heavy tails.

HEAVY_MEDIAN_HOURS = 28.0
HEAVY_SIGMA = 0.85
HEAVY_FORGOTTEN_SHARE = 0.02
HEAVY_FORGOTTEN_START = 4.0
HEAVY_FORGOTTEN_END = 40.0
HEAVY_FORGOTTEN_ALPHA = 1.5
HEAVY_PART_SPREAD = 0.35
HEAVY_SIGNAL_SHARE = 0.4
HEAVY_NEW_SHARE = 0.15
HEAVY_LEVEL_KEEP = 0.5
HEAVY_LEVEL_STEP = 0.17
HEAVY_VOLUME_SPREAD = 0.25
HEAVY_HOLIDAY_CHANCE = 0.03
HOURS_A_DAY = 24.0
DAYS = 7
WEEKEND = (5, 6)
QUANTILE_STEPS = 44


@dataclass(frozen=True)
class HeavyWorld:
    """A shop whose hours are skewed and heavy-tailed, as real dispatch times are.

    Parts: popularity 1/rank, ``HEAVY_NEW_SHARE`` of them appearing in later weeks; each part's
    typical time is the shop's times its own factor (lognormal, sd ``HEAVY_PART_SPREAD``).
    On ``HEAVY_SIGNAL_SHARE`` of the parts the time rises with ``orders_placed`` (by a part's
    own 0.5-2.0 times, saturating at its own share of a day's volume); on the others
    ``orders_placed`` carries no signal at all.

    Days: customers order every day alike, so ``orders_placed`` is an order's running count
    within its calendar day (a day brings Poisson(weekly volume / 7) orders), whatever the day.
    The warehouse closes on weekends and holidays (each weekday a holiday with chance
    ``HEAVY_HOLIDAY_CHANCE``): an order placed on a closed day waits until the next open day
    (placed at noon: 12 h for the last closed day, 36 h for the one before, ...).

    Weeks: the warehouse's level follows a mean-reverting walk (log level keeps
    ``HEAVY_LEVEL_KEEP`` of last week's and moves by sd ``HEAVY_LEVEL_STEP``); the weekly volume
    varies (lognormal, sd ``HEAVY_VOLUME_SPREAD``) around ``rows`` orders a week: a few dozen
    for a small shop, 20,000 for a big one.

    Hours: the wait, plus the processing time: ``HEAVY_MEDIAN_HOURS`` x level x the part's
    factor x its orders curve, times a unit-median lognormal (sd ``HEAVY_SIGMA``) or, for a
    forgotten parcel (``HEAVY_FORGOTTEN_SHARE``), times a Pareto draw (tail index
    ``HEAVY_FORGOTTEN_ALPHA`` from ``HEAVY_FORGOTTEN_START``, cut at ``HEAVY_FORGOTTEN_END``: a
    parcel forgotten for weeks, not years). The constants give, over 35 weeks of a shop of 50
    orders a week (seeds 0-5), a median of 38-48 h, a 90th percentile of 118-153 h, a 99th of
    296-482 h and 0-5 orders over 1,000 h (of ~1,800); over 6 weeks of 20,000 orders, 41 h,
    126 h, 382 h and 0.07%: the real data's README figures (median ~44 h, p90 ~140 h, a few
    orders over 1,000 h), not any model's.

    The truth: orders are judged by absolute error, so a tranche's ``expected_hours`` holds
    each order's true conditional median given what a model sees (its part, its
    ``orders_placed``, its week), a mixture over the week's days solved numerically; the
    benchmarks' noise floor is that median's MAE (:func:`pipeline.simulate.noise_floor_mae`).
    """

    codes: npt.NDArray[np.str_]
    introduced: npt.NDArray[np.int64]
    factor: FloatArray
    rise: FloatArray
    reach: FloatArray
    level: FloatArray
    volume: FloatArray
    closed: npt.NDArray[np.bool_]
    rows: int
    seed: int

    @property
    def weeks(self) -> int:
        """How many weeks the world spans."""
        return int(len(self.level))

    def waits(self, week: int) -> FloatArray:
        """Hours an order placed on each day of the week waits for the warehouse to open."""
        waits = np.zeros(DAYS)
        closed_run = 0
        for day in reversed(range(DAYS)):  # the next week's Monday is open
            closed_run = closed_run + 1 if self.closed[week, day] else 0
            waits[day] = HOURS_A_DAY * closed_run - HOURS_A_DAY / 2 if closed_run else 0.0
        return waits

    def typical(self, part: npt.NDArray[np.int64], orders: FloatArray, week: int) -> FloatArray:
        """The median processing time of each order (before waits and the noise)."""
        scale = self.reach[part] * self.rows / DAYS
        curve = 1.0 + self.rise[part] * (1.0 - np.exp(-orders / scale))
        result: FloatArray = HEAVY_MEDIAN_HOURS * self.level[week] * self.factor[part] * curve
        return result

    def quantile(self, part: npt.NDArray[np.int64], orders: FloatArray, week: int,
                 q: float = 0.5) -> FloatArray:
        """Each order's true conditional ``q`` quantile given its part, orders and week."""
        typical = self.typical(part, orders, week)[:, None]
        waits = self.waits(week)[None, :]

        def below(hours: FloatArray) -> FloatArray:
            process = np.maximum(hours[:, None] - waits, 0.0) / typical
            with np.errstate(divide="ignore"):
                body = special.ndtr(np.log(process) / HEAVY_SIGMA)
            share: FloatArray = np.mean((1.0 - HEAVY_FORGOTTEN_SHARE) * body
                                        + HEAVY_FORGOTTEN_SHARE * forgotten_cdf(process), axis=1)
            return share

        low = np.zeros(len(part))
        high = np.full(len(part), waits.max() + 1.0) + typical[:, 0] * 1e3
        for _ in range(QUANTILE_STEPS):
            middle = (low + high) / 2
            under = below(middle) < q
            low, high = np.where(under, middle, low), np.where(under, high, middle)
        result: FloatArray = (low + high) / 2
        return result

    def tranche(self, week: int, draw: int = 0) -> SimulatedTranche:
        """One week's orders; ``draw`` > 0 gives a fresh draw of the same week (to score on)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, week, draw, 17]))
        per_day = rng.poisson(self.volume[week] / DAYS, size=DAYS)
        day = np.repeat(np.arange(DAYS), per_day)
        orders = np.concatenate([np.arange(1, n + 1) for n in per_day]).astype(np.int64)
        alive = np.flatnonzero(self.introduced <= week)
        popularity = 1.0 / (alive + 1.0)
        part = alive[rng.choice(len(alive), size=len(day), p=popularity / popularity.sum())]
        noise = np.exp(rng.normal(0.0, HEAVY_SIGMA, size=len(day)))
        forgotten = rng.random(len(day)) < HEAVY_FORGOTTEN_SHARE
        pareto = forgotten_draw(rng.random(len(day)))
        noise = np.where(forgotten, pareto, noise)
        x = orders.astype(np.float64)
        hours = self.waits(week)[day] + self.typical(part, x, week) * noise
        order = rng.permutation(len(day))  # a tranche is not sorted by day
        median = self.quantile(part, x, week)
        return SimulatedTranche(hours[order], orders[order], self.codes[part][order],
                                median[order])


def forgotten_cdf(times: FloatArray) -> FloatArray:
    """The CDF of a forgotten parcel's multiple of the typical time: a truncated Pareto."""
    low, high, alpha = HEAVY_FORGOTTEN_START, HEAVY_FORGOTTEN_END, HEAVY_FORGOTTEN_ALPHA
    inside = np.clip(times, low, high)
    result: FloatArray = (1.0 - (low / inside) ** alpha) / (1.0 - (low / high) ** alpha)
    return result


def forgotten_draw(uniform: FloatArray) -> FloatArray:
    """Forgotten parcels' multiples of the typical time, from uniform draws (inverse CDF)."""
    low, high, alpha = HEAVY_FORGOTTEN_START, HEAVY_FORGOTTEN_END, HEAVY_FORGOTTEN_ALPHA
    result: FloatArray = low * (1.0 - uniform * (1.0 - (low / high) ** alpha)) ** (-1.0 / alpha)
    return result


def heavy_world(parts: int, rows: int, weeks: int, seed: int = 0) -> HeavyWorld:
    """A heavy-tailed shop of ``parts`` parts and about ``rows`` orders a week for ``weeks``."""
    if parts < 1 or rows < 1 or weeks < 1:
        raise ValueError("parts, rows and weeks must be at least 1")
    rng = np.random.default_rng(np.random.SeedSequence([seed, parts, 17]))
    introduced = np.zeros(parts, dtype=np.int64)
    if weeks > 1:
        new = rng.random(parts) < HEAVY_NEW_SHARE
        new[0] = False
        introduced[new] = rng.integers(1, weeks, size=int(new.sum()))
    signal = rng.random(parts) < HEAVY_SIGNAL_SHARE
    rise = np.where(signal, rng.uniform(0.5, 2.0, parts), 0.0)
    log_level = np.zeros(weeks)
    for week in range(1, weeks):
        log_level[week] = (HEAVY_LEVEL_KEEP * log_level[week - 1]
                           + rng.normal(0.0, HEAVY_LEVEL_STEP))
    closed = rng.random((weeks, DAYS)) < HEAVY_HOLIDAY_CHANCE
    closed[:, list(WEEKEND)] = True
    width = max(6, len(str(parts)))
    return HeavyWorld(
        codes=np.char.add("H", np.char.zfill(np.arange(1, parts + 1).astype(str), width)),
        introduced=introduced,
        factor=np.exp(rng.normal(0.0, HEAVY_PART_SPREAD, parts)),
        rise=rise,
        reach=rng.uniform(0.3, 1.0, parts),
        level=np.exp(log_level),
        volume=rows * np.exp(rng.normal(0.0, HEAVY_VOLUME_SPREAD, weeks)),
        closed=closed,
        rows=rows,
        seed=seed,
    )
