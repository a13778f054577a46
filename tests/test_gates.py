"""The gates: the baselines, metric levels, logic checks and champion vs challenger, each at its
boundaries."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import pytest

from pipeline.model_format import Curve, DispatchModel
from pipeline.training.gates import (
    CODE_MEDIAN, DEFAULT_BASELINE_CONFIDENCE, FAIL, GLOBAL_MEDIAN, KEEP, PASS, WARN, Decision,
    LogicOptions, MedianBaselines, Metrics, MetricThresholds, Scored, baseline_gate, basis_gates,
    champion_gate, coverage_upper_limit, evaluate, held_out_gates, logic_gates, metric_gates,
    metrics, metrics_by_code, observed_ranges, paired_difference,
)
from pipeline.training.validation import ValidTranche

FloatArray = npt.NDArray[np.float64]

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


# ------------------------------------------------------------------------------ baselines


def test_absolute_levels_are_off_by_default_and_each_can_be_set_alone() -> None:
    poor = Metrics(100, 50.0, -3.0, 0.9)
    assert [d.gate for d in metric_gates(poor, MetricThresholds())] == ["coverage_p90"]
    [mae, _] = metric_gates(poor, MetricThresholds(mae_max=60.0))
    assert (mae.gate, mae.outcome, mae.detail) == (
        "mae", PASS, "held-out MAE 50.0000 h (fails above 60 h)")
    [r2, _] = metric_gates(poor, MetricThresholds(r2_warn=0.0))
    assert (r2.gate, r2.outcome) == ("r2", WARN)


def test_the_baselines_are_the_medians_of_every_row_the_model_was_fitted_on() -> None:
    newest = rows(["A", "A", "B"], [1, 2, 3], [1.0, 3.0, 100.0])
    older = rows(["B", "C", "C", "C"], [1, 1, 1, 1], [200.0, 5.0, 7.0, 1000.0])
    baselines = MedianBaselines.fit([newest, older])
    assert baselines.per_code == {"A": 2.0, "B": 150.0, "C": 7.0}
    assert baselines.overall == 7.0  # of 1, 3, 5, 7, 100, 200, 1000
    answers = baselines.predict(rows(["C", "NEW", "A"], [0, 0, 0], [0, 0, 0]))
    np.testing.assert_array_equal(answers[CODE_MEDIAN], [7.0, 7.0, 2.0])
    np.testing.assert_array_equal(answers[GLOBAL_MEDIAN], [7.0, 7.0, 7.0])
    assert MedianBaselines.fit([]).predict(rows(["A"], [0], [1]))[CODE_MEDIAN][0] == 0.0


# Training rows: A's dispatch takes ~10 h, B's ~100 h; the held-out rows follow 5 + orders / 2.
TRAINED = MedianBaselines.fit([rows(["A"] * 3 + ["B"] * 3, [0] * 6,
                                    [9.0, 10.0, 11.0, 99.0, 100.0, 101.0])])
X = np.arange(10.0)
HELD = rows(["A"] * 10 + ["B"] * 10, np.concatenate([X, X]),
            np.concatenate([5.0 + X / 2, 95.0 + X / 2]))


def gates_of(model: DispatchModel) -> Dict[str, str]:
    return {d.gate: d.outcome for d in held_out_gates(evaluate(model, HELD, TRAINED),
                                                      MetricThresholds())}


def test_a_model_that_loses_to_the_per_code_median_is_refused() -> None:
    """A model that ignores the product code: as good as the global median, not the per-code."""
    flat = DispatchModel({"A": line(55.0, 0.0), "B": line(55.0, 0.0)})
    decided = held_out_gates(evaluate(flat, HELD, TRAINED), MetricThresholds())
    assert {d.gate: d.outcome for d in decided} == {
        "mae_vs_code_median": FAIL, "mae_vs_global_median": PASS}
    [lost] = [d for d in decided if d.outcome == FAIL]
    assert lost.detail.startswith("held-out MAE 45.0000 h against the window's per-code "
                                  "median's 2.7500 h on 20 rows (paired difference +42.2500 h")
    assert "less accurate beyond sampling error" in lost.detail
    assert lost.value == pytest.approx(42.25)


def test_a_model_that_beats_the_per_code_median_passes() -> None:
    exact = DispatchModel({"A": line(5.0, 0.5), "B": line(95.0, 0.5)})
    assert gates_of(exact) == {"mae_vs_code_median": PASS, "mae_vs_global_median": PASS}


def test_a_model_worse_within_sampling_error_warns() -> None:
    """1 h above the median on A's rows (1 h worse on each), 1 h below it on B's (1 h better on
    nine of ten): worse by 0.05 h on the whole, far within sampling error."""
    near = DispatchModel({"A": line(11.0, 0.0), "B": line(99.0, 0.0)})
    assert gates_of(near)["mae_vs_code_median"] == WARN


def test_a_model_answering_the_baselines_values_ties_whatever_the_rounding() -> None:
    """0.1 + 0.2 is not 0.3 in binary floating point; the decision does not care."""
    held = rows(["A"] * 4, [0, 1, 2, 3], [0.1, 0.2, 0.5, 0.9])
    baselines = MedianBaselines({"A": 0.3}, 0.3)
    model = DispatchModel({"A": Curve((0.0, 1.0), (0.1 + 0.2, 0.1 + 0.2))})
    assert model.curves["A"].predict(np.zeros(1))[0] != 0.3
    decided = held_out_gates(evaluate(model, held, baselines), MetricThresholds())
    assert [(d.outcome, d.value) for d in decided if d.gate.startswith("mae_vs")] == [
        (PASS, 0.0), (PASS, 0.0)]


def test_the_paired_difference_needs_two_rows_for_a_limit() -> None:
    one = paired_difference(np.array([10.0]), np.array([12.0]), np.array([10.0]), 0.99)
    assert (one.rows, one.difference, one.lower) == (1, 2.0, -np.inf)
    scored = Scored(np.array([10.0]), np.array([12.0]), np.array([""]),
                    {CODE_MEDIAN: np.array([10.0])})
    assert baseline_gate("mae_vs_code_median", CODE_MEDIAN, scored, 0.99).outcome == WARN
    none = Scored(np.empty(0), np.empty(0), np.empty(0, dtype=str), {CODE_MEDIAN: np.empty(0)})
    refused = baseline_gate("mae_vs_code_median", CODE_MEDIAN, none, 0.99)
    assert refused.outcome == FAIL and "no held-out rows" in refused.detail


def small_week(seed: int, answer: str) -> bool:
    """One small shop's week: 20 codes, log-normal hours around 44 h (heavy tailed), 300
    training rows, 10-30 held-out rows; whether the model is refused against the per-code
    median. ``answer``: 'as good' (the per-code medians of another 300 rows of the same shop),
    'four times' (four times the per-code medians)."""
    rng = np.random.default_rng(seed)
    effects = rng.normal(0.0, 1.0, 20)

    def draw(n: int) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        codes = rng.integers(0, 20, n)
        return codes, 44.0 * np.exp(effects[codes] + rng.normal(0.0, 0.8, n))

    def medians(codes: npt.NDArray[np.int64], hours: npt.NDArray[np.float64]) -> FloatArray:
        return np.asarray([np.median(hours[codes == i]) if (codes == i).any()
                           else np.median(hours) for i in range(20)])

    baseline = medians(*draw(300))
    model = medians(*draw(300)) if answer == "as good" else 4.0 * baseline
    codes, hours = draw(int(rng.integers(10, 31)))
    found = paired_difference(hours, model[codes], baseline[codes], DEFAULT_BASELINE_CONFIDENCE)
    return bool(found.lower > 0.0)


def test_a_small_shops_week_is_not_refused_by_chance_when_the_model_is_as_good() -> None:
    """Seeded: 400 weeks of 10-30 held-out rows. Measured: 3 refused (0.75%); at 95% it was 20
    (5%), so the level is 99%. A model answering four times the medians is refused in 254 of
    400 such weeks (360 at 95%): a dozen heavy-tailed rows prove no more."""
    assert DEFAULT_BASELINE_CONFIDENCE == 0.99
    refused = sum(small_week(seed, "as good") for seed in range(400))
    assert refused <= 8
    assert sum(small_week(seed, "four times") for seed in range(400)) >= 240


def test_the_baselines_are_scored_and_gated_beside_the_model_per_basis() -> None:
    bases = {"A": "product", "B": "pooled"}
    model = DispatchModel({"A": line(5.0, 0.5), "B": line(55.0, 0.0)},
                          {c: line(200.0, 1.0) for c in bases}, bases=bases)
    x = np.arange(40.0)
    held = rows(["A"] * 40 + ["B"] * 40, np.concatenate([x, x]),
                np.concatenate([5.0 + x / 2, 95.0 + x / 2]))
    scored = evaluate(model, held, TRAINED)
    recorded = scored.to_dict()["baselines"]
    assert set(recorded) == {CODE_MEDIAN, GLOBAL_MEDIAN}
    assert recorded[CODE_MEDIAN]["overall"]["rows"] == 80
    assert set(recorded[CODE_MEDIAN]["by_basis"]) == {"product", "pooled"}
    assert recorded[GLOBAL_MEDIAN]["overall"]["mae"] == pytest.approx(
        scored.baselines[GLOBAL_MEDIAN].mae)
    decided = {d.gate: d.outcome for d in basis_gates(scored, MetricThresholds())}
    assert decided["mae_vs_code_median_product"] == PASS
    assert decided["mae_vs_code_median_pooled"] == FAIL  # B's flat 55 h against its 100 h
    assert "by_basis" not in evaluate(DispatchModel({"A": line(5.0, 0.5)}), held,
                                      TRAINED).to_dict()["baselines"][CODE_MEDIAN]
    assert "baselines" not in evaluate(model, held).to_dict()


def test_metrics_by_code_agree_with_the_metrics_of_each_codes_rows() -> None:
    rng = np.random.default_rng(3)
    codes = np.r_[np.repeat([0, 1, 3], [50, 1, 4]), 5, 5].astype(np.int64)
    actual = rng.gamma(2.0, 20.0, len(codes))
    actual[51:55] = 7.0  # code 3: constant labels, missed
    actual[55:] = 9.0  # code 5: constant labels, matched exactly
    predicted = actual + rng.normal(0.0, 5.0, len(codes))
    predicted[55:] = 9.0
    upper = predicted + 8.0
    names = ["A", "B", "C", "D", "E", "F"]
    found = metrics_by_code(names, codes, actual, predicted, upper)
    assert set(found) == {"A", "B", "D", "F"}
    for index, name in enumerate(names):
        if name in found:
            mask = codes == index
            expected = metrics(actual[mask], predicted[mask], upper[mask])
            assert found[name].rows == expected.rows
            assert found[name].mae == pytest.approx(expected.mae)
            assert found[name].r2 == pytest.approx(expected.r2)
            assert found[name].coverage_p90 == pytest.approx(expected.coverage_p90)
    assert found["D"].r2 == 0.0 and found["F"].r2 == 1.0


def test_a_basis_losing_a_percent_beyond_sampling_error_warns_a_material_loss_fails() -> None:
    bases = {"A": "product", "B": "pooled"}
    hours = 100.0 + np.random.default_rng(7).normal(0.0, 20.0, 10_000)
    x = np.arange(100.0)
    held = rows(["A"] * 100 + ["B"] * 10_000, np.concatenate([x, np.zeros(10_000)]),
                np.concatenate([5.0 + x / 2, hours]))

    def pooled_gate(flat: float) -> Decision:
        model = DispatchModel({"A": line(5.0, 0.5), "B": line(flat, 0.0)},
                              {c: line(500.0, 1.0) for c in bases}, bases=bases)
        found = basis_gates(evaluate(model, held, TRAINED), MetricThresholds())
        return next(d for d in found if d.gate == "mae_vs_code_median_pooled")

    slight = pooled_gate(102.0)  # about 1% worse than B's median, 100 h, on 10,000 rows
    assert slight.outcome == WARN and "not refused for one basis" in slight.detail
    assert "beyond sampling error" in slight.detail
    assert pooled_gate(130.0).outcome == FAIL
