"""What the benchmarks share: a store's live model answering as the service does, and its scores.

:func:`served_answers` loads whatever ``models/latest.json`` names with the service's own code
(``pipeline.api.serving``: the same verification, parsing and batch answers as
``serve_model --unknown-products catalogue``), so a figure is what a client gets.
:func:`coverage_by_basis` and :func:`mae` turn answers into the figures the benchmarks print.
The stage's defaults are read from the stage itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from pipeline.api.serving import BatchRows, load_latest_serving
from pipeline.api.settings import UNKNOWN_CATALOGUE
from pipeline.artefacts import ModelUnavailable, choose_tranches, read_pointer
from pipeline.model_format import BASES, CATALOGUE_BASIS
from pipeline.store import open_store
from pipeline.training.run import DEFAULT_HISTORY_WEEKS

__all__ = ["DEFAULT_HISTORY_WEEKS", "choose_tranches", "BASES", "CATALOGUE_BASIS", "ANSWER_BASES",
           "Answers", "served_answers", "live_version", "coverage_by_basis", "mae", "COVERAGE_GOAL",
           "COVERAGE_ROWS_JUDGED", "coverage_met", "goal"]

FloatArray = npt.NDArray[np.float64]
ANSWER_BASES: Tuple[str, ...] = (*BASES, CATALOGUE_BASIS)
NO_BASIS = "none recorded"
COVERAGE_GOAL = (0.87, 0.93)
COVERAGE_ROWS_JUDGED = 50


@dataclass(frozen=True)
class Answers:
    """The served answers to a batch of orders, in request order (NaN where unanswered)."""

    model_version: str
    estimate: FloatArray
    upper: FloatArray
    basis: List[str]
    answered: npt.NDArray[np.bool_]


def served_answers(
    store_url: str, codes: Sequence[str], orders: Sequence[float]
) -> Tuple[Optional[Answers], str]:
    """The live model's answers as ``serve_model --unknown-products catalogue`` gives them.

    Returns (None, why) when the store has no loadable model.
    """
    try:
        serving = load_latest_serving(open_store(store_url), UNKNOWN_CATALOGUE, isolate=False)
    except ModelUnavailable as exc:
        return None, str(exc)
    answer = serving.predict_batch(BatchRows(list(codes), np.asarray(orders, dtype=np.float64)))
    upper = answer.uppers if answer.uppers is not None else np.full(len(codes), math.nan)
    bases = [NO_BASIS if b is None else b for b in answer.bases]
    return Answers(serving.version, answer.estimates, upper, bases, answer.answered), ""


def live_version(store_url: str) -> Optional[str]:
    """The model_version ``models/latest.json`` names, None when nothing is published."""
    try:
        found = read_pointer(open_store(store_url))
    except ModelUnavailable:
        return None
    return None if found is None else found[0].model_version


def mae(hours: FloatArray, estimate: FloatArray) -> float:
    """Mean absolute error (NaN on no rows)."""
    return float(np.mean(np.abs(hours - estimate))) if len(hours) else math.nan


def coverage_by_basis(
    hours: FloatArray, answers: Answers
) -> Dict[str, Tuple[int, int]]:
    """Per basis and ``all``: (rows within the p90 bound, rows with a bound)."""
    bounded = answers.answered & np.isfinite(answers.upper)
    within = bounded & (hours <= answers.upper)
    basis = np.asarray(answers.basis, dtype=object)
    result: Dict[str, Tuple[int, int]] = {}
    for name in (*ANSWER_BASES, NO_BASIS):
        rows = bounded & (basis == name)
        if rows.any():
            result[name] = (int(within[rows].sum()), int(rows.sum()))
    result["all"] = (int(within.sum()), int(bounded.sum()))
    return result


def coverage_met(within: int, rows: int) -> bool:
    """Whether a coverage keeps the p90 goal (0.87-0.93); True on too few rows to judge."""
    low, high = COVERAGE_GOAL
    return rows < COVERAGE_ROWS_JUDGED or low <= within / rows <= high


def goal(met: bool) -> str:
    """How a goal's verdict reads in the figures."""
    return "met" if met else "NOT met"
