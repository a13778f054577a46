"""Simulated weekly tranches: realistic data with a known truth, for local runs and tests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
import numpy.typing as npt

SHAPES = ("linear", "saturating")
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
) -> SimulatedTranche:
    """A tranche of ``rows`` orders; ``week`` drifts order volumes a little, as trade grows."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(product_codes), size=rows)
    level = 100.0 * (1.0 + 0.02 * week)
    orders = rng.poisson(lam=level, size=rows).astype(np.int64)
    expected = np.empty(rows, dtype=np.float64)
    for i in range(len(product_codes)):
        mask = index == i
        expected[mask] = expected_hours(i, orders[mask].astype(np.float64), shape)
    hours = np.maximum(expected + rng.normal(0.0, noise_sd, size=rows), 0.0)
    codes = np.asarray(product_codes)[index]
    return SimulatedTranche(hours, orders, codes, expected)


def noise_floor_mae(tranche: SimulatedTranche) -> float:
    """The MAE of the true expected value: the best any model can do on this tranche."""
    return float(np.mean(np.abs(tranche.hours_to_dispatch - tranche.expected_hours)))


def tranche_key(when_iso: str) -> str:
    """The store key of a tranche delivered at an ISO timestamp."""
    return f"datasets/time_to_dispatch_{when_iso}.csv"

