"""Helpers for the reliability tests: the slow variants' marker, a loaded model's checks and a
store an attacker has written.

Not a test module: imported by tests/test_reliability_*.py. Stores, the fault-injecting
proxy, models, stages and the server process come from ``testing_support``.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.artefacts import LoadedModel, Pointer, sha256_hex
from pipeline.store import Store
from testing_support.models import plant_model, simple_model

FULL_ENV = "RELIABILITY_FULL"
full_only = pytest.mark.skipif(
    os.environ.get(FULL_ENV) != "1",
    reason=f"slow variant: run by benchmarks/reliability_full.py ({FULL_ENV}=1)",
)


def assert_verifies(loaded: LoadedModel, pointer: Pointer) -> None:
    """A loaded model is the one a pointer names and predicts finite numbers."""
    assert loaded.pointer == pointer
    assert loaded.metadata.model_version == pointer.model_version
    code = loaded.model.product_codes[0]
    assert np.all(np.isfinite(loaded.model.predict([code], [10.0])))


def plant_hostile(store: Store, content: bytes, checksum: str, version: str) -> Pointer:
    """An attacker with write access swings the pointer to a new version holding ``content``.

    ``checksum="matching"``: the pointer and metadata record the hostile content's
    sha256 (every checksum verifies). ``"stale"``: they record a genuine model's sha256,
    so the content fails verification.
    """
    if checksum == "matching":
        recorded = sha256_hex(content)
    elif checksum == "stale":
        recorded = sha256_hex(simple_model(7.0).to_json())
    else:
        raise ValueError(f"checksum must be 'matching' or 'stale', not {checksum!r}")
    return plant_model(store, version, content, recorded)
