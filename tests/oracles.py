"""The model's own answers: the oracles the service's answers are held to."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from pipeline.api.lookup import Lookup, prepare
from pipeline.model_format import Curve, DispatchModel


def at(curve: Curve, orders: float) -> float:
    """A curve's estimate at one order count (through Curve.predict)."""
    return float(curve.predict(np.array([orders], dtype=np.float64))[0])


def served(model: DispatchModel) -> Lookup:
    """The model as the service holds it: its artefact parsed, checked and put in columns."""
    return Lookup(prepare(model.to_json(), b'{"model_sha256": "s"}', "s"))


def answers(
    model: DispatchModel, code: str, orders: float
) -> Tuple[float, Optional[float], Optional[bool]]:
    """A model's estimate, p90 bound and extrapolated flag for one row (its batch path);
    KeyError for a code it does not know."""
    estimate, upper, outside = model.predict_bounded([code], [orders])
    return (float(estimate[0]), None if upper is None else float(upper[0]),
            None if outside is None else bool(outside[0]))
