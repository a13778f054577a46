"""A real serve_model over 100,000 parts: start, answers, bounded bodies, a refresh under load.

Also the basis and the unknown-products setting end to end, through the process.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import threading
from pathlib import Path
from typing import Any, Dict, List

from pipeline.api.routes import BATCH_PATH, SINGLE_PATH
from pipeline.model_format import CatalogueCurve, Curve
from pipeline.store import open_store
from testing_support.models import catalogue_artefact, fitted_model
from testing_support.servers import ServeProcess, call, request
from testing_support.stages import stage_env, wait_for
from tests.api_support import publish_raw
from tests.serve_support import Tally, keep_asking

PARTS = 100_000
PAGE = "/api/v0.1/model/product_codes"


def _raw(port: int, method: str, path: str, body: Any = None) -> Any:
    """Status and raw body bytes of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    payload = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def test_a_100000_part_model_is_served_small_and_refreshed_under_load(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    store = open_store(str(root))
    publish_raw(store, "20261201-000000-parts001", catalogue_artefact(PARTS, seed=1))
    extra = ["--model-refresh-seconds", "0.2", "--drain-seconds", "0.2"]
    with ServeProcess(str(root), stage_env({}), tmp_path, args=extra, form="script") as server:
        server.wait_listening(timeout=90)
        port = server.port
        status, health = call(port, "GET", "/health")
        assert (status, health["product_codes"]) == (200, PARTS)

        typo = {"product_code": "P01234", "orders_placed": 3}
        status, body = _raw(port, "POST", SINGLE_PATH, typo)
        assert status == 422 and len(body) <= 4096
        issue = json.loads(body)["detail"][0]
        assert "P001234" in issue["ctx"]["close_matches"] and PAGE in issue["msg"]
        for path in ("/openapi.json", "/api/v0.1/model"):
            status, body = _raw(port, "GET", path)
            assert status == 200 and len(body) <= 65536, path
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        status, page, _ = request(conn, "GET", f"{PAGE}?offset=99990&limit=1000")
        assert status == 200 and page["next_offset"] is None
        assert [e["product_code"] for e in page["product_codes"]][-1] == "P099999"
        status, _, _ = request(conn, "GET", f"{PAGE}?limit=1001")
        assert status == 422
        status, batch, _ = request(conn, "POST", BATCH_PATH, [
            {"product_code": "P000002", "orders_placed": 5},
            {"product_code": "NEW", "orders_placed": 5},
        ])
        conn.close()
        assert status == 200
        assert batch["basis"] == ["pooled", None]
        assert batch["unknown_product_codes"] == [{"index": 1, "product_code": "NEW"}]

        rows = [{"product_code": f"P{i * 1999:06d}", "orders_placed": i * 7} for i in range(50)]
        stop, tally = threading.Event(), Tally()
        clients = [threading.Thread(target=keep_asking, args=(port, rows, stop, tally))
                   for _ in range(4)]
        for client in clients:
            client.start()
        try:
            assert wait_for(lambda: tally.answered > 50, 30)
            publish_raw(store, "20261201-000001-parts002", catalogue_artefact(PARTS, seed=2))
            swapped = wait_for(
                lambda: call(port, "GET", "/health")[1]["model_version"].endswith("parts002"), 90
            )
            answered = tally.answered
            assert wait_for(lambda: tally.answered > answered + 50, 30)
        finally:
            stop.set()
            for client in clients:
                client.join()
        assert swapped, server.output()
        assert tally.failures == []
        assert set(tally.versions) == {"20261201-000000-parts001", "20261201-000001-parts002"}


def _format_3_store(root: Path) -> None:
    model = fitted_model(seed=5)
    bases = {code: "pooled" if code == "SKU004" else "product" for code in model.curves}
    catalogue = CatalogueCurve(Curve((0.0, 100.0), (2.0, 5.0)), Curve((0.0, 100.0), (6.0, 15.0)))
    found = dataclasses.replace(model, bases=bases, catalogue=catalogue)
    root.mkdir()
    publish_raw(open_store(str(root)), "20261201-000000-format03", found.to_json())


def _answers(port: int, rows: List[Dict[str, Any]]) -> List[Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    found = [request(conn, "POST", SINGLE_PATH, row)[:2] for row in rows]
    found.append(request(conn, "POST", BATCH_PATH, rows)[:2])
    conn.close()
    return found


def test_basis_and_unknown_products_through_the_process(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _format_3_store(root)
    rows = [{"product_code": "SKU001", "orders_placed": 40},
            {"product_code": "SKU004", "orders_placed": 40},
            {"product_code": "NEW-PART", "orders_placed": 40}]
    runs = {
        "reject": ({}, []),
        "env": ({"TTD_UNKNOWN_PRODUCTS": "catalogue"}, []),
        "flag": ({}, ["--unknown-products", "catalogue"]),
    }
    seen: Dict[str, List[Any]] = {}
    for name, (env, extra) in runs.items():
        with ServeProcess(str(root), stage_env(env), tmp_path, args=extra, form="script") as server:
            server.wait_listening()
            seen[name] = _answers(server.port, rows)
            log = server.output()
        assert ("answered from the catalogue curve" in log) is (name != "reject")
    (s1, a1), (s2, a2), (s3, a3), (sb, batch) = seen["reject"]
    assert (s1, a1["basis"], s2, a2["basis"], s3) == (200, "product", 200, "pooled", 422)
    assert batch["basis"] == ["product", "pooled", None]
    assert batch["unknown_product_codes"] == [{"index": 2, "product_code": "NEW-PART"}]
    for name in ("env", "flag"):
        (_, b1), (_, b2), (s3, b3), (_, batch) = seen[name]
        assert s3 == 200 and b3["basis"] == "catalogue"
        assert b3["est_hours_to_dispatch"] == 2.0 + 3.0 * 40 / 100
        assert b3["p90_hours_to_dispatch"] == 6.0 + 9.0 * 40 / 100
        assert (b1, b2) == (a1, a2)
        assert batch["basis"] == ["product", "pooled", "catalogue"]
