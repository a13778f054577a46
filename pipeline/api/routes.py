"""The service's paths: the versioned API under one prefix, the operations and docs beside it."""
from __future__ import annotations

API_VERSION = "0.1"
API_PREFIX = f"/api/v{API_VERSION}"
SINGLE_PATH = f"{API_PREFIX}/time_to_dispatch"
BATCH_PATH = f"{SINGLE_PATH}/batch"
MODEL_PATH = f"{API_PREFIX}/model"
PRODUCT_CODES_PATH = f"{MODEL_PATH}/product_codes"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
DOCS_ASSETS_PATH = "/docs-assets"


def route_path(path: str, root_path: str) -> str:
    """The route a request path names: without the proxy's prefix where it still carries it.

    As Starlette routes (``get_route_path``): the prefix is dropped only when the path
    continues with a slash after it.
    """
    if root_path and path.startswith(root_path + "/"):
        return path[len(root_path):]
    return path
