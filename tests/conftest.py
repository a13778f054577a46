"""Shared fixtures: a real S3 API over HTTP (moto's server) and stores on it or on disk."""
from __future__ import annotations

import json
import os
import socket
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import pytest

from pipeline.api.lookup import Lookup, prepare
from pipeline.artefacts import (
    POINTER_KEY, Pointer, create_once, metadata_key, model_key, sha256_hex,
)
from pipeline.model_format import Curve, DispatchModel
from pipeline.store import Store

REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_DIR = REPO_ROOT / "pipeline"
PYTHON = sys.executable

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server, in a thread of the test process, reached over real HTTP."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Dict[str, str]:
    """AWS variables pointing at the test server, set here and returned for subprocesses."""
    env = dict(AWS_TEST_ENV, AWS_ENDPOINT_URL=s3_endpoint)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_url(aws_env: Dict[str, str]) -> str:
    """A fresh, empty bucket on the test server, as an s3:// store URL with a prefix."""
    import boto3

    bucket = f"ttd-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/project"


@pytest.fixture
def local_url(tmp_path: Path) -> str:
    """A fresh local store directory."""
    path = tmp_path / "store"
    path.mkdir()
    return str(path)


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each test with this fixture runs against both kinds of store."""
    name = "local_url" if request.param == "local" else "s3_url"
    return str(request.getfixturevalue(name))


def stage_env(extra: Dict[str, str]) -> Dict[str, str]:
    """The environment Bodywork gives a stage: PYTHONPATH at the repo root, plus extras."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(extra)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def at(curve: Curve, orders: float) -> float:
    """A curve's estimate at one order count (through Curve.predict)."""
    return float(curve.predict(np.array([orders], dtype=np.float64))[0])


def served(model: DispatchModel) -> Lookup:
    """The model as the service holds it: its artefact parsed, checked and put in columns."""
    return Lookup(prepare(model.to_json(), b'{"model_sha256": "s"}', "s"))


def answers(
    model: DispatchModel, code: str, orders: float
) -> Tuple[float, Optional[float], Optional[bool]]:
    """A model's estimate, p90 bound and extrapolated flag for one row (its batch path);
    KeyError for a code it does not know."""
    estimate, upper, outside = model.predict_bounded([code], [orders])
    return (float(estimate[0]), None if upper is None else float(upper[0]),
            None if outside is None else bool(outside[0]))


def publish_document(
    store: Store, artefact: bytes, document: Dict[str, Any], published_at: datetime,
    token: Optional[str],
) -> Pointer:
    """Publish an artefact with a metadata document written exactly as given (any shape: an
    older training run's or another writer's), objects first and the pointer last."""
    version = str(document["model_version"])
    metadata = json.dumps(document, indent=2, sort_keys=True).encode()
    create_once(store, model_key(version), artefact)
    create_once(store, metadata_key(version), metadata)
    pointer = Pointer(version, model_key(version), sha256_hex(artefact), metadata_key(version),
                      sha256_hex(metadata), published_at.isoformat())
    store.write_if_unchanged(POINTER_KEY, pointer.to_json(), token)
    return pointer


def publish_unchecked(store: Store, version: str, artefact: bytes, recorded_sha256: str) -> None:
    """Point the store at any artefact bytes with any recorded checksum, as a tampered store is."""
    metadata = json.dumps({"model_version": version, "model_sha256": recorded_sha256}).encode()
    store.write_bytes(model_key(version), artefact)
    store.write_bytes(metadata_key(version), metadata)
    pointer = Pointer(
        model_version=version,
        model_key=model_key(version),
        model_sha256=recorded_sha256,
        metadata_key=metadata_key(version),
        metadata_sha256=sha256_hex(metadata),
        published_at=datetime.now(timezone.utc).isoformat(),
    )
    found = store.read_versioned(POINTER_KEY)
    store.write_if_unchanged(POINTER_KEY, pointer.to_json(), found[1] if found else None)
