"""Strict edges of the API: content types (415), long 422 lists, trailing slashes, HEAD, 404s."""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional

import pytest
from starlette.testclient import TestClient

from pipeline.api.errors import MAX_LISTED_ERRORS
from pipeline.store import Store
from tests.api_support import BATCH, SINGLE, make_app, new_store, rows

ROW = b'{"product_code": "SKU001", "orders_placed": 3}'
NOT_JSON = [
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "text/xml",
    "text/json",
    "application/jsonx",
    "application/octet-stream",
]
JSON_TYPES = [
    None,
    "",
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/vnd.api+json",
    "application/merge-patch+json; charset=utf-8",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A local store with one published model."""
    return new_store(tmp_path_factory.mktemp("edges"))


@pytest.fixture(scope="module", params=[True, False], ids=["fast-path", "fastapi"])
def client(request: pytest.FixtureRequest, store: Store) -> Iterator[TestClient]:
    """A client of the app, predictions through the fast path or through FastAPI."""
    with TestClient(make_app(store, fast_path=request.param)) as test_client:
        yield test_client


def post(client: TestClient, path: str, body: bytes, content_type: Optional[str]) -> Any:
    """POST raw bytes with the given Content-Type header (None: no header at all)."""
    headers: Dict[str, str] = {} if content_type is None else {"content-type": content_type}
    return client.post(path, content=body, headers=headers)


@pytest.mark.parametrize("content_type", NOT_JSON)
@pytest.mark.parametrize("path", [SINGLE, BATCH])
def test_a_body_that_is_not_declared_json_is_a_415_saying_what_to_send(
    client: TestClient, path: str, content_type: str
) -> None:
    body = ROW if path == SINGLE else b"[" + ROW + b"]"
    response = post(client, path, body, content_type)
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    detail = response.json()["detail"]
    assert "Content-Type: application/json" in detail
    assert content_type.split(";")[0] in detail


@pytest.mark.parametrize("content_type", JSON_TYPES)
@pytest.mark.parametrize("path", [SINGLE, BATCH])
def test_json_types_and_no_content_type_are_accepted(
    client: TestClient, path: str, content_type: Optional[str]
) -> None:
    body = ROW if path == SINGLE else b"[" + ROW + b"]"
    response = post(client, path, body, content_type)
    assert response.status_code == 200, response.text


def test_a_missing_key_is_a_401_before_the_content_type_is_judged(store: Store) -> None:
    for fast_path in (True, False):
        with TestClient(make_app(store, api_key="k", fast_path=fast_path)) as client:
            assert post(client, SINGLE, ROW, "text/plain").status_code == 401
            keyed = client.post(SINGLE, content=ROW,
                                headers={"content-type": "text/plain", "X-API-Key": "k"})
            assert keyed.status_code == 415


def test_a_hostile_content_type_is_not_echoed_in_full(client: TestClient) -> None:
    response = post(client, SINGLE, ROW, "text/" + "x" * 5000)
    assert response.status_code == 415
    assert len(response.content) < 400


@pytest.mark.parametrize(
    "bad_rows, listed, more",
    [(MAX_LISTED_ERRORS, MAX_LISTED_ERRORS, None), (MAX_LISTED_ERRORS + 1, MAX_LISTED_ERRORS, 1),
     (2500, MAX_LISTED_ERRORS, 2400), (3, 3, None)],
)
def test_a_batch_422_lists_at_most_100_errors_and_counts_the_rest(
    client: TestClient, bad_rows: int, listed: int, more: Optional[int]
) -> None:
    batch = rows([("SKU001", 1)] * 5 + [("SKU001", -1)] * bad_rows)
    response = client.post(BATCH, json=batch)
    assert response.status_code == 422
    body = response.json()
    assert len(body["detail"]) == listed
    assert body["detail"][0]["loc"] == ["body", 5, "orders_placed"]
    assert body.get("more_errors") == more


def test_a_batch_over_the_row_cap_is_one_error(store: Store) -> None:
    with TestClient(make_app(store, max_batch_rows=50)) as client:
        response = client.post(BATCH, json=rows([("NOPE", -1)] * 500))
    assert response.status_code == 422
    assert [issue["type"] for issue in response.json()["detail"]] == ["too_long"]


@pytest.mark.parametrize(
    "method, path, route",
    [("GET", "/health/", "/health"), ("GET", "/api/v0.1/model/", "/api/v0.1/model"),
     ("POST", SINGLE + "/", SINGLE), ("POST", BATCH + "/", BATCH), ("GET", "/docs/", "/docs"),
     ("GET", "/openapi.json/", "/openapi.json"), ("GET", "/metrics//", "/metrics")],
)
def test_a_trailing_slash_is_a_json_404_naming_the_route_not_a_307(
    client: TestClient, method: str, path: str, route: str
) -> None:
    response = client.request(method, path, content=ROW, follow_redirects=False)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "location" not in response.headers
    assert response.json()["detail"].endswith(f"the route is {route}")


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"])
@pytest.mark.parametrize("path", ["/", "/nowhere", "/api/v0.1", "/api/v0.2/time_to_dispatch"])
def test_unknown_paths_answer_json_404(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, follow_redirects=False)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    if method != "HEAD":
        assert response.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("path", ["/health", "/api/v0.1/model", "/openapi.json", "/docs",
                                  "/redoc", "/metrics"])
def test_head_is_answered_as_get_without_the_body(client: TestClient, path: str) -> None:
    head = client.head(path)
    get = client.get(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["x-request-id"]


@pytest.mark.parametrize("path", [SINGLE, BATCH])
@pytest.mark.parametrize("method", ["HEAD", "GET", "PUT"])
def test_other_methods_on_prediction_routes_are_a_json_405(
    client: TestClient, path: str, method: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    assert response.headers["allow"] == "POST"
