"""The published OpenAPI document: paths, a schema independent of the model, error responses."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest
from starlette.testclient import TestClient

from pipeline.api.app import refresh_once
from pipeline.store import Store
from tests.api_support import BATCH, CODES, SINGLE, make_app, new_store, publish_fitted

NEW_CODES = ("SKU010", "SKU011", "SKU012")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A local store with one published model."""
    return new_store(tmp_path_factory.mktemp("openapi"))


def openapi(store: Store, **settings: Any) -> Dict[str, Any]:
    """The document an app over the store publishes."""
    with TestClient(make_app(store, **settings)) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    document: Dict[str, Any] = response.json()
    return document


def test_every_route_is_described(store: Store) -> None:
    paths = openapi(store)["paths"]
    assert set(paths) == {
        SINGLE, BATCH, "/health", "/api/v0.1/model", "/api/v0.1/model/product_codes", "/metrics"
    }
    assert set(paths[SINGLE]) == set(paths[BATCH]) == {"post"}
    assert paths["/metrics"]["get"]["responses"]["200"]["content"].keys() == {"text/plain"}


def test_the_routes_under_the_prefix_are_the_ones_the_service_names(store: Store) -> None:
    from pipeline.api.routes import (
        API_PREFIX,
        BATCH_PATH,
        MODEL_PATH,
        PRODUCT_CODES_PATH,
        SINGLE_PATH,
    )

    paths = openapi(store)["paths"]
    assert API_PREFIX == "/api/v0.1"
    assert {p for p in paths if p.startswith(API_PREFIX + "/")} == {
        SINGLE_PATH, BATCH_PATH, MODEL_PATH, PRODUCT_CODES_PATH}
    assert (SINGLE_PATH, BATCH_PATH) == (SINGLE, BATCH)


def test_the_unknown_products_modes_are_one_type(store: Store) -> None:
    from pipeline.api.settings import UNKNOWN_PRODUCTS
    from pipeline.serve_model import build_parser

    assert UNKNOWN_PRODUCTS == ("reject", "catalogue")
    [flag] = [a for a in build_parser()._actions if a.dest == "unknown_products"]
    assert tuple(flag.choices or ()) == UNKNOWN_PRODUCTS
    schema = openapi(store)["components"]["schemas"]["ModelInfo"]["properties"]
    assert tuple(schema["unknown_products"]["enum"]) == UNKNOWN_PRODUCTS


def test_request_schema_gives_a_code_as_a_bounded_string_not_an_enum(store: Store) -> None:
    document = openapi(store)
    request = document["components"]["schemas"]["PredictionRequest"]
    assert request["required"] == ["product_code", "orders_placed"]
    code = request["properties"]["product_code"]
    assert "enum" not in code
    assert (code["type"], code["maxLength"], code["examples"]) == ("string", 256, ["SKU001"])
    orders = request["properties"]["orders_placed"]
    assert (orders["type"], orders["minimum"], orders["maximum"]) == ("number", 0, 1e9)
    assert request["examples"][0]["product_code"] == "SKU001"
    single = document["paths"][SINGLE]["post"]["requestBody"]["content"]["application/json"]
    assert single["schema"] == {"$ref": "#/components/schemas/PredictionRequest"}


def test_batch_schema_is_an_array_capped_at_max_batch_rows(store: Store) -> None:
    body = openapi(store, max_batch_rows=250)["paths"][BATCH]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema["type"] == "array"
    assert schema["maxItems"] == 250
    assert schema["items"] == {"$ref": "#/components/schemas/PredictionRequest"}


@pytest.mark.parametrize("path", [SINGLE, BATCH])
def test_error_responses_are_documented(store: Store, path: str) -> None:
    document = openapi(store)
    responses = document["paths"][path]["post"]["responses"]
    assert set(responses) == {"200", "413", "415", "422"}
    invalid = responses["422"]["content"]["application/json"]["schema"]
    assert invalid == {"$ref": "#/components/schemas/ValidationErrorResponse"}
    issue = document["components"]["schemas"]["ValidationIssue"]
    assert {"type", "loc", "msg"} <= set(issue["required"])
    assert "X-Request-ID" in responses["200"]["headers"]


def test_with_a_key_401_and_the_scheme_are_documented(store: Store) -> None:
    document = openapi(store, api_key="k", api_key_header="X-Key")
    for path in (SINGLE, BATCH):
        operation = document["paths"][path]["post"]
        assert "401" in operation["responses"]
        assert operation["security"] == [{"APIKeyHeader": []}]
    scheme = document["components"]["securitySchemes"]["APIKeyHeader"]
    assert scheme == {"type": "apiKey", "in": "header", "name": "X-Key"}
    assert "security" not in document["paths"]["/health"]["get"]


def test_document_is_the_same_whatever_model_is_served(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    app = make_app(store)
    with TestClient(app) as client:
        before = client.get("/openapi.json").content
        new_version = publish_fitted(store, seed=5, codes=NEW_CODES)
        assert refresh_once(app.state).outcome == "swapped"
        assert client.get("/health").json()["model_version"] == new_version
        after = client.get("/openapi.json").content
    assert after == before
    assert b"SKU010" not in after


def test_docs_behind_a_path_prefix_fetch_the_schema_under_it(store: Store) -> None:
    prefix = "/time-to-dispatch/serve-model"
    with TestClient(make_app(store, root_path=prefix)) as client:
        docs = client.get("/docs")
        document = client.get("/openapi.json")
        predicted = client.post(SINGLE, json={"product_code": CODES[0], "orders_placed": 3})
    assert docs.status_code == 200
    assert f"{prefix}/openapi.json" in docs.text
    assert document.status_code == 200 and SINGLE in document.json()["paths"]
    assert predicted.status_code == 200
