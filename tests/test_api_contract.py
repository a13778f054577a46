"""The prediction API's contract through the app: answers, every invalid input, limits, keys."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from starlette.testclient import TestClient

from pipeline.artefacts import load_latest
from pipeline.model_format import Curve, DispatchModel
from pipeline.store import Store
from tests.api_support import (
    BATCH,
    CODES,
    SINGLE,
    log_lines,
    make_app,
    new_store,
    publish_raw,
    rows,
)
from tests.oracles import answers as model_answers

BAD_SINGLE: List[Tuple[str, bytes, List[Any], str]] = [
    ("missing code", b'{"orders_placed": 3}', ["body", "product_code"], "missing"),
    ("missing orders", b'{"product_code": "SKU001"}', ["body", "orders_placed"], "missing"),
    ("unknown code", b'{"product_code": "SKU999", "orders_placed": 3}',
     ["body", "product_code"], "literal_error"),
    ("negative", b'{"product_code": "SKU001", "orders_placed": -1}',
     ["body", "orders_placed"], "greater_than_equal"),
    ("tiny negative", b'{"product_code": "SKU001", "orders_placed": -1e-300}',
     ["body", "orders_placed"], "greater_than_equal"),
    ("above the bound", b'{"product_code": "SKU001", "orders_placed": 1000000001}',
     ["body", "orders_placed"], "less_than_equal"),
    ("numeric string", b'{"product_code": "SKU001", "orders_placed": "5"}',
     ["body", "orders_placed"], "float_type"),
    ("boolean", b'{"product_code": "SKU001", "orders_placed": true}',
     ["body", "orders_placed"], "float_type"),
    ("null", b'{"product_code": "SKU001", "orders_placed": null}',
     ["body", "orders_placed"], "float_type"),
    ("NaN", b'{"product_code": "SKU001", "orders_placed": NaN}',
     ["body", "orders_placed"], "finite_number"),
    ("Infinity", b'{"product_code": "SKU001", "orders_placed": Infinity}',
     ["body", "orders_placed"], "finite_number"),
    ("-Infinity", b'{"product_code": "SKU001", "orders_placed": -Infinity}',
     ["body", "orders_placed"], "finite_number"),
    ("1e999", b'{"product_code": "SKU001", "orders_placed": 1e999}',
     ["body", "orders_placed"], "finite_number"),
    ("huge integer", b'{"product_code": "SKU001", "orders_placed": 1' + b"0" * 400 + b"}",
     ["body", "orders_placed"], "finite_number"),
    ("numeric code", b'{"product_code": 1, "orders_placed": 3}',
     ["body", "product_code"], "string_type"),
    ("array code", b'{"product_code": ["SKU001"], "orders_placed": 3}',
     ["body", "product_code"], "string_type"),
    ("long code", b'{"product_code": "' + b"S" * 100_000 + b'", "orders_placed": 3}',
     ["body", "product_code"], "string_too_long"),
    ("array body", b'[{"product_code": "SKU001", "orders_placed": 3}]', ["body"], "dict_type"),
    ("string body", b'"SKU001"', ["body"], "dict_type"),
    ("null body", b"null", ["body"], "dict_type"),
    ("broken JSON", b'{"product_code": "SKU001", "orders_placed": 3', ["body"], "json_invalid"),
    ("empty body", b"", ["body"], "json_invalid"),
    ("not UTF-8", b'{"product_code": "\xff\xfe", "orders_placed": 3}', ["body"], "json_invalid"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A local store with one published model."""
    return new_store(tmp_path_factory.mktemp("contract"))


@pytest.fixture(scope="module")
def client(store: Store) -> Iterator[TestClient]:
    """A client of the app (lifespan running), shared by the module's tests."""
    with TestClient(make_app(store)) as test_client:
        yield test_client


def post(client: TestClient, path: str, body: bytes, **headers: str) -> Any:
    """POST raw bytes as JSON."""
    return client.post(path, content=body, headers={"content-type": "application/json", **headers})


def strict_json(text: str) -> Any:
    """Parse JSON, refusing NaN and Infinity tokens."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-finite token {token} in a response")

    return json.loads(text, parse_constant=refuse)


def test_single_prediction_matches_the_model(client: TestClient, store: Store) -> None:
    loaded = load_latest(store)
    response = client.post(SINGLE, json={"product_code": "SKU002", "orders_placed": 112})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = strict_json(response.text)
    estimate, upper, extrapolated = model_answers(loaded.model, "SKU002", 112.0)
    assert body == {
        "est_hours_to_dispatch": estimate,
        "p90_hours_to_dispatch": upper,
        "extrapolated": extrapolated,
        "basis": None,
        "model_version": loaded.version,
    }
    assert body["p90_hours_to_dispatch"] > body["est_hours_to_dispatch"]
    assert body["extrapolated"] is False


@pytest.mark.parametrize("orders", [0, -0.0, 0.5, 112, 112.25, 1e9, 5e-324])
def test_finite_non_negative_orders_up_to_the_bound_are_accepted(
    client: TestClient, orders: float
) -> None:
    response = client.post(SINGLE, json={"product_code": "SKU001", "orders_placed": orders})
    assert response.status_code == 200
    estimate = strict_json(response.text)["est_hours_to_dispatch"]
    assert math.isfinite(estimate) and estimate >= 0


def test_extra_fields_are_ignored(client: TestClient) -> None:
    body = {"product_code": "SKU001", "orders_placed": 3, "note": "ignored"}
    assert client.post(SINGLE, json=body).status_code == 200


@pytest.mark.parametrize("name, body, loc, kind", BAD_SINGLE, ids=[c[0] for c in BAD_SINGLE])
def test_invalid_single_input_is_a_422_naming_the_field(
    client: TestClient, name: str, body: bytes, loc: List[Any], kind: str
) -> None:
    response = post(client, SINGLE, body)
    assert response.status_code == 422, response.text
    detail = strict_json(response.text)["detail"]
    assert [loc, kind] in [[issue["loc"], issue["type"]] for issue in detail]
    assert all(issue["msg"] for issue in detail)
    assert len(response.content) < 2000  # hostile input is not echoed back in full


def test_unknown_code_message_lists_every_valid_code(client: TestClient) -> None:
    response = client.post(SINGLE, json={"product_code": "NOPE", "orders_placed": 1})
    issue = response.json()["detail"][0]
    assert issue["loc"] == ["body", "product_code"]
    for code in CODES:
        assert f"'{code}'" in issue["msg"]


def test_batch_matches_single_predictions_in_order(client: TestClient) -> None:
    pairs = [(CODES[i % len(CODES)], (i * 37) % 400 + 0.5 * (i % 2)) for i in range(60)]
    response = client.post(BATCH, json=rows(pairs))
    assert response.status_code == 200
    body = strict_json(response.text)
    singles = [
        client.post(SINGLE, json={"product_code": c, "orders_placed": o}).json()
        for c, o in pairs
    ]
    assert body["est_hours_to_dispatch"] == [s["est_hours_to_dispatch"] for s in singles]
    assert body["model_version"] == singles[0]["model_version"]


def test_empty_batch_gives_empty_estimates(client: TestClient) -> None:
    response = client.post(BATCH, json=[])
    assert response.status_code == 200
    assert response.json()["est_hours_to_dispatch"] == []


@pytest.mark.parametrize(
    "body, loc, kind",
    [
        (b'[{"product_code": "SKU001", "orders_placed": 1}, {"product_code": "SKU001"}]',
         ["body", 1, "orders_placed"], "missing"),
        (b'[{"product_code": "SKU001", "orders_placed": 1}, {"product_code": "X", '
         b'"orders_placed": -1}]', ["body", 1, "orders_placed"], "greater_than_equal"),
        (b'[{"product_code": "SKU001", "orders_placed": 1}, {"product_code": 7, '
         b'"orders_placed": 1}]', ["body", 1, "product_code"], "string_type"),
        (b'[{"product_code": "SKU001", "orders_placed": NaN}]',
         ["body", 0, "orders_placed"], "finite_number"),
        (b'[{"product_code": "SKU001", "orders_placed": 1e999}]',
         ["body", 0, "orders_placed"], "finite_number"),
        (b'[{"product_code": "SKU001", "orders_placed": true}]',
         ["body", 0, "orders_placed"], "float_type"),
        (b'[{"product_code": "SKU001", "orders_placed": -2}]',
         ["body", 0, "orders_placed"], "greater_than_equal"),
        (b"[1]", ["body", 0], "dict_type"),
        (b'{"product_code": "SKU001", "orders_placed": 1}', ["body"], "list_type"),
        (b"[", ["body"], "json_invalid"),
    ],
)
def test_invalid_batch_input_is_a_422_naming_the_row_and_field(
    client: TestClient, body: bytes, loc: List[Any], kind: str
) -> None:
    response = post(client, BATCH, body)
    assert response.status_code == 422, response.text
    assert [loc, kind] in [[i["loc"], i["type"]] for i in response.json()["detail"]]


def test_batch_row_cap_is_inclusive_and_named_when_exceeded(store: Store) -> None:
    with TestClient(make_app(store, max_batch_rows=3)) as client:
        assert client.post(BATCH, json=rows([("SKU001", 1)] * 3)).status_code == 200
        response = client.post(BATCH, json=rows([("SKU001", 1)] * 4))
    assert response.status_code == 422
    issue = response.json()["detail"][0]
    assert issue["type"] == "too_long" and issue["loc"] == ["body"]
    assert "at most 3 items" in issue["msg"]


def test_body_size_limit_is_inclusive_then_413(store: Store) -> None:
    limit = 1024
    base = b'{"product_code": "SKU001", "orders_placed": 3}'
    exact = base[:-1] + b" " * (limit - len(base)) + b"}"
    assert len(exact) == limit
    with TestClient(make_app(store, max_body_bytes=limit)) as client:
        assert post(client, SINGLE, exact).status_code == 200
        response = post(client, SINGLE, exact + b" ")
        batch = post(client, BATCH, b"[" + b" " * limit + b"]")
    assert response.status_code == 413
    assert str(limit) in response.json()["detail"]
    assert batch.status_code == 413


def test_a_model_without_a_finite_estimate_gives_422_not_500(tmp_path: Path) -> None:
    steep = DispatchModel({
        "SKU001": Curve((0.0, 1.0), (1.0, 2.0)),
        "SKU002": Curve((0.0, 1e-300), (0.0, 1e300)),
    })
    store = new_store(tmp_path)
    publish_raw(store, "20260101-000000-steep000", steep.to_json())
    with TestClient(make_app(store)) as client:
        single = client.post(SINGLE, json={"product_code": "SKU002", "orders_placed": 5})
        batch = client.post(BATCH, json=rows([("SKU001", 5), ("SKU002", 5), ("SKU002", 0)]))
    assert single.status_code == 422
    assert strict_json(single.text)["detail"][0]["loc"] == ["body", "orders_placed"]
    assert batch.status_code == 422
    assert strict_json(batch.text)["detail"][0]["loc"] == ["body", 1, "orders_placed"]


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    body = {"product_code": "SKU001", "orders_placed": 3}
    given = client.post(SINGLE, json=body, headers={"X-Request-ID": "req-42"})
    assert given.headers["x-request-id"] == "req-42"
    first = client.post(SINGLE, json=body).headers["x-request-id"]
    second = client.post(SINGLE, json=body).headers["x-request-id"]
    assert first and second and first != second
    too_long = client.post(SINGLE, json=body, headers={"X-Request-ID": "x" * 129})
    assert too_long.headers["x-request-id"] != "x" * 129
    limit = client.post(SINGLE, json=body, headers={"X-Request-ID": "y" * 128})
    assert limit.headers["x-request-id"] == "y" * 128
    assert client.get("/health", headers={"X-Request-ID": "h-1"}).headers["x-request-id"] == "h-1"


def test_health_reports_the_model_and_uptime(client: TestClient, store: Store) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = strict_json(response.text)
    assert body["status"] == "ok"
    assert body["model_version"] == load_latest(store).version
    assert body["model_trained_at"].startswith("2026-11-20T23:00:00")
    assert body["model_age_seconds"] > 0
    assert body["uptime_seconds"] >= 0
    assert body["product_codes"] == len(CODES)
    assert body["refresh"]["enabled"] is False


def test_model_endpoint_gives_metadata(client: TestClient, store: Store) -> None:
    body = strict_json(client.get("/api/v0.1/model").text)
    loaded = load_latest(store)
    assert body["model_version"] == loaded.version
    assert body["product_codes"] == len(CODES)
    assert body["product_codes_path"] == "/api/v0.1/model/product_codes"
    assert body["metrics"] == {"mae": 0.41, "r2": 0.93}
    assert body["tranche"]["rows"] == 1000
    assert body["trained_at"].startswith("2026-11-20T23:00:00")
    assert body["metadata"]["model_sha256"] == loaded.pointer.model_sha256


def test_non_finite_metadata_is_served_as_strict_json(tmp_path: Path) -> None:
    from tests.api_support import publish_fitted

    store = new_store(tmp_path)
    publish_fitted(store, seed=2, extra={"metrics": {"r2": float("nan")}, "big": 10**30})
    with TestClient(make_app(store)) as client:
        response = client.get("/api/v0.1/model")
    assert response.status_code == 200
    body = strict_json(response.text)
    assert body["metrics"] == {"r2": None}
    assert body["metadata"]["big"] == str(10**30)


def test_docs_and_unknown_routes(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert client.get(SINGLE).status_code == 405


KEY = "s3cr3t-key"
MODEL = "/api/v0.1/model"
PAGE = "/api/v0.1/model/product_codes"


@pytest.fixture(scope="module")
def keyed(store: Store) -> Iterator[TestClient]:
    """A client of an app that requires an API key."""
    with TestClient(make_app(store, api_key=KEY)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def slow(store: Store) -> Iterator[TestClient]:
    """A client of an app whose predictions go through FastAPI (fast path off)."""
    with TestClient(make_app(store, fast_path=False, api_key="k")) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def fast(store: Store) -> Iterator[TestClient]:
    """A client of the same app with the fast path on."""
    with TestClient(make_app(store, api_key="k")) as test_client:
        yield test_client


class TestApiKey:
    """With a key set, predictions and the model's routes need it; health, metrics, docs don't."""

    KEY = KEY

    @pytest.mark.parametrize("path", [SINGLE, BATCH])
    @pytest.mark.parametrize("key", [None, "", "wrong", KEY + "x", KEY[:-1]])
    def test_missing_or_wrong_key_is_401(self, keyed: TestClient, path: str, key: Any) -> None:
        headers = {} if key is None else {"X-API-Key": key}
        body = {"product_code": "SKU001", "orders_placed": 3}
        response = keyed.post(path, json=body if path == SINGLE else [body], headers=headers)
        assert response.status_code == 401
        assert self.KEY not in response.text

    @pytest.mark.parametrize("path", [SINGLE, BATCH])
    def test_right_key_is_served(self, keyed: TestClient, path: str) -> None:
        body = {"product_code": "SKU001", "orders_placed": 3}
        response = keyed.post(path, json=body if path == SINGLE else [body],
                              headers={"X-API-Key": self.KEY})
        assert response.status_code == 200

    @pytest.mark.parametrize("path", [MODEL, PAGE])
    @pytest.mark.parametrize("key", [None, "", "wrong", KEY + "x"])
    def test_the_model_and_its_codes_need_the_key(
        self, keyed: TestClient, path: str, key: Any
    ) -> None:
        headers = {} if key is None else {"X-API-Key": key}
        for method in ("GET", "HEAD"):
            response = keyed.request(method, path, headers=headers)
            assert response.status_code == 401, (method, response.text)
        assert keyed.get(path, headers=headers).json() == {"detail": "missing or invalid API key"}
        assert keyed.get(path, headers={"X-API-Key": self.KEY}).status_code == 200

    def test_the_model_routes_need_the_key_behind_the_root_path(self, store: Store) -> None:
        with TestClient(make_app(store, api_key=self.KEY, root_path="/ns/svc")) as client:
            for path in (MODEL, PAGE):
                assert client.get("/ns/svc" + path).status_code == 401
                keyed = client.get("/ns/svc" + path, headers={"X-API-Key": self.KEY})
                assert keyed.status_code == 200
            body = {"product_code": "SKU001", "orders_placed": 3}
            assert client.post("/ns/svc" + SINGLE, json=body).status_code == 401

    def test_the_schema_says_which_routes_need_the_key(self, keyed: TestClient) -> None:
        paths = keyed.get("/openapi.json").json()["paths"]
        guarded = {(SINGLE, "post"), (BATCH, "post"), (MODEL, "get"), (PAGE, "get")}
        for path, operations in paths.items():
            for method, operation in operations.items():
                needs = (path, method) in guarded
                assert ("401" in operation["responses"]) is needs, (path, method)
                assert bool(operation.get("security")) is needs, (path, method)

    @pytest.mark.parametrize("path", ["/health", "/metrics", "/docs", "/redoc", "/openapi.json"])
    def test_operations_and_docs_stay_open(self, keyed: TestClient, path: str) -> None:
        assert keyed.get(path).status_code == 200

    def test_header_name_is_configurable(self, store: Store) -> None:
        with TestClient(make_app(store, api_key=self.KEY, api_key_header="Authorization-Key")) as c:
            body = {"product_code": "SKU001", "orders_placed": 3}
            assert c.post(SINGLE, json=body, headers={"X-API-Key": self.KEY}).status_code == 401
            ok = c.post(SINGLE, json=body, headers={"Authorization-Key": self.KEY})
            assert ok.status_code == 200


class TestFastApiPathParity:
    """With the fast path off FastAPI routes the predictions; the answers are the same bytes.

    One policy (key, Content-Type, body size) and one parser answer both ways in.
    """

    ASKED: List[Tuple[str, bytes, Dict[str, str]]] = [
        *[(SINGLE, body, {}) for _, body, _, _ in BAD_SINGLE],
        (SINGLE, b'{"product_code": "SKU999", "orders_placed": -1}', {}),
        (SINGLE, b'{"product_code": "SKU001", "orders_placed": 3}', {"content-type": "text/plain"}),
        (SINGLE, b'{"product_code": "SKU001", "orders_placed": 3}', {"X-API-Key": "wrong"}),
        (SINGLE, b'{"product_code": "SKU001", "orders_placed": 3}', {"X-API-Key": ""}),
        (SINGLE, b"[" + b" " * 2000 + b"]", {}),
        (SINGLE, b'{"product_code": "SKU001"' + b" " * 2000 + b"}", {}),
        (BATCH, b"null", {}),
        (BATCH, b"{}", {}),
        (BATCH, b"[" + b" " * 2000 + b"]", {}),
        (BATCH, b'[{"product_code": "SKU001", "orders_placed": 3}, 7]', {}),
        (BATCH, b'[{"product_code": "NEW-1", "orders_placed": 3}]', {}),
        (BATCH, json.dumps(rows([("SKU003", 12), ("SKU001", 250.5)])).encode(), {}),
    ]

    @pytest.mark.parametrize("index", range(len(ASKED)))
    def test_the_same_answer_byte_for_byte(self, store: Store, index: int) -> None:
        path, body, headers = self.ASKED[index]
        given = {"content-type": "application/json", "X-API-Key": "k", **headers}
        answers = []
        for fast_path in (True, False):
            with TestClient(make_app(store, api_key="k", fast_path=fast_path,
                                     max_body_bytes=1024)) as client:
                answers.append(client.post(path, content=body, headers=given))
        fast, slow = answers
        assert (slow.status_code, slow.content) == (fast.status_code, fast.content)
        assert slow.headers.get("connection") == fast.headers.get("connection")
        assert slow.headers["content-type"] == fast.headers["content-type"]

    def test_same_answers_and_auth(self, fast: TestClient, slow: TestClient) -> None:
        body = rows([("SKU003", 12), ("SKU001", 250.5)])
        for path, payload in ((SINGLE, body[0]), (BATCH, body)):
            answers = [c.post(path, json=payload, headers={"X-API-Key": "k"}) for c in (fast, slow)]
            assert answers[0].json() == answers[1].json()
            assert answers[0].status_code == answers[1].status_code == 200
            assert [c.post(path, json=payload).status_code for c in (fast, slow)] == [401, 401]


async def call_asgi(app: Any, messages: List[Dict[str, Any]], path: str = SINGLE) -> List[Any]:
    """Drive the ASGI app directly with the given receive messages; the messages it sends."""
    incoming = iter(messages)
    sent: List[Any] = []

    async def receive() -> Dict[str, Any]:
        return next(incoming)

    async def send(message: Dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [],
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1"}
    await app(scope, receive, send)
    return sent


def test_a_body_in_chunks_is_read_whole_and_limited(store: Store) -> None:
    body = b'{"product_code": "SKU001", "orders_placed": 3}'
    app = make_app(store, max_body_bytes=1024)
    chunks = [{"type": "http.request", "body": body[:10], "more_body": True},
              {"type": "http.request", "body": body[10:], "more_body": False}]
    sent = asyncio.run(call_asgi(app, chunks))
    assert sent[0]["status"] == 200
    big = [{"type": "http.request", "body": b" " * 1000, "more_body": True},
           {"type": "http.request", "body": b" " * 25, "more_body": True}]
    sent = asyncio.run(call_asgi(app, big))
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    first_too_big = [{"type": "http.request", "body": b" " * 1025, "more_body": True}]
    assert asyncio.run(call_asgi(app, first_too_big))[0]["status"] == 413


def test_a_client_gone_before_its_body_gets_no_answer_and_a_499_log_line(
    store: Store, tmp_path: Path
) -> None:
    log_path = tmp_path / "requests.log"
    app = make_app(store, log_path)
    app.state.request_log.open()
    sent = asyncio.run(call_asgi(app, [{"type": "http.disconnect"}]))
    app.state.request_log.close()
    assert sent == []
    assert [line["status"] for line in log_lines(log_path)] == [499]


def test_a_defect_is_a_logged_500_with_the_request_id(store: Store, tmp_path: Path) -> None:
    class Broken:
        index = {code: i for i, code in enumerate(CODES)}

        def estimate(self, i: int, orders: float) -> float:
            raise RuntimeError("defect")

    log_path = tmp_path / "requests.log"
    app = make_app(store, log_path)
    app.state.serving = dataclasses.replace(app.state.serving, lookup=Broken())
    with TestClient(app) as client:
        response = client.post(SINGLE, json={"product_code": "SKU001", "orders_placed": 1},
                               headers={"X-Request-ID": "bad-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "bad-1"
    assert "X-Request-ID" in response.json()["detail"]
    line = log_lines(log_path)[0]
    assert (line["request_id"], line["status"], line["level"]) == ("bad-1", 500, "error")
