"""Simulated weekly tranches: realistic data with a known truth, for local runs and tests.

Two worlds: five parts with plenty of rows each (``simulate_tranche``), and a long-tailed
catalogue (``CatalogueWorld``, ``--catalogue N``): popularity falls as 1/rank, new parts appear
every week, the whole warehouse gets slower or faster from week to week, and busy days are less
predictable. Both give every row's true expected hours, so tests and benchmarks can score a
model against the noise floor.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from pipeline.artefacts import choose_tranches, parse_timestamp
from pipeline.store import Store, StoreError, open_store

SHAPES = ("linear", "saturating")
NOISES = ("constant", "queue")
DEFAULT_PRODUCT_CODES: Tuple[str, ...] = ("SKU001", "SKU002", "SKU003", "SKU004", "SKU005")
CSV_HEADER = "hours_to_dispatch,orders_placed,product_code"


@dataclass(frozen=True)
class SimulatedTranche:
    """One tranche's columns and, for scoring, each row's true expected hours."""

    hours_to_dispatch: npt.NDArray[np.float64]
    orders_placed: npt.NDArray[np.int64]
    product_code: npt.NDArray[np.str_]
    expected_hours: npt.NDArray[np.float64]

    def to_csv(self) -> bytes:
        """The tranche as the data team delivers it."""
        lines = [CSV_HEADER]
        lines.extend(
            f"{h:.4f},{o},{c}"
            for h, o, c in zip(self.hours_to_dispatch, self.orders_placed, self.product_code)
        )
        return ("\n".join(lines) + "\n").encode()


def _code_parameters(code_index: int) -> Dict[str, float]:
    """Fixed per-SKU truth: a base time, a slope (or a ceiling) and an order scale."""
    return {
        "base": 1.0 + 0.75 * code_index,
        "slope": 0.02 + 0.01 * code_index,
        "ceiling": 4.0 + 1.5 * code_index,
        "scale": 60.0 + 20.0 * code_index,
    }


def expected_hours(
    code_index: int, orders: npt.NDArray[np.float64], shape: str
) -> npt.NDArray[np.float64]:
    """The true mean hours to dispatch for a SKU at the given order counts."""
    p = _code_parameters(code_index)
    if shape == "linear":
        result: npt.NDArray[np.float64] = p["base"] + p["slope"] * orders
    elif shape == "saturating":
        result = p["base"] + p["ceiling"] * (1.0 - np.exp(-orders / p["scale"]))
    else:
        raise ValueError(f"shape must be one of {SHAPES}, not {shape!r}")
    return result


def simulate_tranche(
    rows: int,
    seed: int = 0,
    shape: str = "linear",
    product_codes: Tuple[str, ...] = DEFAULT_PRODUCT_CODES,
    noise_sd: float = 0.5,
    week: int = 0,
    noise: str = "constant",
) -> SimulatedTranche:
    """A tranche of ``rows`` orders; ``week`` drifts order volumes a little, as trade grows.

    ``noise="queue"`` makes busy days less predictable: the spread of dispatch times grows
    with the queue, from 0.2 x ``noise_sd`` with no orders waiting to 2.7 x at 250.
    """
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, not {noise!r}")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(product_codes), size=rows)
    level = 100.0 * (1.0 + 0.02 * week)
    busy = rng.uniform(0.1, 2.5, size=rows)
    orders = rng.poisson(lam=level * busy).astype(np.int64)
    expected = np.empty(rows, dtype=np.float64)
    for i in range(len(product_codes)):
        mask = index == i
        expected[mask] = expected_hours(i, orders[mask].astype(np.float64), shape)
    spread = noise_sd * (0.2 + orders / 100.0) if noise == "queue" else noise_sd
    hours = np.maximum(expected + rng.normal(0.0, 1.0, size=rows) * spread, 0.0)
    codes = np.asarray(product_codes)[index]
    return SimulatedTranche(hours, orders, codes, expected)


CATALOGUE_NEW_SHARE = 0.15
CATALOGUE_PART_SPREAD = 0.35
CATALOGUE_PART_SHIFT = 0.2
CATALOGUE_WEEK_STEP = 0.05
CATALOGUE_NOISE_SD = 0.5
CATALOGUE_ORDERS_LEVEL = 100.0


@dataclass(frozen=True)
class CatalogueWorld:
    """A long-tailed catalogue's truth; tranches are drawn from it, week by week.

    Part ``p`` (rank ``p + 1``: its orders are proportional to ``1 / (p + 1)``) exists from week
    ``introduced[p]`` on; most parts exist from week 0, the rest appear spread over the later
    weeks. Its expected hours at ``x`` orders waiting in week ``w`` are
    ``week_factor[w] * (part_factor[p] * shape(x) + part_shift[p])``: every part slows down or
    speeds up together from week to week; parts differ mostly by a factor, a little by a shift.
    The spread of dispatch times grows with the queue (busy days are less predictable).
    """

    codes: npt.NDArray[np.str_]
    introduced: npt.NDArray[np.int64]
    part_factor: npt.NDArray[np.float64]
    part_shift: npt.NDArray[np.float64]
    week_factor: npt.NDArray[np.float64]
    rows: int
    seed: int
    shape: str = "saturating"
    noise_sd: float = CATALOGUE_NOISE_SD

    @property
    def weeks(self) -> int:
        """How many weeks the world spans."""
        return int(len(self.week_factor))

    def expected(
        self, code_index: npt.NDArray[np.int64], orders: npt.NDArray[np.float64], week: int
    ) -> npt.NDArray[np.float64]:
        """The true mean hours for rows of some parts at some order counts in one week."""
        shape = _catalogue_shape(np.asarray(orders, dtype=np.float64), self.shape)
        result: npt.NDArray[np.float64] = self.week_factor[week] * (
            self.part_factor[code_index] * shape + self.part_shift[code_index])
        return result

    def tranche(self, week: int, draw: int = 0) -> SimulatedTranche:
        """One week's orders; ``draw`` > 0 gives a fresh draw of the same week (to score on)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, week, draw, 15]))
        alive = np.flatnonzero(self.introduced <= week)
        popularity = 1.0 / (alive + 1.0)
        index = alive[rng.choice(len(alive), size=self.rows, p=popularity / popularity.sum())]
        busy = rng.uniform(0.1, 2.5, size=self.rows)
        orders = rng.poisson(lam=CATALOGUE_ORDERS_LEVEL * busy).astype(np.int64)
        expected = self.expected(index, orders.astype(np.float64), week)
        spread = self.noise_sd * (0.2 + orders / 100.0)
        hours = np.maximum(expected + rng.normal(0.0, 1.0, size=self.rows) * spread, 0.0)
        return SimulatedTranche(hours, orders, self.codes[index], expected)


def _catalogue_shape(orders: npt.NDArray[np.float64], shape: str) -> npt.NDArray[np.float64]:
    """The catalogue-wide curve of a typical part (a part's factor scales it)."""
    if shape == "linear":
        result: npt.NDArray[np.float64] = 1.5 + 0.03 * orders
    elif shape == "saturating":
        result = 1.5 + 6.0 * (1.0 - np.exp(-orders / 120.0))
    else:
        raise ValueError(f"shape must be one of {SHAPES}, not {shape!r}")
    return result


def catalogue_world(
    parts: int, rows: int, weeks: int, seed: int = 0, shape: str = "saturating",
    new_share: float = CATALOGUE_NEW_SHARE,
) -> CatalogueWorld:
    """A long-tailed catalogue of ``parts`` parts, ``rows`` orders a week over ``weeks`` weeks.

    ``new_share`` of the parts (at random ranks) are new, spread evenly over weeks 1 onwards.
    """
    if parts < 1 or rows < 1 or weeks < 1:
        raise ValueError("parts, rows and weeks must be at least 1")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 15]))
    introduced = np.zeros(parts, dtype=np.int64)
    if weeks > 1:
        new = rng.random(parts) < new_share
        new[0] = False
        introduced[new] = rng.integers(1, weeks, size=int(new.sum()))
    factor = np.exp(rng.normal(0.0, CATALOGUE_PART_SPREAD, size=parts))
    shift = rng.normal(0.0, CATALOGUE_PART_SHIFT, size=parts)
    shift = np.maximum(shift, -0.5 * factor * float(_catalogue_shape(np.zeros(1), shape)[0]))
    steps = rng.normal(0.0, CATALOGUE_WEEK_STEP, size=weeks)
    steps[0] = 0.0
    week_factor = np.exp(np.cumsum(steps))
    width = max(6, len(str(parts)))
    codes = np.char.add("P", np.char.zfill(np.arange(1, parts + 1).astype(str), width))
    return CatalogueWorld(codes, introduced, factor, shift, week_factor, rows, seed, shape)


def noise_floor_mae(tranche: SimulatedTranche) -> float:
    """The MAE of the true expected value: the best any model can do on this tranche."""
    return float(np.mean(np.abs(tranche.hours_to_dispatch - tranche.expected_hours)))


def tranche_key(when_iso: str) -> str:
    """The store key of a tranche delivered at an ISO timestamp."""
    return f"datasets/time_to_dispatch_{when_iso}.csv"


DELIVERY_WEEKDAY = 4  # Friday
DELIVERY_HOUR = 23
EXIT_STORE = 3

log = logging.getLogger("simulate")


def last_delivery(now: datetime) -> datetime:
    """The latest Friday 23:00 UTC at or before a moment."""
    now = now.astimezone(timezone.utc)
    friday = now.replace(hour=DELIVERY_HOUR, minute=0, second=0, microsecond=0)
    friday -= timedelta(days=(now.weekday() - DELIVERY_WEEKDAY) % 7)
    return friday if friday <= now else friday - timedelta(days=7)


def delivery_times(weeks: int, until: datetime) -> List[datetime]:
    """``weeks`` weekly delivery moments ending at the last one at or before ``until``."""
    last = last_delivery(until)
    return [last - timedelta(days=7 * (weeks - 1 - week)) for week in range(weeks)]


def week_seed(seed: int, week: int) -> int:
    """A seed per week derived from the run's seed, so weeks differ yet repeat exactly."""
    return int(np.random.SeedSequence([seed, week]).generate_state(1)[0])


def write_tranches(
    store: Store, rows: int, weeks: int, seed: int, shape: str, until: datetime,
    noise: str = "constant",
) -> List[str]:
    """Write ``weeks`` weekly tranches, oldest first, and return their keys."""
    keys = []
    for week, moment in enumerate(delivery_times(weeks, until)):
        tranche = simulate_tranche(rows, seed=week_seed(seed, week), shape=shape, week=week,
                                   noise=noise)
        key = tranche_key(moment.strftime("%Y-%m-%dT%H:%M:%S"))
        store.write_bytes(key, tranche.to_csv())
        keys.append(key)
    return keys


def write_catalogue(
    store: Store, world: CatalogueWorld, until: datetime
) -> List[str]:
    """Write the catalogue world's weekly tranches, oldest first, and return their keys."""
    keys = []
    for week, moment in enumerate(delivery_times(world.weeks, until)):
        key = tranche_key(moment.strftime("%Y-%m-%dT%H:%M:%S"))
        store.write_bytes(key, world.tranche(week).to_csv())
        keys.append(key)
    return keys


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: write simulated weekly tranches into a store."""
    parser = argparse.ArgumentParser(
        prog="simulate", description="Write simulated weekly tranches into a store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("store", metavar="STORE",
                        help="local directory, file:// URL or s3://bucket[/prefix]")
    parser.add_argument("--rows", type=int, default=1000, help="rows per tranche")
    parser.add_argument("--catalogue", type=int, default=0, metavar="N",
                        help="a long-tailed catalogue of N parts (popularity 1/rank, new parts "
                             "each week, a warehouse-wide change from week to week, noise "
                             "growing with the queue; --shape is its typical curve, --noise is "
                             "ignored); 0: the five-part world")
    parser.add_argument("--weeks", type=int, default=1, help="how many weekly tranches")
    parser.add_argument("--seed", type=int, default=0, help="seed: same seed, same data")
    parser.add_argument("--shape", choices=SHAPES, default="linear",
                        help="how dispatch time grows with orders")
    parser.add_argument("--noise", choices=NOISES, default="constant",
                        help="constant spread, or a spread that grows with the queue")
    parser.add_argument("--until", default=None,
                        help="ISO timestamp; the newest tranche is the last Friday 23:00 UTC at "
                             "or before it (default: now)")
    parser.add_argument("--only-if-empty", action="store_true",
                        help="write nothing if the store already holds a tranche")
    args = parser.parse_args(argv)
    until = datetime.now(timezone.utc) if args.until is None else parse_timestamp(args.until)
    if until is None:
        parser.error(f"--until {args.until!r} is not an ISO timestamp")
    if args.rows < 1 or args.weeks < 1 or args.catalogue < 0:
        parser.error("--rows and --weeks must be at least 1, --catalogue at least 0")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        store = open_store(args.store)
        if args.only_if_empty:
            latest = choose_tranches(store.list_keys("datasets/")).latest
            if latest is not None:
                log.info("%s already holds tranche %s; nothing written", store.url, latest.key)
                return 0
        if args.catalogue:
            world = catalogue_world(args.catalogue, args.rows, args.weeks, args.seed, args.shape)
            keys = write_catalogue(store, world, until)
        else:
            keys = write_tranches(store, args.rows, args.weeks, args.seed, args.shape, until,
                                  args.noise)
    except StoreError as exc:
        log.error("nothing more written: %s", exc)
        return EXIT_STORE
    log.info("wrote %d tranche(s) of %d rows to %s: %s", len(keys), args.rows, store.url,
             ", ".join(keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
