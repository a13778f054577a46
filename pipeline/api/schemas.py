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


class PredictionResponse(BaseModel):
    """The estimate for one request and the model that made it."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [{"est_hours_to_dispatch": 3.4, "model_version": EXAMPLE_VERSION}]
        },
    )

    est_hours_to_dispatch: float = Field(ge=0, description="Estimated hours to dispatch.")
    model_version: str = Field(description="The version of the model that answered.")


class BatchPredictionResponse(BaseModel):
    """Estimates for a batch, in request order, and the model that made them."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {"est_hours_to_dispatch": [3.4, 5.1], "model_version": EXAMPLE_VERSION}
            ]
        },
    )

    est_hours_to_dispatch: List[Annotated[float, Field(ge=0)]] = Field(
        description="One estimate per request row, in order."
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
    """422: every problem found in the request."""

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


class ErrorMessage(BaseModel):
    """A single error message (401, 413, 404, 405)."""

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
