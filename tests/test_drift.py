"""Drift: PSI per feature against the previous tranche, flagged above a threshold."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.simulate import simulate_tranche
from pipeline.training.drift import category_psi, numeric_psi, summarise_drift, tranche_drift
from pipeline.training.validation import ContractOptions, validate_tranche


def test_same_distribution_has_no_drift() -> None:
    sample = np.random.default_rng(0).normal(100, 10, 5000)
    assert numeric_psi(sample, sample) == pytest.approx(0.0, abs=1e-12)
    assert category_psi({"A": 10, "B": 30}, {"A": 20, "B": 60}) == pytest.approx(0.0, abs=1e-12)


def test_psi_matches_the_formula_on_two_bins() -> None:
    expected = np.array([0.0, 0.0, 1.0, 1.0])  # median 0.5 splits it into halves
    actual = np.array([0.0, 1.0, 1.0, 1.0])  # 25% / 75%
    value = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert numeric_psi(expected, actual, bins=2) == pytest.approx(value)


def test_a_shift_is_drift_and_a_new_code_counts() -> None:
    rng = np.random.default_rng(1)
    assert numeric_psi(rng.normal(100, 10, 5000), rng.normal(115, 10, 5000)) > 0.2
    assert category_psi({"A": 50, "B": 50}, {"A": 50, "B": 50, "NEW": 100}) > 0.2
    assert numeric_psi(np.array([]), np.array([1.0])) == 0.0


@pytest.mark.parametrize("psi, drifted", [(0.2, False), (0.2000001, True)])
def test_threshold_boundary(psi: float, drifted: bool) -> None:
    summary = summarise_drift("prev.csv", {"orders_placed": psi}, threshold=0.2)
    assert summary.drifted == (("orders_placed",) if drifted else ())
    assert summary.to_dict()["psi"] == {"orders_placed": round(psi, 6)}


def test_weekly_tranches_drift_little_and_a_doubled_volume_a_lot() -> None:
    def rows(week: int, seed: int):  # type: ignore[no-untyped-def]
        return validate_tranche(simulate_tranche(2000, seed=seed, week=week).to_csv(),
                                ContractOptions())

    calm = tranche_drift(rows(0, 1), rows(1, 2), "prev.csv")
    assert calm.drifted == ()
    assert set(calm.to_dict()["psi"]) == {"orders_placed", "hours_to_dispatch", "product_code"}
    grown = tranche_drift(rows(0, 1), rows(50, 2), "prev.csv")
    assert "orders_placed" in grown.drifted
