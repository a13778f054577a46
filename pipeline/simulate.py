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
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from pipeline import HelpFormatter
from pipeline.artefacts import (
    DATASETS_PREFIX, TRANCHE_PREFIX, TRANCHE_SUFFIX, choose_tranches, parse_timestamp,
)
from pipeline.store import ObjectExists, Store, StoreError, open_store

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
    return f"{TRANCHE_PREFIX}{when_iso}{TRANCHE_SUFFIX}"


DELIVERY_WEEKDAY = 4  # Friday
DELIVERY_HOUR = 23
EXIT_STORE = 3
EXIT_EXISTS = 4
EXIT_NO_TRANCHE = 5
SHOWN_KEYS = 3

log = logging.getLogger("simulate")


class TrancheExists(Exception):
    """A tranche the simulator would write is already in the store; nothing was written."""


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


class Delivery(NamedTuple):
    """One tranche to write: its moment and its index in the simulated world's weeks."""

    moment: datetime
    week: int


def deliveries(weeks: int, until: datetime) -> List[Delivery]:
    """``weeks`` weekly deliveries, weeks 0 to ``weeks - 1``, the last at or before ``until``."""
    return [Delivery(moment, week) for week, moment in enumerate(delivery_times(weeks, until))]


def next_deliveries(store: Store, weeks: int) -> List[Delivery]:
    """The ``weeks`` Fridays after the store's newest tranche, continuing its weeks.

    The week index counts whole weeks since the store's oldest tranche, so ``--next`` writes
    what a longer run with the same seed would have written for that Friday. None without a
    tranche to follow.
    """
    found = choose_tranches(store.list_keys(DATASETS_PREFIX))
    if found.latest is None:
        return []
    oldest, newest = found.found[0].timestamp, found.latest.timestamp
    first = last_delivery(newest + timedelta(days=7))  # the first Friday 23:00 after it
    return [Delivery(first + timedelta(days=7 * i),
                     round((first - oldest) / timedelta(days=7)) + i) for i in range(weeks)]


def write_new(store: Store, tranches: Sequence[Tuple[datetime, bytes]]) -> List[str]:
    """Create every tranche, or none when any of their moments is already in the store.

    A tranche is never overwritten: the live model may have been trained on it.
    """
    existing = {t.timestamp: t.key for t in choose_tranches(
        store.list_keys(DATASETS_PREFIX)).found}
    taken = [existing[moment] for moment, _ in tranches if moment in existing]
    if taken:
        more = f" and {len(taken) - SHOWN_KEYS} more" if len(taken) > SHOWN_KEYS else ""
        raise TrancheExists(
            f"{', '.join(store.location(k) for k in taken[-SHOWN_KEYS:])}{more} already "
            f"exist{'s' if len(taken) == 1 else ''}; simulate never overwrites a tranche (a "
            f"model may have been trained on it): --next writes the week after the newest")
    keys = []
    for moment, data in tranches:
        key = tranche_key(moment.strftime("%Y-%m-%dT%H:%M:%S"))
        try:
            store.create_bytes(key, data)
        except ObjectExists as exc:
            raise TrancheExists(f"{exc}; simulate never overwrites a tranche") from None
        keys.append(key)
    return keys


def five_part_tranche(rows: int, seed: int, shape: str, noise: str, week: int) -> bytes:
    """Week ``week`` of the five-part world for a run's seed, as the data team delivers it."""
    return simulate_tranche(rows, seed=week_seed(seed, week), shape=shape, week=week,
                            noise=noise).to_csv()


def write_tranches(
    store: Store, rows: int, weeks: int, seed: int, shape: str, until: datetime,
    noise: str = "constant",
) -> List[str]:
    """Write ``weeks`` weekly tranches, oldest first, and return their keys (none if any exists)."""
    return write_new(store, [(d.moment, five_part_tranche(rows, seed, shape, noise, d.week))
                             for d in deliveries(weeks, until)])


def write_catalogue(
    store: Store, world: CatalogueWorld, until: datetime
) -> List[str]:
    """Write the catalogue world's weekly tranches, oldest first, and return their keys."""
    return write_new(store, [(d.moment, world.tranche(d.week).to_csv())
                             for d in deliveries(world.weeks, until)])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: write simulated weekly tranches into a store."""
    parser = argparse.ArgumentParser(
        prog="simulate", description="Write simulated weekly tranches into a store; a tranche "
                                     "already there is never overwritten.",
        formatter_class=HelpFormatter,
        epilog=f"exit status: 0 written (or nothing, with --only-if-empty), 2 bad usage, "
               f"{EXIT_STORE} store unavailable, {EXIT_EXISTS} a tranche it would write is "
               f"already there (nothing written), {EXIT_NO_TRANCHE} --next found no tranche to "
               f"follow")
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
    parser.add_argument("--next", action="store_true",
                        help="a new week arrives: write the --weeks Fridays after the store's "
                             "newest tranche, continuing its weeks (the five-part world; use "
                             "the seed, --rows, --shape and --noise the store was made with)")
    parser.add_argument("--only-if-empty", action="store_true",
                        help="write nothing if the store already holds a tranche")
    args = parser.parse_args(argv)
    until = datetime.now(timezone.utc) if args.until is None else parse_timestamp(args.until)
    if until is None:
        parser.error(f"--until {args.until!r} is not an ISO timestamp")
    if args.rows < 1 or args.weeks < 1 or args.catalogue < 0:
        parser.error("--rows and --weeks must be at least 1, --catalogue at least 0")
    if args.next and (args.until is not None or args.catalogue):
        parser.error("--next follows the store's newest tranche: it takes no --until, and a "
                     "--catalogue world's weeks are fixed when it is drawn")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        store = open_store(args.store)
        if args.only_if_empty:
            latest = choose_tranches(store.list_keys(DATASETS_PREFIX)).latest
            if latest is not None:
                log.info("%s already holds tranche %s; nothing written", store.url, latest.key)
                return 0
        if args.catalogue:
            world = catalogue_world(args.catalogue, args.rows, args.weeks, args.seed, args.shape)
            keys = write_catalogue(store, world, until)
        elif args.next:
            planned = next_deliveries(store, args.weeks)
            if not planned:
                log.error("nothing written: --next found no tranche to follow in %s",
                          store.location(DATASETS_PREFIX))
                return EXIT_NO_TRANCHE
            keys = write_new(store, [
                (d.moment, five_part_tranche(args.rows, args.seed, args.shape, args.noise, d.week))
                for d in planned])
        else:
            keys = write_tranches(store, args.rows, args.weeks, args.seed, args.shape, until,
                                  args.noise)
    except TrancheExists as exc:
        log.error("nothing written: %s", exc)
        return EXIT_EXISTS
    except StoreError as exc:
        log.error("nothing more written: %s", exc)
        return EXIT_STORE
    log.info("wrote %d tranche(s) of %d rows to %s: %s", len(keys), args.rows, store.url,
             ", ".join(keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
