"""The store: the same behaviour from a local directory and from S3 over HTTP."""
from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from pipeline.artefacts import POINTER_KEY
from pipeline.store import ConcurrentUpdate, ObjectExists, ObjectNotFound, StoreError, open_store
from testing_support.stages import PYTHON, REPO_ROOT, stage_env


def test_write_read_list_round_trip(store_url: str) -> None:
    store = open_store(store_url)
    store.write_bytes("datasets/a.csv", b"a")
    store.write_bytes("datasets/sub/b.csv", b"b")
    store.write_bytes("models/latest.json", b"{}")
    assert store.read_bytes("datasets/a.csv") == b"a"
    assert store.list_keys("datasets/") == ["datasets/a.csv", "datasets/sub/b.csv"]
    assert store.list_keys("nothing/") == []


def test_missing_key_names_its_location(store_url: str) -> None:
    store = open_store(store_url)
    with pytest.raises(ObjectNotFound, match="models/none.json"):
        store.read_bytes("models/none.json")
    assert store.read_versioned("models/none.json") is None


def test_listing_follows_every_page(s3_url: str) -> None:
    store = open_store(s3_url)
    for i in range(1005):
        store.write_bytes(f"datasets/k{i:04d}", b"")
    assert len(store.list_keys("datasets/")) == 1005


def test_conditional_write_detects_a_lost_race(store_url: str) -> None:
    store = open_store(store_url)
    store.write_if_unchanged("models/latest.json", b"one", None)
    with pytest.raises(ConcurrentUpdate):
        store.write_if_unchanged("models/latest.json", b"two", None)
    found = store.read_versioned("models/latest.json")
    assert found is not None and found[0] == b"one"
    store.write_if_unchanged("models/latest.json", b"two", found[1])
    with pytest.raises(ConcurrentUpdate):
        store.write_if_unchanged("models/latest.json", b"three", found[1])
    assert store.read_bytes("models/latest.json") == b"two"


def test_create_only_never_rewrites_an_object(store_url: str) -> None:
    store = open_store(store_url)
    store.create_bytes("models/v1/model.json", b"first")
    with pytest.raises(ObjectExists, match="models/v1/model.json already exists"):
        store.create_bytes("models/v1/model.json", b"second")
    with pytest.raises(ObjectExists):
        store.create_bytes("models/v1/model.json", b"first")
    assert store.read_bytes("models/v1/model.json") == b"first"
    assert store.list_keys("models/") == ["models/v1/model.json"]
    assert issubclass(ObjectExists, ConcurrentUpdate)


def test_missing_bucket_is_a_clear_store_error(aws_env: dict) -> None:
    store = open_store("s3://no-such-bucket-here/prefix")
    with pytest.raises(StoreError, match="s3://no-such-bucket-here/prefix/datasets/x.csv"):
        store.read_bytes("datasets/x.csv")


def test_urls_choose_the_kind_of_store(tmp_path) -> None:
    assert open_store(str(tmp_path)).url == str(tmp_path)
    assert open_store(f"file://{tmp_path}").url == str(tmp_path)
    assert open_store("s3://bucket/a/b/").url == "s3://bucket/a/b"
    with pytest.raises(StoreError, match="names no bucket"):
        open_store("s3://")
    with pytest.raises(StoreError, match="neither"):
        open_store("gs://bucket")


def test_keys_cannot_escape_a_local_store(local_url: str) -> None:
    with pytest.raises(StoreError, match="escapes"):
        open_store(local_url).read_bytes("../outside")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_store_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    store = tmp_path / "store"
    shell = (f"umask {umask:03o} && {PYTHON} -m pipeline.simulate {store} --rows 300 "
             f"--until 2026-11-21 && cd pipeline && {PYTHON} train_model.py {store}")
    done = subprocess.run(["bash", "-c", shell], cwd=REPO_ROOT, env=stage_env({}),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((store / POINTER_KEY).stat().st_mode) == mode
    files = [p for p in store.rglob("*") if p.is_file() and not p.name.startswith(".")]
    kinds = {p.relative_to(store).parts[0] for p in files}
    assert kinds == {"datasets", "models", "reports"}, files
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(mode)}
    assert not [p for p in store.rglob(".*.tmp")], "no temporary file is left behind"
