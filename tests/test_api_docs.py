"""/docs and /redoc work without the internet: assets served by the app, pages rendered by Chromium.

The page tests run a real serve_model process behind ``--root-path`` (as behind the
ingress) and load each page in headless Chromium on a machine without internet
access: the operations appear only if the JavaScript and CSS came from the service.
Set ``DOCS_SCREENSHOTS=<dir>`` to keep the screenshots.
"""
from __future__ import annotations

import http.client
import os
import re
from pathlib import Path
from typing import Iterator, Tuple

import pytest
from starlette.testclient import TestClient

from pipeline.store import Store
from testing_support.servers import ServeProcess
from testing_support.stages import stage_env
from tests.api_support import make_app, new_store
from tests.browser_support import chromium, render

PREFIX = "/time-to-dispatch/serve-model"
ASSETS = {
    "swagger-ui-bundle.js": "javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "javascript",
    "favicon.png": "image/png",
}
OPERATIONS = (
    "Estimate hours to dispatch for one product",
    "Estimate hours to dispatch for up to 10000 rows",
    "Health",
    "Model Info",
    "Metrics",
)
needs_chromium = pytest.mark.skipif(
    chromium() is None,
    reason="headless Chromium not installed (apt-get install chromium; CI installs it)",
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A local store with one published model."""
    return new_store(tmp_path_factory.mktemp("docs"))


@pytest.mark.parametrize("prefix", ["", PREFIX])
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_pages_load_their_assets_from_the_service_never_a_cdn(
    store: Store, prefix: str, page: str
) -> None:
    with TestClient(make_app(store, root_path=prefix)) as client:
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
        assert urls, html
        for url in urls:
            assert url.startswith(f"{prefix}/"), url
        assert "http://" not in html and "https://" not in html
        assert "fonts.googleapis" not in html
        assert f"{prefix}/openapi.json" in html
        for url in urls:
            if "/docs-assets/" in url:
                asset = client.get(url[len(prefix):])
                assert asset.status_code == 200, url
                assert ASSETS[url.rsplit("/", 1)[1]] in asset.headers["content-type"]


def test_assets_hold_no_links_to_fonts_or_cdns(store: Store) -> None:
    with TestClient(make_app(store)) as client:
        for name in ("swagger-ui.css", "redoc.standalone.js"):
            text = client.get(f"/docs-assets/{name}").text
            assert "fonts.googleapis" not in text and "@import url(" not in text


@pytest.fixture(scope="module")
def server(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """serve_model over the store, behind the ingress's path prefix."""
    root = store.location("").rstrip("/")
    logs = tmp_path_factory.mktemp("docs-logs")
    with ServeProcess(root, stage_env({}), logs, args=["--root-path", PREFIX]) as process:
        process.wait_listening()
        yield process
        process.terminate()
        process.process.wait(timeout=15)


def _screenshot(name: str, tmp_path: Path) -> Path:
    keep = os.environ.get("DOCS_SCREENSHOTS")
    folder = Path(keep) if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


@needs_chromium
@pytest.mark.parametrize(
    "page, marker",
    [("/docs", 'class="opblock'), ("/redoc", "operation/")],
)
def test_each_page_renders_its_operations_offline(
    server: ServeProcess, tmp_path: Path, page: str, marker: str
) -> None:
    shot = _screenshot(f"{page.strip('/')}.png", tmp_path)
    dom = render(f"http://127.0.0.1:{server.port}{PREFIX}{page}", shot, budget_ms=8000)
    for operation in OPERATIONS:
        assert operation in dom, f"{page} did not render {operation!r}"
    assert "/api/v0.1/time_to_dispatch" in dom
    assert marker in dom
    assert shot.stat().st_size > 20_000  # a blank page compresses to a few kB


def test_head_on_a_real_server_sends_no_body_and_keeps_the_connection(
    server: ServeProcess,
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        statuses: Tuple[int, ...] = ()
        for method, path in (("HEAD", "/health"), ("HEAD", "/nowhere"), ("GET", "/health")):
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read()
            statuses += (response.status,)
            assert response.getheader("content-type") == "application/json"
            assert (body == b"") is (method == "HEAD")
    finally:
        conn.close()
    assert statuses == (200, 404, 200)
