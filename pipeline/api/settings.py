"""The service's settings: defaults, overridden by TTD_* environment variables or arguments."""
from __future__ import annotations

from typing import Optional, Tuple

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from typing_extensions import Literal, get_args

DEFAULT_MAX_BATCH_ROWS = 10_000
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024

UnknownProducts = Literal["reject", "catalogue"]
"""How a part the model does not know is answered: refused, or from the catalogue curve."""
UNKNOWN_PRODUCTS: Tuple[UnknownProducts, ...] = get_args(UnknownProducts)
UNKNOWN_REJECT, UNKNOWN_CATALOGUE = UNKNOWN_PRODUCTS


class ServeSettings(BaseSettings):
    """How the API behaves; every field can be set as TTD_<FIELD> in the environment.

    ``api_key`` (TTD_API_KEY, from a Kubernetes secret) is never logged or echoed.
    ``request_log`` is where the one JSON line per request goes: ``-`` for stdout,
    an empty string for nowhere, anything else a file path appended to.
    ``unknown_products`` says how a part the model does not know is answered:
    ``reject`` (a 422; in a batch, null and listed) or ``catalogue`` (from the model's
    catalogue curve, basis ``catalogue``; a model without one keeps rejecting).
    """

    model_config = SettingsConfigDict(env_prefix="TTD_", extra="ignore")

    api_key: Optional[SecretStr] = Field(
        default=None, description="key the prediction and model routes require; none: open"
    )
    api_key_header: str = Field(
        default="X-API-Key", min_length=1, description="request header that carries the key"
    )
    max_batch_rows: int = Field(
        default=DEFAULT_MAX_BATCH_ROWS, ge=1, description="most rows in one batch request"
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES, ge=1024, description="largest request body accepted"
    )
    model_refresh_seconds: float = Field(
        default=0.0, ge=0.0, allow_inf_nan=False, description="poll for a new model (0: off)"
    )
    drain_seconds: float = Field(
        default=2.0, ge=0.0, allow_inf_nan=False, description="keep serving after SIGTERM"
    )
    request_log: str = Field(
        default="-", description="request log: '-' stdout, '' off, else a file path"
    )
    root_path: str = Field(
        default="",
        pattern=r"^(/[A-Za-z0-9._~-]+)*$",
        description="path prefix a proxy strips (e.g. the ingress's /<namespace>/<service>)",
    )
    fast_path: bool = Field(
        default=True, description="serve predictions through the lean ASGI layer"
    )
    unknown_products: UnknownProducts = Field(
        default=UNKNOWN_REJECT,
        description="parts the model does not know: 'reject' (422) or 'catalogue' "
        "(answered from the catalogue curve)",
    )
