"""The gates: metric levels, logic checks and champion vs challenger, each at its boundaries."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import pytest

from pipeline.model_format import Curve, DispatchModel
from pipeline.training.gates import (
    FAIL, KEEP, PASS, WARN, LogicOptions, Metrics, MetricThresholds, basis_gates, champion_gate,
    coverage_upper_limit, evaluate, logic_gates, metric_gates, metrics, observed_ranges,
)
from pipeline.training.validation import ValidTranche

THRESHOLDS = MetricThresholds(r2_min=0.5, r2_warn=0.8, mae_max=2.0, mae_warn=1.0)


def line(intercept: float, slope: float) -> Curve:
    return Curve((0.0, 100.0), (intercept, intercept + 100.0 * slope))


def rows(codes: Sequence[str], orders: Sequence[float], hours: Sequence[float]) -> ValidTranche:
    unique = tuple(sorted(set(codes)))
    return ValidTranche(
        unique,
        np.array([unique.index(c) for c in codes], dtype=np.int64),
        np.asarray(orders, dtype=np.float64),
        np.asarray(hours, dtype=np.float64),
    )


def test_metrics_are_scikit_learns_with_the_edge_cases_defined() -> None:
    actual = np.array([1.0, 2.0, 3.0, 4.0])
    assert metrics(actual, actual + 0.5).mae == 0.5
    assert metrics(actual, actual).r2 == 1.0
    assert metrics(actual, np.full(4, 2.5)).r2 == 0.0
    assert metrics(np.ones(3), np.ones(3)).r2 == 1.0
    assert metrics(np.ones(3), np.zeros(3)).r2 == 0.0
    assert (metrics(np.ones(1), np.ones(1)).r2, metrics(np.ones(1), np.zeros(1)).r2) == (1.0, 0.0)
    assert metrics(np.empty(0), np.empty(0)) == Metrics(0, 0.0, 0.0)
    assert metrics(actual, actual).coverage_p90 is None
    assert metrics(actual, actual, upper=np.array([1.0, 1.0, 3.5, 5.0])).coverage_p90 == 0.75


@pytest.mark.parametrize(
    "covered, rows, outcome",
    [(180, 200, PASS), (170, 200, PASS), (169, 200, WARN), (165, 200, WARN), (155, 200, FAIL),
     (0, 200, FAIL), (8_400, 10_000, FAIL), (8_500, 10_000, PASS)],
)
def test_coverage_below_the_minimum_fails_beyond_sampling_error_and_warns_within_it(
    covered: int, rows: int, outcome: str
) -> None:
    coverage = covered / rows
    *_, decision = metric_gates(Metrics(rows, 0.1, 0.99, coverage), THRESHOLDS)
    assert (decision.gate, decision.outcome, decision.value) == ("coverage_p90", outcome, coverage)
    assert f"{coverage:.3f} on {rows} rows" in decision.detail


def test_the_upper_confidence_limit_narrows_to_the_measured_share_with_more_rows() -> None:
    assert coverage_upper_limit(160, 200) > 0.84 > 0.80
    assert 0.80 < coverage_upper_limit(8_000, 10_000) < 0.81
    assert coverage_upper_limit(200, 200) == 1.0


def test_a_model_without_a_bound_has_no_coverage_gate() -> None:
    assert [d.gate for d in metric_gates(Metrics(100, 0.1, 0.99), THRESHOLDS)] == ["r2", "mae"]


@pytest.mark.parametrize(
    "r2, outcome",
    [(0.9, PASS), (0.8, PASS), (0.7999, WARN), (0.5, WARN), (0.4999, FAIL), (-3.0, FAIL)],
)
def test_r2_levels(r2: float, outcome: str) -> None:
    decision, _ = metric_gates(Metrics(100, 0.1, r2), THRESHOLDS)
    assert (decision.gate, decision.outcome, decision.value) == ("r2", outcome, r2)


@pytest.mark.parametrize(
    "mae, outcome",
    [(0.3, PASS), (1.0, PASS), (1.0001, WARN), (2.0, WARN), (2.0001, FAIL)],
)
def test_mae_levels(mae: float, outcome: str) -> None:
    _, decision = metric_gates(Metrics(100, mae, 0.99), THRESHOLDS)
    assert (decision.gate, decision.outcome) == ("mae", outcome)
    assert f"{mae:.4f}" in decision.detail


def test_no_scored_rows_fails_both_metric_gates() -> None:
    assert [d.outcome for d in metric_gates(Metrics(0, 0.0, 0.0), THRESHOLDS)] == [FAIL, FAIL]


def test_evaluate_scores_known_codes_overall_and_per_code() -> None:
    model = DispatchModel({"A": line(1.0, 0.0), "B": line(2.0, 0.0)})
    result = evaluate(model, rows(["A", "B", "B", "NEW"], [1, 2, 3, 4], [1.5, 2.0, 3.0, 9.0]))
    assert result.unscored_rows == 1
    assert result.overall.rows == 3 and result.overall.mae == pytest.approx(0.5)
    assert result.per_code["A"].mae == pytest.approx(0.5)
    assert result.per_code["B"].mae == pytest.approx(0.5)
    assert "NEW" not in result.per_code


RANGES: Dict[str, Tuple[float, float]] = {"A": (10.0, 100.0)}


def outcomes(model: DispatchModel, label_max: float = 100.0) -> Tuple[str, str, str]:
    monotone, non_negative, bounded = logic_gates(model, RANGES, label_max, LogicOptions())
    return monotone.outcome, non_negative.outcome, bounded.outcome


def test_a_sound_model_passes_the_logic_checks() -> None:
    assert outcomes(DispatchModel({"A": line(1.0, 0.05)})) == (PASS, PASS, PASS)


def test_a_curve_that_falls_beyond_the_observed_range_fails_monotone() -> None:
    bent = Curve((0.0, 100.0, 120.0), (1.0, 5.0, 4.0))  # falls after 100 orders
    assert outcomes(DispatchModel({"A": bent}))[0] == FAIL


class UnflooredCurve(Curve):
    """A broken curve (the real one floors at zero): what the gate must catch."""

    def predict(self, orders: np.ndarray) -> np.ndarray:  # type: ignore[override]
        return np.interp(orders, self.knots, self.values)


def test_a_negative_prediction_fails() -> None:
    assert outcomes(DispatchModel({"A": Curve((0.0, 1.0), (-1.0, -1.0))}))[1] == PASS  # floored
    assert outcomes(DispatchModel({"A": UnflooredCurve((0.0, 1.0), (-1.0, -1.0))}))[1] == FAIL


@pytest.mark.parametrize("peak, outcome", [(150.0, PASS), (150.01, FAIL)])
def test_label_bound_boundary(peak: float, outcome: str) -> None:
    # The curve is flat at ``peak`` over the observed range; the bound is 1.5 x 100.
    model = DispatchModel({"A": Curve((0.0, 1.0), (peak, peak))})
    assert outcomes(model, label_max=100.0)[2] == outcome


def test_observed_ranges_per_code() -> None:
    assert observed_ranges(rows(["A", "B", "A"], [5, 7, 2], [1, 1, 1])) == {
        "A": (2.0, 5.0), "B": (7.0, 7.0)
    }


HELD_OUT = rows(["A"] * 4 + ["NEW"] * 2, [0, 10, 20, 30, 5, 5], [1.0, 2.0, 3.0, 4.0, 50, 60])
TRUE = DispatchModel({"A": line(1.0, 0.1)})  # exact on A's rows: MAE 0


def test_no_champion_means_the_challenger_wins() -> None:
    decision = champion_gate(TRUE, None, None, HELD_OUT)
    assert decision.outcome == PASS


def test_only_rows_of_codes_both_know_are_compared() -> None:
    challenger = DispatchModel({"A": line(1.1, 0.1), "NEW": line(0.0, 0.0)})
    champion = DispatchModel({"A": line(1.0, 0.1)})
    decision = champion_gate(challenger, champion, "v1", HELD_OUT)
    assert decision.outcome == KEEP and "4 held-out rows" in decision.detail
    assert "new product codes NEW wait" in decision.detail


@pytest.mark.parametrize("worse_by, outcome", [(0.05, PASS), (0.0501, KEEP)])
def test_champion_tolerance_boundary(worse_by: float, outcome: str) -> None:
    champion = DispatchModel({"A": line(2.0, 0.1)})  # MAE exactly 1.0
    challenger = DispatchModel({"A": line(2.0 + worse_by, 0.1)})  # MAE 1 + worse_by
    decision = champion_gate(challenger, champion, "v1", HELD_OUT, tolerance=0.05)
    assert decision.outcome == outcome


def test_a_champion_knowing_none_of_the_codes_loses() -> None:
    champion = DispatchModel({"OLD": line(1.0, 0.0)})
    assert champion_gate(TRUE, champion, "v1", HELD_OUT).outcome == PASS


def test_held_out_rows_are_scored_and_gated_per_basis() -> None:
    bases = {"A": "product", "B": "pooled", "C": "pooled"}
    model = DispatchModel({c: line(1.0, 0.1) for c in bases},
                          {c: line(2.0, 0.1) for c in bases}, bases=bases)
    x = np.arange(100.0)
    exact = 1.0 + 0.1 * x
    held = rows(["A"] * 100 + ["B"] * 40 + ["C"] * 10,
                np.concatenate([x, x[:40], x[:10]]),
                np.concatenate([exact, exact[:40] + 3.0, exact[:10] + 3.0]))
    scored = evaluate(model, held)
    assert scored.by_basis["product"].mae == 0.0 and scored.by_basis["pooled"].rows == 50
    assert scored.by_basis["pooled"].mae == pytest.approx(3.0)
    assert scored.by_basis["pooled"].coverage_p90 == 0.0
    assert set(scored.to_dict()["by_basis"]) == {"product", "pooled"}
    decided = {d.gate: d.outcome for d in basis_gates(scored, THRESHOLDS)}
    assert decided["mae_pooled"] == FAIL and decided["coverage_p90_pooled"] == FAIL
    assert decided["mae_product"] == PASS
    few = basis_gates(evaluate(model, held.subset(np.arange(120))), THRESHOLDS)
    assert [(d.gate, d.outcome) for d in few if d.gate == "pooled"] == [("pooled", PASS)]
    assert not any(d.gate.endswith("_pooled") for d in few)
    assert basis_gates(evaluate(model, held.subset(np.arange(100))), THRESHOLDS) == ()
    assert "by_basis" not in evaluate(DispatchModel({"A": line(1.0, 0.1)}), held).to_dict()


def test_a_basis_without_held_out_rows_records_null_scores_not_zeros() -> None:
    bases = {"A": "product", "B": "pooled"}
    model = DispatchModel({c: line(1.0, 0.1) for c in bases},
                          {c: line(2.0, 0.1) for c in bases}, bases=bases)
    x = np.arange(50.0)
    recorded = evaluate(model, rows(["A"] * 50, x, 1.0 + 0.1 * x)).to_dict()["by_basis"]
    assert recorded["pooled"] == {"rows": 0, "mae": None, "r2": None, "coverage_p90": None}
    assert recorded["product"]["mae"] == 0.0 and recorded["product"]["rows"] == 50
