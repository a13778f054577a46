"""The two prediction routes: a request body read into rows, and the rows answered.

The one parser of ``POST /api/v0.1/time_to_dispatch`` and ``.../batch``, whichever way a
request comes in (the lean layer or FastAPI's routing). A well-formed body is read by
orjson and a few checks no more lenient than the schema; anything else is validated by
pydantic-core against the declared schemas, which reports the errors in FastAPI's shape.
Whether the model knows a code is found after validation: on the single route an
unknown code is a ``literal_error`` of bounded size, in a batch its row is listed and
left unanswered (or answered from the catalogue curve, as the service is asked to).
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import orjson
from pydantic_core import ValidationError

from pipeline.api.errors import summary, validation_body
from pipeline.api.routes import PRODUCT_CODES_PATH
from pipeline.api.schemas import ORDERS_PLACED_MAX, PRODUCT_CODE_MAX_LENGTH, build_validators
from pipeline.api.serving import BatchRows, ServingModel
from pipeline.api.settings import UNKNOWN_CATALOGUE
from pipeline.model_format import CATALOGUE_BASIS

LISTED_CODES_MAX = 20
CLOSE_MATCHES = 5
NOT_FINITE_MSG = "The model gives no finite estimate for this orders_placed"


class RequestRejected(Exception):
    """A request the served model cannot answer: its problems, shaped as pydantic's errors."""

    def __init__(self, errors: List[Dict[str, Any]], unknown: int = 0) -> None:
        super().__init__(f"{len(errors)} problem(s) with the request")
        self.errors = errors
        self.unknown = unknown


# A prediction request's answer: status and body, the request log's fields, the rows answered
# and the parts named that the model does not know. A plain tuple: a NamedTuple's constructor
# costs the hot path half a microsecond.
Outcome = Tuple[int, bytes, Dict[str, Any], int, int]


def _literal(values: List[str]) -> str:
    """Values listed as pydantic's literal_error lists them: 'a', 'b' or 'c'."""
    shown = [repr(v) for v in values]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def unknown_issue(serving: ServingModel, code: str, loc: Tuple[Any, ...]) -> Dict[str, Any]:
    """The 422 issue for a product code the model does not know, of bounded size.

    Up to ``LISTED_CODES_MAX`` known codes are listed, as pydantic's literal_error
    does; beyond that the issue gives their number, up to ``CLOSE_MATCHES`` close
    matches and the route that lists them all.
    """
    codes = serving.lookup.codes
    ctx: Dict[str, Any]
    if len(codes) <= LISTED_CODES_MAX:
        expected = _literal(list(codes))
        ctx = {"expected": expected}
    else:
        matches = serving.lookup.close_matches(code, CLOSE_MATCHES)
        near = f"; close matches: {_literal(matches)}" if matches else ""
        expected = (
            f"one of the {len(codes)} product codes the model knows "
            f"(GET {PRODUCT_CODES_PATH} lists them){near}"
        )
        ctx = {"expected": expected, "product_codes": len(codes),
               "close_matches": matches, "product_codes_path": PRODUCT_CODES_PATH}
    message = f"Input should be {expected}"
    if serving.unknown_products == UNKNOWN_CATALOGUE:
        message += " (the model has no catalogue curve to answer parts it has never seen)"
    return {"type": "literal_error", "loc": loc, "msg": message, "input": code, "ctx": ctx}


def _not_finite(loc: List[Any], value: float) -> bytes:
    issue = {"type": "value_error", "loc": loc, "msg": NOT_FINITE_MSG, "input": value}
    return orjson.dumps({"detail": [issue]})


def _rejected(exc: RequestRejected) -> Outcome:
    return 422, validation_body(exc.errors), {"errors": summary(exc.errors)}, 0, exc.unknown


def _column(values: Optional[Any], present: Any, n: int) -> Any:
    """An answer array: numpy values where ``present``, null elsewhere (all null if None)."""
    if values is None:
        return [None] * n
    if present.all():
        return values
    listed = values.tolist()
    for row in np.flatnonzero(~present).tolist():
        listed[row] = None
    return listed


class Predictions:
    """Reads and answers the prediction routes' bodies for batches of at most ``max_batch_rows``."""

    def __init__(self, max_batch_rows: int) -> None:
        self.max_batch_rows = max_batch_rows
        self.validators = build_validators(max_batch_rows)

    def parse_single(self, body: bytes, serving: ServingModel) -> Tuple[str, float]:
        """Validate a single-request body; RequestRejected lists its problems.

        The code may be one the model does not know (see :meth:`single`); it is named
        first among the problems of a body that has others.
        """
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if type(data) is dict:
            code: Any = data.get("product_code")
            orders: Any = data.get("orders_placed")
            kind = type(orders)
            if (
                (kind is int or kind is float)
                and type(code) is str
                and len(code) <= PRODUCT_CODE_MAX_LENGTH
                and 0 <= orders <= ORDERS_PLACED_MAX
            ):
                return code, float(orders)
        try:
            row = self.validators.single.validate_json(body)
        except ValidationError as exc:
            raise self._with_unknown_code(body, exc, serving) from None
        return row["product_code"], row["orders_placed"]

    def _with_unknown_code(
        self, body: bytes, exc: ValidationError, serving: ServingModel
    ) -> RequestRejected:
        """pydantic's errors, led by the unknown-code issue when the code is a valid string."""
        errors: List[Dict[str, Any]] = exc.errors(include_url=False)  # type: ignore[assignment]
        if any(tuple(e["loc"])[:1] == ("product_code",) for e in errors) or (
            serving.answers_unknown
        ):
            return RequestRejected(errors)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return RequestRejected(errors)
        code = data.get("product_code") if isinstance(data, dict) else None
        if isinstance(code, str) and code not in serving.lookup.index:
            return RequestRejected([unknown_issue(serving, code, ("product_code",))] + errors, 1)
        return RequestRejected(errors)

    def parse_batch(self, body: bytes) -> BatchRows:
        """Validate a batch body's structure; RequestRejected lists its problems.

        The common case (a JSON array of well-formed rows) is checked column-wise after
        orjson parses it; anything unusual is left to pydantic-core, which then reports
        every error just as the declared schema does. A list over the row cap is refused
        at once, without validating its rows. Unknown codes are not errors here.
        """
        rows = self._fast_columns(body)
        if rows is not None:
            return rows
        try:
            checked = self.validators.batch.validate_json(body)
        except ValidationError as exc:
            raise RequestRejected(exc.errors(include_url=False)) from None  # type: ignore[arg-type]
        return BatchRows(
            [row["product_code"] for row in checked],
            np.array([row["orders_placed"] for row in checked], dtype=np.float64),
        )

    def _fast_columns(self, body: bytes) -> Optional[BatchRows]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(data) is not list:
            return None
        if len(data) > self.max_batch_rows:
            ctx = {"field_type": "List", "max_length": self.max_batch_rows,
                   "actual_length": len(data)}
            raise RequestRejected([{
                "type": "too_long", "loc": (), "input": data, "ctx": ctx,
                "msg": f"List should have at most {self.max_batch_rows} items after "
                       f"validation, not {len(data)}",
            }])
        try:
            codes = [row["product_code"] for row in data]
            orders = [row["orders_placed"] for row in data]
        except (TypeError, KeyError):
            return None
        if not set(map(type, codes)) <= {str} or not {type(value) for value in orders} <= {
            int, float
        }:
            return None
        if codes and max(map(len, codes)) > PRODUCT_CODE_MAX_LENGTH:
            return None
        values = np.array(orders, dtype=np.float64)
        if len(values) and not (values.min() >= 0.0 and values.max() <= ORDERS_PLACED_MAX):
            return None
        return BatchRows(codes, values)

    def single(self, serving: ServingModel, body: bytes) -> Outcome:
        """Validate and answer one prediction request body."""
        try:
            code, orders = self.parse_single(body, serving)
        except RequestRejected as exc:
            return _rejected(exc)
        lookup = serving.lookup
        fields: Dict[str, Any] = {"input": {"product_code": code, "orders_placed": orders}}
        i = lookup.index.get(code)
        p90: Optional[float]
        if i is not None:
            estimate = lookup.estimate(i, orders)
            p90 = lookup.upper(i, orders, estimate)
            extrapolated, basis = lookup.extrapolated(i, orders), lookup.basis(i)
            unknown = 0
        elif serving.answers_unknown:
            estimate, p90 = lookup.catalogue_answer(orders)
            extrapolated, basis = lookup.outside_trained(orders), CATALOGUE_BASIS
            unknown = 1
        else:
            return _rejected(RequestRejected([unknown_issue(serving, code, ("product_code",))], 1))
        if not math.isfinite(estimate) or (p90 is not None and not math.isfinite(p90)):
            loc: List[Any] = ["body", "orders_placed"]
            fields["errors"] = [{"type": "value_error", "loc": loc}]
            return 422, _not_finite(loc, orders), fields, 0, unknown
        fields["prediction"] = estimate
        payload = orjson.dumps({
            "est_hours_to_dispatch": estimate,
            "p90_hours_to_dispatch": p90,
            "extrapolated": extrapolated,
            "basis": basis,
            "model_version": serving.version,
        })
        return 200, payload, fields, 1, unknown

    def batch(self, serving: ServingModel, body: bytes) -> Outcome:
        """Validate and answer one batch request body."""
        try:
            rows = self.parse_batch(body)
        except RequestRejected as exc:
            return _rejected(exc)
        answer = serving.predict_batch(rows)
        estimates, uppers, answered = answer.estimates, answer.uppers, answer.answered
        n = len(estimates)
        unknown = len(answer.unknown)
        fields: Dict[str, Any] = {
            "input": {"rows": n, "product_codes": len(set(rows.product_codes))}
        }
        if unknown:
            fields["unknown_product_codes"] = unknown
        with np.errstate(invalid="ignore"):
            broken = answered & ~np.isfinite(estimates)
            if uppers is not None:
                broken |= answer.bounded & ~np.isfinite(uppers)
        if broken.any():
            bad = int(np.flatnonzero(broken)[0])
            loc: List[Any] = ["body", bad, "orders_placed"]
            fields["errors"] = [{"type": "value_error", "loc": loc}]
            payload = _not_finite(loc, float(rows.orders_placed[bad]))
            return 422, payload, fields, 0, unknown
        done = estimates[answered]
        if len(done):
            fields["prediction"] = {
                "min": float(done.min()),
                "mean": float(done.mean()),
                "max": float(done.max()),
            }
        codes = rows.product_codes
        payload = orjson.dumps(
            {
                "est_hours_to_dispatch": _column(estimates, answered, n),
                "p90_hours_to_dispatch": _column(uppers, answer.bounded, n),
                "extrapolated": _column(answer.outside, answer.ranged, n),
                "basis": answer.bases,
                "unknown_product_codes": [
                    {"index": i, "product_code": codes[i]} for i in answer.unknown.tolist()
                ],
                "model_version": serving.version,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        return 200, payload, fields, int(answered.sum()), unknown
