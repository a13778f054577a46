"""Shared fixtures: a real S3 API over HTTP (moto's server) and stores on it or on disk. Kept to
what the deployment checks' environment (Python 3.9, no pipeline packages) can import; the model's
own answers, the oracles the service is held to, are in tests/oracles.py."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Dict, Iterator

import pytest

from testing_support.stages import AWS_TEST_ENV
from testing_support.stores import moto_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server, in a thread of the test process, reached over real HTTP."""
    with moto_server() as endpoint:
        yield endpoint


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
