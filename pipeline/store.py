"""The store: one interface over a local directory and an S3 bucket.

A store is named by a URL: a path (or ``file://`` URL) for the embedded local
store, or ``s3://bucket[/prefix]`` for S3 through boto3, which honours the
standard AWS environment variables, ``AWS_ENDPOINT_URL`` included. Every error
is raised as :class:`StoreError` with a message that names the location.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any, Callable, List, Optional, Protocol, Tuple

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_TIMEOUT_SECONDS = 10.0


class StoreError(Exception):
    """The store could not be read or written; the message names the location."""


class ObjectNotFound(StoreError):
    """The key does not exist in the store."""


class ConcurrentUpdate(StoreError):
    """A conditional write lost a race: the object changed since it was read."""


class ObjectExists(ConcurrentUpdate):
    """A create-only write found the key already present; the object was left as it was."""


class Store(Protocol):
    """The stages' view of a store: keyed bytes, listing, create-only and conditional writes."""

    url: str

    def location(self, key: str) -> str:
        """The full URL or path of a key, for messages."""
        ...

    def list_keys(self, prefix: str) -> List[str]:
        """All keys under a prefix (every page of them), relative to the store root."""
        ...

    def read_bytes(self, key: str) -> bytes:
        """The content of a key; ObjectNotFound when it is absent."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write a key atomically: a reader sees the old content or the new, never a part."""
        ...

    def create_bytes(self, key: str, data: bytes) -> None:
        """Create a key atomically only if it is absent; ObjectExists (nothing written) if not."""
        ...

    def read_versioned(self, key: str) -> Optional[Tuple[bytes, str]]:
        """The content of a key with a version token for write_if_unchanged, or None if absent."""
        ...

    def write_if_unchanged(self, key: str, data: bytes, token: Optional[str]) -> None:
        """Write a key only if it still has the version token read (None: only if absent)."""
        ...


def open_store(
    url: str,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> Store:
    """Open the store a URL names: ``s3://bucket[/prefix]``, ``file://path`` or a path."""
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise StoreError(f"store URL {url!r} names no bucket (expected s3://bucket[/prefix])")
        return S3Store(bucket, prefix.strip("/"), max_attempts, timeout_seconds)
    if "://" in url and not url.startswith("file://"):
        raise StoreError(f"store URL {url!r} is neither a local path nor s3://bucket[/prefix]")
    return LocalStore(Path(url[len("file://"):] if url.startswith("file://") else url))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FILE_MODE = 0o666  # before the umask, as other tools create files (0644 under umask 022)
TEMPORARY_ATTEMPTS = 100


def _new_temporary(path: Path) -> Tuple[int, str]:
    """A new hidden temporary file beside ``path``, open for writing, with the umask's mode.

    tempfile.mkstemp would make it 0600 whatever the umask, and the rename or link that places
    it keeps that mode: a service running as another user could not read the store.
    """
    for _ in range(TEMPORARY_ATTEMPTS):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), tmp
        except FileExistsError:
            continue
    raise OSError(f"no free temporary name beside {path}")


class LocalStore:
    """A directory on disk laid out exactly like the bucket."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.url = str(self.root)

    def location(self, key: str) -> str:
        """The absolute path of a key."""
        return str(self.root / key)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StoreError(f"key {key!r} escapes the store at {self.root}")
        return path

    def list_keys(self, prefix: str) -> List[str]:
        """All files under a prefix, as keys relative to the root."""
        base = self.root / prefix
        folder = base if base.is_dir() else base.parent
        if not folder.is_dir():
            return []
        try:
            found = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
        except OSError as exc:
            raise StoreError(f"cannot list {folder}: {exc.strerror or exc}") from exc
        keys = (p.relative_to(self.root).as_posix() for p in found)
        return sorted(k for k in keys if k.startswith(prefix))

    def read_bytes(self, key: str) -> bytes:
        """The bytes of a file; ObjectNotFound when it is absent."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{path} does not exist") from exc
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write through a temporary file and an atomic rename."""
        self._write(key, data, os.replace)

    def create_bytes(self, key: str, data: bytes) -> None:
        """Write a temporary file, then hard-link it to the key: link never replaces a file."""
        self._write(key, data, os.link)

    def _write(self, key: str, data: bytes, place: Callable[[str, Path], None]) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _new_temporary(path)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                place(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except FileExistsError as exc:
            raise ObjectExists(f"{path} already exists; it was left as it was") from exc
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def read_versioned(self, key: str) -> Optional[Tuple[bytes, str]]:
        """The bytes of a file and their sha256 as the version token."""
        try:
            data = self.read_bytes(key)
        except ObjectNotFound:
            return None
        return data, _sha256(data)

    def write_if_unchanged(self, key: str, data: bytes, token: Optional[str]) -> None:
        """Compare and swap under an exclusive lock file beside the key."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.parent / f".{path.name}.lock", "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                current = self.read_versioned(key)
                current_token = None if current is None else current[1]
                if current_token != token:
                    raise ConcurrentUpdate(f"{path} changed since it was read")
                self.write_bytes(key, data)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc


class S3Store:
    """An S3 bucket (or any S3 API) under an optional key prefix, through boto3."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._max_attempts = max_attempts
        self._timeout = timeout_seconds
        self._s3: Any = None

    @property
    def client(self) -> Any:
        """A boto3 S3 client, made on first use, retrying in botocore's standard mode."""
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": "standard", "total_max_attempts": self._max_attempts},
                connect_timeout=self._timeout,
                read_timeout=self._timeout,
            )
            self._s3 = boto3.client("s3", config=config)
        return self._s3

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def location(self, key: str) -> str:
        """The s3:// URL of a key."""
        return f"s3://{self.bucket}/{self._key(key)}"

    def _error(self, action: str, key: str, exc: Exception, creating: bool = False) -> StoreError:
        from botocore.exceptions import ClientError

        where = self.location(key)
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectNotFound(f"{where} does not exist")
            if creating and code in ("PreconditionFailed", "412"):
                return ObjectExists(f"{where} already exists; it was left as it was")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return ConcurrentUpdate(f"{where} changed since it was read")
            if code == "NoSuchBucket":
                return StoreError(f"cannot {action} {where}: bucket {self.bucket!r} does not exist")
            return StoreError(f"cannot {action} {where}: {code} {message}".rstrip())
        return StoreError(f"cannot {action} {where}: {exc}")

    def list_keys(self, prefix: str) -> List[str]:
        """All keys under a prefix, following every page of the listing."""
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: List[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(item["Key"][strip:] for item in page.get("Contents", []))
        except (BotoCoreError, ClientError) as exc:
            raise self._error("list", prefix, exc) from exc
        return sorted(keys)

    def read_bytes(self, key: str) -> bytes:
        """The bytes of an object; ObjectNotFound when it is absent."""
        found = self.read_versioned(key)
        if found is None:
            raise ObjectNotFound(f"{self.location(key)} does not exist")
        return found[0]

    def write_bytes(self, key: str, data: bytes) -> None:
        """One PutObject: S3 makes an object visible whole or not at all."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("write", key, exc) from exc

    def create_bytes(self, key: str, data: bytes) -> None:
        """A PutObject with If-None-Match: * : S3 refuses it (412) when the key exists."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._error("create", key, exc, creating=True) from exc

    def read_versioned(self, key: str) -> Optional[Tuple[bytes, str]]:
        """The bytes of an object with its ETag, or None when it is absent."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read(), str(response["ETag"])
        except (BotoCoreError, ClientError) as exc:
            error = self._error("read", key, exc)
            if isinstance(error, ObjectNotFound):
                return None
            raise error from exc

    def write_if_unchanged(self, key: str, data: bytes, token: Optional[str]) -> None:
        """A conditional PutObject: If-Match the ETag read, or If-None-Match when absent."""
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfNoneMatch": "*"} if token is None else {"IfMatch": token}
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, **condition
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._error("write", key, exc) from exc
