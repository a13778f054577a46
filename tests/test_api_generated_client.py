"""A client generated from the served schema, as the platform team makes one, outlives the model.

``openapi-python-client`` (requirements_test.txt) generates a client from ``/openapi.json``
of a five-part model; after a model that knows a sixth part is swapped in, that same
client asks for it and gets an answer: the schema never baked this week's codes in.
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from starlette.testclient import TestClient

from pipeline.api.app import refresh_once
from tests.api_support import CODES, make_app, new_store, publish_fitted

PACKAGE = "ttd_generated_client"
SEARCH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
GENERATOR = shutil.which("openapi-python-client", path=SEARCH)
NEW_CODE = "SKU777"

pytestmark = pytest.mark.skipif(
    GENERATOR is None, reason="openapi-python-client (requirements_test.txt) is not installed"
)


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Any]:
    """The client package generated from a five-part model's schema, and its app's store."""
    store = new_store(tmp_path)
    app = make_app(store)
    with TestClient(app) as client:
        (tmp_path / "openapi.json").write_bytes(client.get("/openapi.json").content)
    (tmp_path / "config.yaml").write_text("post_hooks: []\n")
    assert GENERATOR is not None
    subprocess.run(
        [GENERATOR, "generate", "--path", "openapi.json", "--config", "config.yaml",
         "--meta", "none", "--output-path", PACKAGE],
        cwd=tmp_path, check=True, capture_output=True, timeout=120,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield store, app
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_a_generated_client_asks_for_a_part_the_model_learns_later(generated: Any) -> None:
    store, app = generated
    package = importlib.import_module(PACKAGE)
    models = importlib.import_module(f"{PACKAGE}.models")
    single = importlib.import_module(
        f"{PACKAGE}.api.predictions.time_to_dispatch_api_v0_1_time_to_dispatch_post"
    )
    batch = importlib.import_module(
        f"{PACKAGE}.api.predictions.time_to_dispatch_batch_api_v0_1_time_to_dispatch_batch_post"
    )
    asked = models.PredictionRequest(product_code=NEW_CODE, orders_placed=40)
    with TestClient(app) as http:
        client = package.Client(base_url="http://testserver").set_httpx_client(http)
        before = single.sync_detailed(client=client, body=asked)
        version = publish_fitted(store, seed=6, codes=CODES + (NEW_CODE,))
        assert refresh_once(app.state).outcome == "swapped"
        after = single.sync_detailed(client=client, body=asked)
        rows = [models.PredictionRequest(product_code=code, orders_placed=40)
                for code in (NEW_CODE, "NEW-PART")]
        both = batch.sync_detailed(client=client, body=rows)
    assert before.status_code == 422
    assert isinstance(before.parsed, models.ValidationErrorResponse)
    assert after.status_code == 200
    assert isinstance(after.parsed, models.PredictionResponse)
    assert after.parsed.model_version == version
    assert after.parsed.est_hours_to_dispatch > 0
    assert both.status_code == 200
    assert isinstance(both.parsed, models.BatchPredictionResponse)
    assert both.parsed.est_hours_to_dispatch[0] == after.parsed.est_hours_to_dispatch
    assert both.parsed.est_hours_to_dispatch[1] is None
    assert [(u.index, u.product_code) for u in both.parsed.unknown_product_codes] == [
        (1, "NEW-PART")
    ]
