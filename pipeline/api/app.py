"""The application factory: FastAPI for docs, schema and operations, a lean layer for predictions.

``create_app(settings, store, initial)`` returns an ASGI app for uvicorn. FastAPI
declares every route (so ``/openapi.json`` and ``/docs`` are accurate, and the same
whatever model is served) and serves ``/health``, ``/api/v0.1/model``, the paged
``/api/v0.1/model/product_codes``, ``/metrics`` and the docs (``/docs`` and ``/redoc``, their
JavaScript and CSS served from the pinned ``fastapi-offline`` package, never a CDN);
the two prediction routes are
answered by :class:`~pipeline.api.fastpath.PredictionLayer` in front of it, with
the same schemas and error shape. With ``model_refresh_seconds > 0`` the lifespan
polls the store and swaps in newly published models off the request path: a new model
is parsed in a child process and its index built in a thread, then swapped in with one
reference assignment.
"""

import asyncio
import gc
import logging
import math
import time
from contextlib import asynccontextmanager, suppress
from importlib.resources import files
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Coroutine,
    Dict,
    List,
    Optional,
    Type,
    Union,
)

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from typing_extensions import Annotated

from pipeline.api.errors import message_body, summary, validation_body
from pipeline.api.fastpath import LOG_SCOPE_KEY, Answer, PredictionLayer
from pipeline.api.predictions import Predictions
from pipeline.api.routes import (
    API_VERSION,
    BATCH_PATH,
    DOCS_ASSETS_PATH,
    DOCS_PATH,
    HEALTH_PATH,
    METRICS_PATH,
    MODEL_PATH,
    PRODUCT_CODES_PATH,
    REDOC_PATH,
    SINGLE_PATH,
)
from pipeline.api.schemas import (
    BasisSummary,
    BatchPredictionResponse,
    CoverageP90,
    ErrorMessage,
    HealthResponse,
    ModelInfo,
    OrdersPlacedRange,
    PredictionRequest,
    PredictionResponse,
    ProductCodeEntry,
    ProductCodePage,
    ValidationErrorResponse,
)
from pipeline.api.serving import (
    RefreshOutcome,
    ServingModel,
    build_serving_model,
    model_age_seconds,
    refresh_step,
)
from pipeline.api.settings import ServeSettings
from pipeline.api.state import ServiceState, accuracy_facts, iso_utc
from pipeline.artefacts import LoadedModel
from pipeline.metadata import BasisParts, Scores
from pipeline.model_format import BASES
from pipeline.store import Store

PAGE_LIMIT = 1000
PAGE_OFFSET_MAX = 1_000_000_000
DOCS_ASSETS = files("fastapi_offline") / "static"
DOCS_ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
TITLE = "time-to-dispatch"
DESCRIPTION = (
    "Estimated hours to dispatch an order, from the product code and the orders placed. "
    f"`GET {PRODUCT_CODES_PATH}` lists, page by page, the codes the served model "
    "knows (they change when a new model is swapped in; this schema does not). Each "
    "estimate comes with `p90_hours_to_dispatch`, the hours within which 90% of such "
    "orders are dispatched, `extrapolated`, true when `orders_placed` is outside the range "
    "the product code was trained on (both null for a model of artefact format 1), and "
    "`basis`, what the estimate rests on. An unknown product code is a 422 on the single "
    "endpoint; in a batch its row gets nulls and is listed in `unknown_product_codes` "
    "while the other rows are answered. Send bodies as JSON "
    "(`Content-Type: application/json` or none; other types are a 415). Send "
    "`X-Request-ID` to have it echoed and logged; otherwise one is generated."
)
TRAINING_KEYS = ("tranche", "tranche_key", "tranche_sha256", "tranche_rows")

log = logging.getLogger("pipeline.api")


class StrictJSONResponse(JSONResponse):
    """JSON rendered by orjson: strict JSON (a non-finite float becomes null), never NaN."""

    def render(self, content: Any) -> bytes:
        """The body bytes."""
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def create_app(
    settings: ServeSettings, store: Store, initial: Union[LoadedModel, ServingModel]
) -> PredictionLayer:
    """The ASGI app serving ``initial`` (already verified) and, if enabled, its successors."""
    if isinstance(initial, LoadedModel):
        initial = build_serving_model(initial, settings.unknown_products)
    state = ServiceState(settings, store, initial)
    predictions = Predictions(settings.max_batch_rows)
    api = _fastapi(state, predictions)
    known = frozenset(getattr(route, "path", "") for route in api.routes) - {""}
    return PredictionLayer(api, state, known, predictions)


def refresh_once(state: ServiceState) -> RefreshOutcome:
    """One refresh check, applied: what the background task does each period (blocking)."""
    result = refresh_step(state.store, state.serving, state.rejected)
    state.apply(result)
    return result


async def refresh_forever(state: ServiceState) -> None:
    """Poll the store every ``model_refresh_seconds``, loading off the event loop.

    A new model is parsed in a child process; this process only reads it, verifies its
    checksum and builds the code index in a thread, in steps short enough never to hold
    the interpreter for long.
    """
    interval = state.settings.model_refresh_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            result = await asyncio.to_thread(
                refresh_step, state.store, state.serving, state.rejected, True
            )
        except Exception:  # noqa: BLE001 - the loop must outlive any one failed check
            log.exception("model refresh check failed; still serving %s", state.serving.version)
            continue
        state.apply(result)


def _lifespan(state: ServiceState) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        """Open the request log and start the refresh task; stop both on shutdown."""
        # Start-up objects (FastAPI, pydantic, the model) live for good: freezing them
        # keeps the collector's full passes, and so the latency tail, short.
        gc.collect()
        gc.freeze()
        state.request_log.open()
        task: Optional["asyncio.Task[None]"] = None
        if state.settings.model_refresh_seconds > 0:
            task = asyncio.create_task(refresh_forever(state))
            log.info("polling for new models every %g s", state.settings.model_refresh_seconds)
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            state.request_log.close()
            gc.unfreeze()

    return lifespan


def _key_declared(settings: ServeSettings) -> List[Any]:
    """The API key as the schema declares it; the layer in front checks it (policy.py)."""
    if settings.api_key is None:
        return []
    return [Depends(APIKeyHeader(name=settings.api_key_header, auto_error=False))]


def _key_responses(settings: ServeSettings) -> Dict[Any, Any]:
    if settings.api_key is None:
        return {}
    return {401: {"model": ErrorMessage, "description": "Missing or invalid API key."}}


def _prediction_responses(settings: ServeSettings) -> Dict[Any, Any]:
    request_id = {
        "X-Request-ID": {"description": "The request id (the client's or a new one).",
                         "schema": {"type": "string"}}
    }
    responses: Dict[Any, Any] = {
        200: {"headers": request_id},
        413: {"model": ErrorMessage, "description": "The body exceeds the size limit."},
        415: {
            "model": ErrorMessage,
            "description": "The body's Content-Type is not JSON: send `Content-Type: "
            "application/json` (an `application/*+json` type or no Content-Type also work).",
        },
        422: {
            "model": ValidationErrorResponse,
            "description": "Invalid input; each issue names its field in `loc`. At most 100 "
            "issues are listed; `more_errors` says how many more there were.",
        },
    }
    responses.update(_key_responses(settings))
    return responses


def _answering_route(state: ServiceState, answers: Dict[str, Answer]) -> Type[APIRoute]:
    """A prediction route with the fast path off: declared to FastAPI as usual (schema, docs),
    its body read by the one parser of the prediction routes rather than by FastAPI's own."""

    class AnsweringRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            """The handler: the raw body, already checked by the policy, to the route's answer."""
            answer = answers[self.path]

            async def handler(request: Request) -> Response:
                status, payload, found, rows, unknown = answer(state.serving, await request.body())
                fields = request.scope.setdefault(LOG_SCOPE_KEY, {})
                fields.update(found, rows=rows, unknown=unknown)
                return Response(payload, status, media_type="application/json")

            return handler

    return AnsweringRoute


def _fastapi(state: ServiceState, predictions: Predictions) -> FastAPI:
    settings = state.settings
    app = FastAPI(
        title=TITLE,
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=_lifespan(state),
        default_response_class=StrictJSONResponse,
        root_path=settings.root_path,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.service = state
    keyed = _key_declared(settings)
    responses = _prediction_responses(settings)
    answering = _answering_route(state, {SINGLE_PATH: predictions.single,
                                         BATCH_PATH: predictions.batch})
    request_id = Header(alias="X-Request-ID", description="Echoed and logged.")
    batch_body = Annotated[
        List[PredictionRequest],
        Field(max_length=settings.max_batch_rows, description="Rows to estimate, in order."),
    ]

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        """422 in the same shape as the fast path's, noted for the request log."""
        errors = exc.errors()
        request.scope.setdefault(LOG_SCOPE_KEY, {})["errors"] = summary(errors, prefix=())
        return Response(validation_body(errors, prefix=()), 422, media_type="application/json")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Every HTTP error as JSON; a 404 for a trailing slash names the route meant."""
        detail = str(exc.detail)
        if exc.status_code == 404:
            detail = _not_found(request, known_paths(app))
        return Response(
            message_body(detail), exc.status_code, headers=exc.headers,
            media_type="application/json",
        )

    # The two prediction routes as the schema declares them; their requests are answered
    # by the layer in front, or (fast path off) by AnsweringRoute, never by these bodies.
    async def time_to_dispatch(
        _body: PredictionRequest,
        _request_id: Annotated[Optional[str], request_id] = None,
    ) -> Response:
        """The estimated hours to dispatch for one product code and order count, the p90
        bound (90% of such orders are dispatched within it) and whether the order count is
        outside the code's trained range (extrapolated)."""
        raise NotImplementedError

    async def time_to_dispatch_batch(
        _rows: batch_body,
        _request_id: Annotated[Optional[str], request_id] = None,
    ) -> Response:
        """Estimates, p90 bounds and extrapolated flags for a JSON array of requests.

        Parallel arrays in request order, row for row equal to the single endpoint's
        answers. An empty array is valid and gets empty arrays.
        """
        raise NotImplementedError

    for path, endpoint, model, summary_text in (
        (SINGLE_PATH, time_to_dispatch, PredictionResponse,
         "Estimate hours to dispatch for one product"),
        (BATCH_PATH, time_to_dispatch_batch, BatchPredictionResponse,
         f"Estimate hours to dispatch for up to {settings.max_batch_rows} rows"),
    ):
        app.router.add_api_route(
            path, endpoint, methods=["POST"], response_model=model, responses=responses,
            dependencies=keyed, tags=["predictions"], summary=summary_text,
            route_class_override=answering,
        )

    @app.get(HEALTH_PATH, response_model=HealthResponse, tags=["operations"])
    async def health() -> HealthResponse:
        """Liveness, the served model (version, creation, age) and the refresh loop's state."""
        serving = state.serving
        now = time.time()
        return HealthResponse(
            status="ok",
            model_version=serving.version,
            model_trained_at=serving.trained_at.isoformat() if serving.trained_at else None,
            model_published_at=serving.pointer.published_at,
            model_age_seconds=model_age_seconds(serving, now),
            model_loaded_at=iso_utc(serving.loaded_at),
            product_codes=len(serving.product_codes),
            uptime_seconds=round(time.monotonic() - state.started_monotonic, 3),
            refresh=state.refresh,
        )

    @app.get(MODEL_PATH, response_model=ModelInfo, responses=_key_responses(settings),
             dependencies=keyed, tags=["operations"])
    async def model_info() -> ModelInfo:
        """The served model's facts: version, training, metrics, counts per basis (bounded)."""
        serving = state.serving
        summary = serving.summary
        lookup = serving.lookup
        tranche = summary.get("tranche")
        if tranche is None:
            tranche = {key: summary[key] for key in TRAINING_KEYS if key in summary} or None
        held_mae, previous_version, previous_mae = accuracy_facts(serving.metadata)
        trained = lookup.orders_range
        return ModelInfo(
            model_version=serving.version,
            trained_at=serving.trained_at.isoformat() if serving.trained_at else None,
            published_at=serving.pointer.published_at,
            format_version=lookup.format_version,
            tranche=tranche,
            metrics=summary.get("metrics"),
            product_codes=len(lookup),
            product_codes_path=PRODUCT_CODES_PATH,
            heldout_mae=held_mae,
            previous_model_version=previous_version,
            previous_realised_mae=previous_mae,
            metadata=summary,
            orders_placed_range=None if trained is None else OrdersPlacedRange(
                min=trained[0], max=trained[1]
            ),
            coverage_p90=CoverageP90(overall=serving.metadata.metrics.held_out.coverage),
            bases=basis_summaries(serving),
            catalogue_curve=lookup.has_catalogue,
            unknown_products=settings.unknown_products,
        )

    @app.get(PRODUCT_CODES_PATH, response_model=ProductCodePage,
             responses=_key_responses(settings), dependencies=keyed, tags=["operations"])
    async def product_codes(
        offset: Annotated[int, Query(
            ge=0, le=PAGE_OFFSET_MAX, description="How many codes to skip."
        )] = 0,
        limit: Annotated[
            int, Query(ge=1, le=PAGE_LIMIT, description=f"At most {PAGE_LIMIT} a page.")
        ] = PAGE_LIMIT,
    ) -> ProductCodePage:
        """The served model's product codes in sorted order, with each one's trained range,
        basis and held-out p90 coverage, a page at a time (follow ``next_offset``)."""
        return product_code_page(state.serving, offset, limit)

    @app.get(METRICS_PATH, response_class=PlainTextResponse, tags=["operations"])
    async def metrics() -> Response:
        """Prometheus metrics: requests, latency, predictions, the model and its age."""
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    _docs(app)
    return app


def _docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc (ReDoc), their assets served by the app (no CDN, no fonts).

    The assets are a route, not a mount: behind ``--root-path`` a mount misses the
    paths a proxy has already stripped of the prefix.
    """

    @app.get(DOCS_ASSETS_PATH + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        """One of Swagger UI's or ReDoc's files, from the pinned fastapi-offline package."""
        media_type = DOCS_ASSET_TYPES.get(name)
        if media_type is None:
            raise HTTPException(status_code=404)
        return FileResponse(
            str(DOCS_ASSETS / name), media_type=media_type,
            headers={"Cache-Control": "public, max-age=86400"},
        )

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        """Swagger UI on the app's schema."""
        prefix = root(request)
        return get_swagger_ui_html(
            openapi_url=f"{prefix}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{prefix}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{prefix}{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{prefix}{DOCS_ASSETS_PATH}/favicon.png",
        )

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        """ReDoc on the app's schema, with the browser's own fonts."""
        prefix = root(request)
        return get_redoc_html(
            openapi_url=f"{prefix}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{prefix}{DOCS_ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{prefix}{DOCS_ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )


def known_paths(app: FastAPI) -> List[str]:
    """The paths of the app's routes (mounts included)."""
    return [path for path in (getattr(route, "path", "") for route in app.routes) if path]


def _not_found(request: Request, known: List[str]) -> str:
    path: str = request.scope["path"]
    prefix = str(request.scope.get("root_path", "")).rstrip("/")
    if prefix and path.startswith(prefix + "/"):
        path = path[len(prefix):]
    meant = path.rstrip("/")
    if path != meant and meant in known:
        return f"Not Found: {prefix}{path} ends in a slash; the route is {prefix}{meant}"
    return "Not Found"


def basis_summaries(serving: ServingModel) -> Dict[str, BasisSummary]:
    """Per basis: its parts (the artefact's count, else the metadata's ``bases.<basis>.parts``)
    and held-out accuracy (``metrics.held_out.by_basis.<basis>``), null where not recorded."""
    metadata = serving.metadata
    bases = serving.lookup.bases
    counts = None if bases is None else np.bincount(bases, minlength=len(BASES)).tolist()
    summaries: Dict[str, BasisSummary] = {}
    for i, basis in enumerate(BASES):
        recorded = metadata.bases.get(basis, BasisParts())
        scores = metadata.metrics.held_out.by_basis.get(basis, Scores())
        summaries[basis] = BasisSummary(
            parts=counts[i] if counts is not None else recorded.parts, mae=scores.mae,
            coverage_p90=scores.coverage_p90, rows=scores.rows,
        )
    return summaries


def product_code_page(serving: ServingModel, offset: int, limit: int) -> ProductCodePage:
    """One page of the served model's product codes with their facts."""
    lookup = serving.lookup
    end = min(offset + limit, len(lookup))
    entries = []
    for i in range(offset, end):
        low_high = None if lookup.ranges is None else lookup.ranges[i].tolist()
        coverage = float(lookup.coverage[i])
        entries.append(ProductCodeEntry(
            product_code=lookup.codes[i],
            orders_placed_range=None if low_high is None else OrdersPlacedRange(
                min=low_high[0], max=low_high[1]
            ),
            basis=lookup.basis(i),  # type: ignore[arg-type]
            coverage_p90=None if math.isnan(coverage) else coverage,
        ))
    return ProductCodePage(
        model_version=serving.version, total=len(lookup), offset=offset, limit=limit,
        next_offset=end if end < len(lookup) else None, product_codes=entries,
    )
