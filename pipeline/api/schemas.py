"""Request, response and error schemas, and the per-model validators built from them.

``orders_placed`` is a finite number from 0 to ``ORDERS_PLACED_MAX``. Integers and
non-integral numbers are both accepted (the model's curves are continuous, and an
upstream forecast may send a mean count); booleans, strings, NaN, Infinity and
numbers that overflow a double (``1e999``) are rejected. The upper bound keeps every
estimate finite. ``product_code`` is a string of at most ``PRODUCT_CODE_MAX_LENGTH``
characters that the loaded model knows; the validators built per model by
:func:`build_validators` check that in pydantic-core, and the message of the
``literal_error`` lists the valid codes.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, GetPydanticSchema, TypeAdapter
from pydantic_core import CoreSchema, core_schema
from typing_extensions import Annotated

PRODUCT_CODE_MAX_LENGTH = 256
ORDERS_PLACED_MAX = 1e9
EXAMPLE_CODE = "SKU001"
EXAMPLE_VERSION = "20260102-230000-ab12cd34"

ProductCodeText = Annotated[
    str,
    Field(
        strict=True,
        max_length=PRODUCT_CODE_MAX_LENGTH,
        description="A product code the loaded model knows (the enum lists them).",
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
EXTRAPOLATED_DESCRIPTION = (
    "True when orders_placed lies outside the range this product code was trained on "
    "(GET /api/v0.1/model lists the ranges): the model is guessing. Null when the served "
    "model does not record its ranges (format version 1)."
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
                    "model_version": EXAMPLE_VERSION,
                }
            ]
        },
    )

    est_hours_to_dispatch: float = Field(ge=0, description="Estimated hours to dispatch.")
    p90_hours_to_dispatch: Optional[float] = Field(ge=0, description=P90_DESCRIPTION)
    extrapolated: Optional[bool] = Field(description=EXTRAPOLATED_DESCRIPTION)
    model_version: str = Field(description="The version of the model that answered.")


class BatchPredictionResponse(BaseModel):
    """Estimates for a batch in request order (parallel arrays), and the model that made them.

    An empty batch (``[]``) is valid and gets empty arrays.
    """

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "est_hours_to_dispatch": [3.4, 5.1],
                    "p90_hours_to_dispatch": [4.7, 7.0],
                    "extrapolated": [False, True],
                    "model_version": EXAMPLE_VERSION,
                }
            ]
        },
    )

    est_hours_to_dispatch: List[Annotated[float, Field(ge=0)]] = Field(
        description="One estimate per request row, in order."
    )
    p90_hours_to_dispatch: List[Optional[Annotated[float, Field(ge=0)]]] = Field(
        description="One p90 bound per request row, in order. " + P90_DESCRIPTION
    )
    extrapolated: List[Optional[bool]] = Field(
        description="One flag per request row, in order. " + EXTRAPOLATED_DESCRIPTION
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
    per_product_code: Dict[str, Optional[float]] = Field(
        default_factory=dict, description="Per served product code; null where not recorded."
    )


class ModelInfo(BaseModel):
    """The loaded model's metadata, with the fields an operator looks for first."""

    model_config = ConfigDict(protected_namespaces=())

    model_version: str
    trained_at: Optional[str]
    published_at: str
    tranche: Any = Field(description="The training tranche (key, checksum, rows).")
    metrics: Any = Field(description="Held-out metrics, as recorded by training.")
    product_codes: List[str]
    heldout_mae: Optional[float] = Field(
        None, description="Overall held-out MAE (hours) recorded by training, if any.")
    previous_model_version: Optional[str] = Field(
        None, description="The model this one replaced, if the metadata records it.")
    previous_realised_mae: Optional[float] = Field(
        None, description="That model's MAE (hours) on this model's training tranche, which it "
                          "never saw: its realised accuracy (null when unknown).")
    metadata: Dict[str, Any] = Field(description="The full metadata document.")
    orders_placed_range: Optional[Dict[str, OrdersPlacedRange]] = Field(
        default=None,
        description="Per product code, the orders_placed range it was trained on (beyond it "
        "answers say extrapolated: true); null for a model that does not record it.",
    )
    coverage_p90: CoverageP90 = Field(
        default_factory=CoverageP90,
        description="Held-out coverage of the p90 bound, as recorded by training.",
    )


class RequestValidators:
    """pydantic-core validators for one model's requests: single rows and batches."""

    def __init__(self, product_codes: Sequence[str], max_batch_rows: int) -> None:
        row = _row_type(tuple(product_codes))
        self.single: TypeAdapter[Dict[str, Any]] = TypeAdapter(row)
        self.batch: TypeAdapter[List[Dict[str, Any]]] = TypeAdapter(
            Annotated[List[row], Field(max_length=max_batch_rows)]  # type: ignore[valid-type]
        )


def _row_type(product_codes: Sequence[str]) -> Any:
    """A dict type validated as PredictionRequest is, with product_code limited to the codes."""

    def schema(_source: Any, handler: Any) -> CoreSchema:
        """A typed dict: product_code a known code, orders_placed as PredictionRequest's."""
        text = handler.generate_schema(ProductCodeText)
        code = core_schema.chain_schema([text, core_schema.literal_schema(list(product_codes))])
        orders = handler.generate_schema(OrdersPlaced)
        return core_schema.typed_dict_schema(
            {
                "product_code": core_schema.typed_dict_field(code),
                "orders_placed": core_schema.typed_dict_field(orders),
            }
        )

    return Annotated[Dict[str, Any], GetPydanticSchema(schema)]


def build_validators(product_codes: Sequence[str], max_batch_rows: int) -> RequestValidators:
    """The validators for a model that knows ``product_codes``."""
    return RequestValidators(product_codes, max_batch_rows)
