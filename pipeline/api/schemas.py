"""Request, response and error schemas, and the request validators built from them.

``orders_placed`` is a finite number from 0 to ``ORDERS_PLACED_MAX``. Integers and
non-integral numbers are both accepted (the model's curves are continuous, and an
upstream forecast may send a mean count); booleans, strings, NaN, Infinity and
numbers that overflow a double (``1e999``) are rejected. The upper bound keeps every
estimate finite. ``product_code`` is a string of at most ``PRODUCT_CODE_MAX_LENGTH``
characters. The schemas, and so ``/openapi.json``, are the same whatever model is
served: whether the model knows a code is checked after validation (a
``literal_error`` on the single endpoint, ``unknown_product_codes`` in a batch).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, GetPydanticSchema, TypeAdapter
from pydantic_core import CoreSchema, core_schema
from typing_extensions import Annotated, Literal

from pipeline.api.routes import MODEL_PATH, PRODUCT_CODES_PATH
from pipeline.api.settings import UnknownProducts

PRODUCT_CODE_MAX_LENGTH = 256
ORDERS_PLACED_MAX = 1e9
EXAMPLE_CODE = "SKU001"
EXAMPLE_VERSION = "20260102-230000-ab12cd34"

ProductCodeText = Annotated[
    str,
    Field(
        strict=True,
        max_length=PRODUCT_CODE_MAX_LENGTH,
        description=f"A product code. GET {PRODUCT_CODES_PATH} lists the codes the "
        "served model knows (the list changes with each model; the schema does not).",
        examples=[EXAMPLE_CODE],
    ),
]
OrdersPlaced = Annotated[
    float,
    Field(
        strict=True,
        ge=0,
        le=ORDERS_PLACED_MAX,
        allow_inf_nan=False,
        description="Orders placed: a finite number >= 0 (integral or not).",
        examples=[112],
    ),
]


class PredictionRequest(BaseModel):
    """One product and its order count."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"product_code": EXAMPLE_CODE, "orders_placed": 112}]}
    )

    product_code: ProductCodeText
    orders_placed: OrdersPlaced


P90_DESCRIPTION = (
    "Hours within which 90% of this product's orders placed with this many orders waiting "
    "are dispatched (a calibrated upper bound, never below the estimate, never decreasing "
    "as orders_placed grows); null when the served model has no bound (format version 1)."
)
BASIS_DESCRIPTION = (
    "What the estimate rests on: 'product' (the part's own rows in the newest tranche), "
    "'pooled' (its few rows combined with the whole catalogue) or 'catalogue' (a part the "
    "model has never seen, answered from the catalogue-wide curve when the service is run "
    "with --unknown-products catalogue); null for a model that does not record it "
    "(artefact formats 1 and 2)."
)
Basis = Optional[Literal["product", "pooled", "catalogue"]]
EXTRAPOLATED_DESCRIPTION = (
    "True when orders_placed lies outside the range this product code was trained on "
    f"(GET {PRODUCT_CODES_PATH} lists the ranges): the model is guessing. For a part "
    "answered from the catalogue curve, the range of the whole model (orders_placed_range "
    f"in GET {MODEL_PATH}). Null when the served model does not record its ranges "
    "(format version 1)."
)


class PredictionResponse(BaseModel):
    """The estimate for one request, its p90 upper bound, and the model that made them."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "est_hours_to_dispatch": 3.4,
                    "p90_hours_to_dispatch": 4.7,
                    "extrapolated": False,
                    "basis": "product",
                    "model_version": EXAMPLE_VERSION,
                }
            ]
        },
    )

    est_hours_to_dispatch: float = Field(ge=0, description="Estimated hours to dispatch.")
    p90_hours_to_dispatch: Optional[float] = Field(ge=0, description=P90_DESCRIPTION)
    extrapolated: Optional[bool] = Field(description=EXTRAPOLATED_DESCRIPTION)
    basis: Basis = Field(description=BASIS_DESCRIPTION)
    model_version: str = Field(description="The version of the model that answered.")


class UnknownProductCode(BaseModel):
    """A batch row whose product code the served model does not know."""

    index: int = Field(ge=0, description="The row's position in the request (from 0).")
    product_code: str = Field(description="The code as sent.")


class BatchPredictionResponse(BaseModel):
    """Estimates for a batch in request order (parallel arrays), and the model that made them.

    An empty batch (``[]``) is valid and gets empty arrays. A row whose product code the
    model does not know is listed in ``unknown_product_codes`` and gets null in every
    array (unless the service answers such parts from the catalogue curve: then its
    basis is ``catalogue``); the other rows are answered.
    """

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "est_hours_to_dispatch": [3.4, 5.1, None],
                    "p90_hours_to_dispatch": [4.7, 7.0, None],
                    "extrapolated": [False, True, None],
                    "basis": ["product", "pooled", None],
                    "unknown_product_codes": [{"index": 2, "product_code": "SKU999"}],
                    "model_version": EXAMPLE_VERSION,
                }
            ]
        },
    )

    est_hours_to_dispatch: List[Optional[Annotated[float, Field(ge=0)]]] = Field(
        description="One estimate per request row, in order (null for an unknown code)."
    )
    p90_hours_to_dispatch: List[Optional[Annotated[float, Field(ge=0)]]] = Field(
        description="One p90 bound per request row, in order. " + P90_DESCRIPTION
    )
    extrapolated: List[Optional[bool]] = Field(
        description="One flag per request row, in order. " + EXTRAPOLATED_DESCRIPTION
    )
    basis: List[Basis] = Field(
        description="One basis per request row, in order. " + BASIS_DESCRIPTION
    )
    unknown_product_codes: List[UnknownProductCode] = Field(
        description="The rows whose product code the model does not know (empty if none)."
    )
    model_version: str = Field(description="The version of the model that answered.")


class ValidationIssue(BaseModel):
    """One problem with the request: where (``loc``), what (``type``) and a message."""

    type: str = Field(description="Error type, e.g. missing, literal_error, finite_number.")
    loc: List[Union[str, int]] = Field(description="Where: 'body', then the field path.")
    msg: str = Field(description="What is wrong, in words.")
    input: Any = Field(default=None, description="The offending input, shortened.")
    ctx: Optional[Dict[str, Any]] = Field(default=None, description="Error context.")


class ValidationErrorResponse(BaseModel):
    """422: the problems found in the request (the first 100; ``more_errors`` counts the rest)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": [
                        {
                            "type": "literal_error",
                            "loc": ["body", "product_code"],
                            "msg": "Input should be 'SKU001' or 'SKU002'",
                            "input": "SKU999",
                            "ctx": {"expected": "'SKU001' or 'SKU002'"},
                        }
                    ]
                }
            ]
        }
    )

    detail: List[ValidationIssue]
    more_errors: Optional[int] = Field(
        default=None,
        ge=1,
        description="Present only when more problems were found than are listed in detail: "
        "how many more.",
    )


class ErrorMessage(BaseModel):
    """A single error message (401, 404, 405, 413, 415)."""

    detail: str


class RefreshStatus(BaseModel):
    """The model refresh loop: whether it runs and what it last did."""

    enabled: bool
    interval_seconds: float
    last_checked_at: Optional[str] = None
    last_outcome: Optional[str] = None
    last_error: Optional[str] = None


class HealthResponse(BaseModel):
    """The service is up; which model it serves and since when."""

    model_config = ConfigDict(protected_namespaces=())

    status: str = Field(description="Always 'ok' when the service answers.")
    model_version: str
    model_trained_at: Optional[str] = Field(description="When the model was created.")
    model_published_at: str
    model_age_seconds: Optional[float] = Field(description="Seconds since the model was created.")
    model_loaded_at: str
    product_codes: int = Field(description="How many product codes the model knows.")
    uptime_seconds: float
    refresh: RefreshStatus


class OrdersPlacedRange(BaseModel):
    """The smallest and largest orders_placed a product code was trained on."""

    min: float
    max: float


class CoverageP90(BaseModel):
    """Held-out coverage of the p90 bound: the share of held-out orders dispatched within it."""

    overall: Optional[float] = Field(
        default=None, description="Over all held-out rows; null when training did not record it."
    )


class BasisSummary(BaseModel):
    """The parts resting on one basis and their held-out accuracy, as training recorded it."""

    parts: Optional[int] = Field(
        default=None, description="How many of the model's parts rest on this basis.")
    mae: Optional[float] = Field(default=None, description="Held-out MAE (hours).")
    coverage_p90: Optional[float] = Field(default=None, description="Held-out p90 coverage.")
    rows: Optional[int] = Field(default=None, description="Held-out rows scored.")


class ModelInfo(BaseModel):
    """The loaded model's facts: counts and summaries, never a list per product code.

    The product codes, with each one's range, basis and coverage, are paged at
    ``GET /api/v0.1/model/product_codes``.
    """

    model_config = ConfigDict(protected_namespaces=())

    model_version: str
    trained_at: Optional[str]
    published_at: str
    format_version: int = Field(description="The artefact's format version (1, 2 or 3).")
    tranche: Any = Field(description="The training tranche (key, checksum, rows).")
    metrics: Any = Field(description="Held-out metrics, as recorded by training (summarised: "
                                     "a container of more than 64 entries is replaced by a "
                                     "note of its size).")
    product_codes: int = Field(description="How many product codes the model knows.")
    product_codes_path: str = Field(description="The paged route listing them.")
    heldout_mae: Optional[float] = Field(
        None, description="Overall held-out MAE (hours) recorded by training, if any.")
    previous_model_version: Optional[str] = Field(
        None, description="The model this one replaced, if the metadata records it.")
    previous_realised_mae: Optional[float] = Field(
        None, description="That model's MAE (hours) on this model's training tranche, which it "
                          "never saw: its realised accuracy (null when unknown).")
    metadata: Dict[str, Any] = Field(
        description="The metadata document, summarised as metrics is.")
    orders_placed_range: Optional[OrdersPlacedRange] = Field(
        default=None,
        description="The smallest and largest orders_placed any product code was trained on "
        "(each code's own range is in the paged list); null for a model that does not record "
        "ranges.",
    )
    coverage_p90: CoverageP90 = Field(
        default_factory=CoverageP90,
        description="Held-out coverage of the p90 bound, as recorded by training.",
    )
    bases: Dict[str, BasisSummary] = Field(
        description="Per basis ('product', 'pooled'): how many parts rest on it and their "
        "held-out accuracy (null where the model or its metadata does not record it).")
    catalogue_curve: bool = Field(
        description="Whether the model has a catalogue curve for parts it has never seen.")
    unknown_products: UnknownProducts = Field(
        description="How the service answers parts the model does not know: 'reject' (422) "
        "or 'catalogue' (from the catalogue curve, when the model has one).")


class ProductCodeEntry(BaseModel):
    """One product code the served model knows, with what it was trained on."""

    product_code: str
    orders_placed_range: Optional[OrdersPlacedRange] = Field(
        description="The orders_placed range it was trained on (null if not recorded).")
    basis: Optional[Literal["product", "pooled"]] = Field(
        description="What its curve rests on (null for a model without bases).")
    coverage_p90: Optional[float] = Field(
        description="Its held-out p90 coverage, if training recorded it.")


class ProductCodePage(BaseModel):
    """A page of the served model's product codes, in sorted order."""

    model_config = ConfigDict(protected_namespaces=())

    model_version: str
    total: int = Field(description="How many product codes the model knows.")
    offset: int
    limit: int
    next_offset: Optional[int] = Field(description="The offset of the next page; null at the end.")
    product_codes: List[ProductCodeEntry]


class RequestValidators:
    """pydantic-core validators for requests: single rows and batches (any model)."""

    def __init__(self, max_batch_rows: int) -> None:
        row = _row_type()
        self.single: TypeAdapter[Dict[str, Any]] = TypeAdapter(row)
        self.batch: TypeAdapter[List[Dict[str, Any]]] = TypeAdapter(
            Annotated[List[row], Field(max_length=max_batch_rows)]  # type: ignore[valid-type]
        )


def _row_type() -> Any:
    """A dict type validated as PredictionRequest is."""

    def schema(_source: Any, handler: Any) -> CoreSchema:
        """A typed dict: product_code and orders_placed as PredictionRequest's."""
        code = handler.generate_schema(ProductCodeText)
        orders = handler.generate_schema(OrdersPlaced)
        return core_schema.typed_dict_schema(
            {
                "product_code": core_schema.typed_dict_field(code),
                "orders_placed": core_schema.typed_dict_field(orders),
            }
        )

    return Annotated[Dict[str, Any], GetPydanticSchema(schema)]


@lru_cache(maxsize=8)
def build_validators(max_batch_rows: int) -> RequestValidators:
    """The validators for batches of at most ``max_batch_rows`` (built once, shared)."""
    return RequestValidators(max_batch_rows)
