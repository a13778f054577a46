"""What lives in the store: the layout, the weekly tranches, publishing in a safe order, verified
loading.

Layout under the store root::

    datasets/time_to_dispatch_<ISO timestamp>.csv   weekly tranches (the data team's)
    models/<model_version>/model.json              the artefact (JSON, no code)
    models/<model_version>/metadata.json           its metadata, with the artefact's sha256
    models/latest.json                             the pointer: version, keys and both sha256s
    quarantine/<tranche name>.csv                  rows a tranche set aside, with the rule each
                                                   broke and its line (pipeline/training/
                                                   validation.py)

The immutable objects are created first, only if absent (a version is unique per
publish and an object once written is never rewritten), and the pointer last, with a
conditional write, so a reader following the pointer never meets a half-published or
altered model.

The weekly tranches: the newest (to train on), the one before (drift) and those within the
history window (rare parts borrow their rows).

A tranche key is ``datasets/time_to_dispatch_<ISO timestamp>.csv``. Accepted
timestamps, with the same result on every Python version: extended or compact
ISO 8601 dates with an optional time (``T``, ``_`` or a space before it, seconds and
fractions optional) and an optional ``Z`` or ``+HH:MM`` / ``+HHMM`` / ``+HH`` offset,
e.g. ``2026-11-20T23:00:00``, ``2026-11-20T23:00:00+01:00``, ``2026-11-20T23:00:00Z``,
``20261120T230000Z``. A timestamp without an offset is taken as UTC.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, List, NamedTuple, Optional, Tuple

from pipeline.metadata import Metadata, MetadataError, read_metadata
from pipeline.model_format import DispatchModel, ModelFormatError
from pipeline.store import ConcurrentUpdate, ObjectExists, ObjectNotFound, Store, StoreError

DATASETS_PREFIX = "datasets/"
MODELS_PREFIX = "models/"
POINTER_KEY = "models/latest.json"


class ModelUnavailable(Exception):
    """No valid published model could be loaded; the message says why."""


def sha256_hex(data: bytes) -> str:
    """The hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


VERSION_NONCE_HEX = 4


def make_model_version(
    created_at: datetime, model_sha256: str, nonce: Optional[str] = None
) -> str:
    """A short version unique per publish: UTC time, the artefact's hash and a random suffix.

    Two publishes of the same artefact in the same second differ by the suffix; should
    they ever draw the same one, the create-only writes refuse the second.
    """
    suffix = secrets.token_hex(VERSION_NONCE_HEX // 2) if nonce is None else nonce
    return f"{created_at:%Y%m%d-%H%M%S}-{model_sha256[:8]}-{suffix}"


def model_key(version: str) -> str:
    """Where a version's artefact lives."""
    return f"{MODELS_PREFIX}{version}/model.json"


def metadata_key(version: str) -> str:
    """Where a version's metadata lives."""
    return f"{MODELS_PREFIX}{version}/metadata.json"


@dataclass(frozen=True)
class Pointer:
    """The content of models/latest.json: which model is current and its checksums."""

    model_version: str
    model_key: str
    model_sha256: str
    metadata_key: str
    metadata_sha256: str
    published_at: str

    def to_json(self) -> bytes:
        """The pointer as JSON bytes."""
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> "Pointer":
        """Parse a pointer; ModelUnavailable names the location when it is malformed."""
        try:
            raw = json.loads(data)
            return cls(**{name: str(raw[name]) for name in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise ModelUnavailable(f"pointer {where} is malformed: {exc!r}") from exc


@dataclass(frozen=True)
class LoadedModel:
    """A verified model with its metadata and the pointer that named it."""

    model: DispatchModel
    metadata: Metadata
    pointer: Pointer

    @property
    def version(self) -> str:
        """The model_version the API returns."""
        return self.pointer.model_version


def read_pointer(store: Store) -> Optional[Tuple[Pointer, str]]:
    """The current pointer and its version token, or None when nothing is published."""
    found = store.read_versioned(POINTER_KEY)
    if found is None:
        return None
    data, token = found
    return Pointer.from_json(data, store.location(POINTER_KEY)), token


def _verified(store: Store, key: str, expected_sha256: str) -> bytes:
    try:
        data = store.read_bytes(key)
    except ObjectNotFound as exc:
        where = store.location(key)
        raise ModelUnavailable(f"{where} named by the pointer does not exist") from exc
    actual = sha256_hex(data)
    if actual != expected_sha256:
        raise ModelUnavailable(
            f"checksum mismatch for {store.location(key)}: "
            f"sha256 {actual[:12]}... but the pointer records {expected_sha256[:12]}..."
        )
    return data


def read_verified(store: Store, pointer: Pointer) -> Tuple[bytes, bytes]:
    """The artefact and metadata bytes a pointer names, each checked against its sha256."""
    return (
        _verified(store, pointer.model_key, pointer.model_sha256),
        _verified(store, pointer.metadata_key, pointer.metadata_sha256),
    )


def load_pointed(store: Store, pointer: Pointer) -> LoadedModel:
    """Load the model a pointer names, verifying both checksums before parsing anything."""
    model_bytes, metadata_bytes = read_verified(store, pointer)
    try:
        model = DispatchModel.from_json(model_bytes)
    except ModelFormatError as exc:
        where = store.location(pointer.model_key)
        raise ModelUnavailable(f"{where} is unreadable: {exc}") from exc
    try:
        metadata = read_metadata(metadata_bytes)
    except MetadataError as exc:
        where = store.location(pointer.metadata_key)
        raise ModelUnavailable(f"{where} is unreadable: {exc}") from exc
    if metadata.model_sha256 != pointer.model_sha256:
        raise ModelUnavailable(
            f"{store.location(pointer.metadata_key)} does not describe the artefact it sits beside"
        )
    return LoadedModel(model, metadata, pointer)


def load_latest(store: Store) -> LoadedModel:
    """The current published model, verified; ModelUnavailable says why there is none."""
    try:
        found = read_pointer(store)
        if found is None:
            raise ModelUnavailable(
                f"no model is published: {store.location(POINTER_KEY)} does not exist"
            )
        return load_pointed(store, found[0])
    except StoreError as exc:
        raise ModelUnavailable(str(exc)) from exc


def publish(
    store: Store,
    model_bytes: bytes,
    metadata: Metadata,
    published_at: datetime,
    expected_token: Optional[str],
) -> Pointer:
    """Create artefact and metadata, then swing the pointer if nobody else moved it meanwhile.

    ``metadata`` must carry ``model_version`` and ``model_sha256`` (the artefact's).
    Raises ObjectExists when the version's objects already exist with other content
    (they are left as they were), and ConcurrentUpdate (both StoreErrors) when the
    pointer changed since it was read as ``expected_token``; the objects created
    then stay, complete and unreferenced.
    """
    version = metadata.model_version
    if not version:
        raise ValueError("metadata without a model_version")
    if metadata.model_sha256 != sha256_hex(model_bytes):
        raise ValueError("metadata's model_sha256 does not match the artefact")
    return publish_objects(store, version, model_bytes, metadata.to_json(), published_at,
                           expected_token)


def publish_objects(
    store: Store,
    version: str,
    model_bytes: bytes,
    metadata_bytes: bytes,
    published_at: datetime,
    expected_token: Optional[str],
) -> Pointer:
    """The order of a publish: artefact, then metadata (each created only if absent), then the
    pointer, moved only if it still holds ``expected_token``. :func:`publish` checks the
    metadata and writes it with this; raises as it does."""
    create_once(store, model_key(version), model_bytes)
    create_once(store, metadata_key(version), metadata_bytes)
    pointer = Pointer(
        model_version=version,
        model_key=model_key(version),
        model_sha256=sha256_hex(model_bytes),
        metadata_key=metadata_key(version),
        metadata_sha256=sha256_hex(metadata_bytes),
        published_at=published_at.isoformat(),
    )
    content = pointer.to_json()
    try:
        store.write_if_unchanged(POINTER_KEY, content, expected_token)
    except ConcurrentUpdate:
        # A retried conditional write whose first attempt landed (its response lost) fails
        # its own precondition: the pointer then holds exactly our bytes, naming our unique
        # version. Anything else is a rival's publication.
        if not _holds(store, POINTER_KEY, content):
            raise
    return pointer


def create_once(store: Store, key: str, data: bytes) -> None:
    """Create an immutable object; ObjectExists unless the key already holds exactly ``data``.

    A retried create whose first attempt landed (its response lost) finds the key
    present: the object is ours only if its content is byte for byte what we wrote.
    """
    try:
        store.create_bytes(key, data)
    except ObjectExists:
        if not _holds(store, key, data):
            raise


def _holds(store: Store, key: str, data: bytes) -> bool:
    """Whether a key's content is exactly ``data``."""
    try:
        return store.read_bytes(key) == data
    except StoreError:
        return False


TRANCHE_PREFIX = f"{DATASETS_PREFIX}time_to_dispatch_"
TRANCHE_SUFFIX = ".csv"
QUARANTINE_PREFIX = "quarantine/"
_SHOWN = 10

log = logging.getLogger(__name__)

_TIMESTAMP = re.compile(
    r"(?P<y>\d{4})(?P<d1>-?)(?P<m>\d{2})(?P=d1)(?P<d>\d{2})"
    r"(?:[T_ ](?P<H>\d{2})"
    r"(?:(?P<t1>:?)(?P<M>\d{2})(?:(?P=t1)(?P<S>\d{2})(?:[.,](?P<f>\d{1,6}))?)?)?)?"
    r"(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>\d{2})(?::?(?P<om>\d{2}))?)?"
)


class Tranche(NamedTuple):
    """A tranche key and the moment it names (timezone-aware, UTC)."""

    key: str
    timestamp: datetime


class TrancheChoice(NamedTuple):
    """The newest tranche, the one before it, the keys ignored as unparseable, and every
    tranche found (oldest first)."""

    latest: Optional[Tranche]
    previous: Optional[Tranche]
    ignored: Tuple[str, ...]
    found: Tuple[Tranche, ...] = ()

    def within_weeks(self, weeks: int) -> Tuple[Tranche, ...]:
        """The tranches before the newest, newest first, at most ``weeks`` weeks older than it.

        A tranche exactly ``weeks`` x 7 days older is in; none when ``weeks`` is 0.
        """
        if self.latest is None or weeks <= 0:
            return ()
        start = self.latest.timestamp - timedelta(weeks=weeks)
        return tuple(
            t for t in reversed(self.found)
            if t != self.latest and start <= t.timestamp <= self.latest.timestamp
        )


def parse_timestamp(text: str) -> Optional[datetime]:
    """The UTC moment an ISO 8601 timestamp names, or None if it is not one."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        return None
    g = match.groupdict()
    canonical = (
        f"{g['y']}-{g['m']}-{g['d']}T{g['H'] or '00'}:{g['M'] or '00'}:{g['S'] or '00'}"
        f".{(g['f'] or '0').ljust(6, '0')}"
    )
    if g["sign"]:
        canonical += f"{g['sign']}{g['oh']}:{g['om'] or '00'}"
    try:
        moment = datetime.fromisoformat(canonical)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def tranche_name(key: str) -> str:
    """A tranche's name: its file's stem (``time_to_dispatch_2026-11-20T23:00:00``)."""
    name = key.rsplit("/", 1)[-1]
    return name[:-len(TRANCHE_SUFFIX)] if name.endswith(TRANCHE_SUFFIX) else name


def quarantine_key(tranche_key: str) -> str:
    """Where the rows a tranche set aside are kept: ``quarantine/<tranche name>.csv``."""
    return f"{QUARANTINE_PREFIX}{tranche_name(tranche_key)}{TRANCHE_SUFFIX}"


def tranche_timestamp(key: str) -> Optional[datetime]:
    """The moment a tranche key names, or None if the key is not a tranche key."""
    if not (key.startswith(TRANCHE_PREFIX) and key.endswith(TRANCHE_SUFFIX)):
        return None
    return parse_timestamp(key[len(TRANCHE_PREFIX):-len(TRANCHE_SUFFIX)])


def choose_tranches(keys: Iterable[str]) -> TrancheChoice:
    """The newest and second-newest tranche by timestamp (ties broken by key)."""
    found: List[Tranche] = []
    ignored: List[str] = []
    for key in keys:
        moment = tranche_timestamp(key)
        if moment is None:
            ignored.append(key)
        else:
            found.append(Tranche(key, moment))
    found.sort(key=lambda t: (t.timestamp, t.key))
    latest = found[-1] if found else None
    previous = found[-2] if len(found) > 1 else None
    return TrancheChoice(latest, previous, tuple(ignored), tuple(found))


def find_tranches(store: Store) -> TrancheChoice:
    """List the store's datasets and choose; unparseable keys are logged as a warning."""
    choice = choose_tranches(store.list_keys(DATASETS_PREFIX))
    if choice.ignored:
        shown = ", ".join(choice.ignored[:_SHOWN])
        more = len(choice.ignored) - _SHOWN
        log.warning(
            "ignoring %d key(s) under %s that are not tranche keys "
            "(datasets/time_to_dispatch_<ISO timestamp>.csv): %s%s",
            len(choice.ignored), store.location(DATASETS_PREFIX), shown,
            f" and {more} more" if more > 0 else "",
        )
    latest, previous = choice.latest, choice.previous
    if latest is not None and previous is not None and latest.timestamp == previous.timestamp:
        log.warning(
            "tranches %s and %s name the same moment; using %s", previous.key, latest.key,
            latest.key,
        )
    return choice
