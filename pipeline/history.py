"""The history of published models: realised accuracy, rollbacks and the list operators read.

Layout (beside artefacts.py's)::

    models/<version>/realised/<tranche stem>-<sha8>.json   a model's MAE on a later tranche
    audit/rollbacks/<UTC time>-<version>-<random>.json       one object per rollback

Both kinds are immutable: written once under a key no other write uses. The
realised accuracy of a model is its error on a tranche that arrived after it was
trained (it never saw those rows); ``realised_mae`` in the list is the one on the
first such tranche. A rollback verifies the target like a service does before it
loads it, moves the pointer with the same conditional write train_model uses, and
then records who did it, when and why, and the tranche the model it moved away from
was trained on: train_model publishes nothing on that tranche (the operator's decision
holds) until a new tranche arrives or it is run with ``--force``.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from pipeline import artefacts
from pipeline.artefacts import TRANCHE_SUFFIX, tranche_timestamp
from pipeline.metadata import Metadata, MetadataError, Realised, read_metadata, read_realised
from pipeline.store import ConcurrentUpdate, ObjectExists, ObjectNotFound, Store

AUDIT_PREFIX = "audit/rollbacks/"
REALISED_DIR = "realised/"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_META = re.compile(r"models/(?P<version>[^/]+)/metadata\.json")
_REALISED = re.compile(r"models/(?P<version>[^/]+)/realised/[^/]+\.json")


class UnknownVersion(Exception):
    """No published model has this version."""


class CorruptVersion(Exception):
    """The version exists but fails verification; the message says what is wrong."""


class PointerMoved(Exception):
    """The pointer changed between reading it and moving it."""


def utc_now() -> datetime:
    """The current time in UTC."""
    return datetime.now(timezone.utc)


def compact_utc(moment: datetime) -> str:
    """``20261121T003000123456Z``: sortable, safe in a key."""
    return moment.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def tranche_stem(tranche_key: str) -> str:
    """``time_to_dispatch_<ISO timestamp>`` for a tranche key (the last path part otherwise)."""
    name = tranche_key.rsplit("/", 1)[-1]
    return name[:-len(TRANCHE_SUFFIX)] if name.endswith(TRANCHE_SUFFIX) else name


def realised_key(version: str, tranche_key: str, tranche_sha256: str) -> str:
    """Where a model's realised accuracy on one tranche (these exact bytes) is recorded."""
    return (f"{artefacts.MODELS_PREFIX}{version}/{REALISED_DIR}"
            f"{tranche_stem(tranche_key)}-{tranche_sha256[:8]}.json")


def record_realised(store: Store, record: Realised) -> Tuple[str, Realised]:
    """Write a realised-accuracy record once; an existing one (a re-run) is kept and returned."""
    key = realised_key(str(record.model_version), str(record.tranche.key),
                       str(record.tranche.sha256))
    try:
        return key, read_realised(store.read_bytes(key))
    except (ObjectNotFound, MetadataError):
        pass
    try:
        artefacts.create_once(store, key, record.to_json())
    except ObjectExists:
        # A run racing this one recorded it first: its record stands, as written.
        try:
            return key, read_realised(store.read_bytes(key))
        except MetadataError:
            return key, record
    return key, record


@dataclass
class ModelEntry:
    """One published model as the list shows it."""

    version: str
    metadata: Metadata
    metadata_sha256: str
    realised: List[Realised] = field(default_factory=list)
    rollbacks: List[Dict[str, Any]] = field(default_factory=list)
    rollbacks_from: List[Dict[str, Any]] = field(default_factory=list)
    live: bool = False
    live_by: Optional[str] = None
    published: bool = True

    @property
    def created_at(self) -> str:
        """When the model was created (ISO 8601), or '' if the metadata does not say."""
        return self.metadata.created_at or ""

    @property
    def realised_mae(self) -> Optional[float]:
        """Its MAE on the first tranche after its own, once that arrived."""
        own_key, own_sha = self.metadata.tranche.key, self.metadata.tranche.sha256
        own = tranche_timestamp(own_key) if own_key else None
        later = []
        for r in self.realised:
            moment = tranche_timestamp(r.tranche.key or "")
            if moment is None or r.tranche.sha256 == own_sha:
                continue
            if own is None or moment >= own:  # the same key re-delivered with new rows counts
                later.append((moment, r))
        if not later:
            return None
        later.sort(key=lambda pair: pair[0])
        return later[0][1].mae

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form ``models list --json`` prints."""
        report = self.metadata.report
        return {
            "model_version": self.version,
            "live": self.live,
            "live_by": self.live_by,
            "published": self.published,
            "created_at": self.created_at or None,
            "tranche_key": self.metadata.tranche.key or None,
            "rows": self.metadata.rows.total,
            "heldout_mae": self.metadata.heldout_mae,
            "realised_mae": self.realised_mae,
            "realised": [
                {"tranche_key": r.tranche.key, "mae": r.mae, "rows_scored": r.rows_scored}
                for r in self.realised
            ],
            "rollbacks_to": [
                {"at": a.get("at"), "by": a.get("by"), "reason": a.get("reason"),
                 "from": (a.get("from") or {}).get("model_version")} for a in self.rollbacks
            ],
            "rollbacks_from": [
                {"at": a.get("at"), "by": a.get("by"), "reason": a.get("reason"),
                 "to": (a.get("to") or {}).get("model_version")} for a in self.rollbacks_from
            ],
            "report": None if report is None else report.to_data(),
        }


@dataclass
class History:
    """Every published model (newest first), the live pointer and every rollback."""

    models: List[ModelEntry]
    pointer: Optional[artefacts.Pointer]
    rollbacks: List[Dict[str, Any]]
    unreadable: List[str]

    def find(self, version: str) -> Optional[ModelEntry]:
        """The entry of a version, if it is published."""
        return next((m for m in self.models if m.version == version), None)


def _read_json(store: Store, key: str) -> Any:
    return json.loads(store.read_bytes(key))


def read_rollbacks(store: Store) -> List[Dict[str, Any]]:
    """Every rollback audit record, oldest first (unreadable ones skipped)."""
    found = []
    for key in store.list_keys(AUDIT_PREFIX):
        try:
            record = _read_json(store, key)
        except (ObjectNotFound, ValueError):
            continue
        if isinstance(record, dict):
            record["key"] = key
            found.append(record)
    return sorted(found, key=lambda r: (str(r.get("at", "")), r["key"]))


def pointer_and_token(store: Store) -> Tuple[Optional[artefacts.Pointer], Optional[str]]:
    """The live pointer (None when absent or malformed) and its version token for a write."""
    found = store.read_versioned(artefacts.POINTER_KEY)
    if found is None:
        return None, None
    data, token = found
    try:
        return artefacts.Pointer.from_json(data, store.location(artefacts.POINTER_KEY)), token
    except artefacts.ModelUnavailable:
        return None, token


def read_history(store: Store) -> History:
    """Every published model with its realised accuracy, rollbacks and the live marker."""
    keys = store.list_keys(artefacts.MODELS_PREFIX)
    present = set(keys)
    models: List[ModelEntry] = []
    unreadable: List[str] = []
    realised_keys: Dict[str, List[str]] = {}
    for key in keys:
        match = _REALISED.fullmatch(key)
        if match:
            realised_keys.setdefault(match["version"], []).append(key)
    for key in keys:
        match = _META.fullmatch(key)
        if not match or artefacts.model_key(match["version"]) not in present:
            continue
        version = match["version"]
        try:
            data = store.read_bytes(key)
            metadata = read_metadata(data)
        except (ObjectNotFound, MetadataError):
            unreadable.append(version)
            continue
        entry = ModelEntry(version, metadata, artefacts.sha256_hex(data))
        for rkey in realised_keys.get(version, []):
            try:
                entry.realised.append(read_realised(store.read_bytes(rkey)))
            except (ObjectNotFound, MetadataError):
                continue
        models.append(entry)
    models.sort(key=lambda m: (m.created_at, m.version), reverse=True)

    pointer, _ = pointer_and_token(store)
    rollbacks = read_rollbacks(store)
    by_version = {m.version: m for m in models}
    for record in rollbacks:
        target = by_version.get(_side_version(record, "to"))
        if target is not None:
            target.rollbacks.append(record)
        source = by_version.get(_side_version(record, "from"))
        if source is not None:
            source.rollbacks_from.append(record)
    ever_live = ever_pointed(models, pointer, rollbacks)
    for entry in models:
        # Models written before previous_model was recorded cannot tell: they count as published.
        entry.published = (not entry.metadata.records_previous_model
                           or entry.version in ever_live)
    if pointer is not None and pointer.model_version in by_version:
        live = by_version[pointer.model_version]
        live.live = True
        moved_here = [r for r in live.rollbacks if r.get("to") == _pointer_dict(pointer)]
        live.live_by = "rolled back" if moved_here else "published"
    return History(models, pointer, rollbacks, unreadable)


def _side_version(record: Mapping[str, Any], side: str) -> str:
    """The model version a rollback record names as its ``from`` or ``to`` side ('' if none)."""
    moved = record.get(side)
    return str(moved.get("model_version", "")) if isinstance(moved, dict) else ""


def ever_pointed(
    models: List[ModelEntry], pointer: Optional[artefacts.Pointer],
    rollbacks: List[Dict[str, Any]],
) -> Set[str]:
    """Versions the pointer named at some time: now, as a later model's predecessor, or in a
    rollback. A complete model named by none lost the pointer race or its run was killed
    before it moved the pointer."""
    named = {pointer.model_version} if pointer is not None else set()
    for entry in models:
        previous = entry.metadata.previous_model
        if previous is not None and previous.model_version:
            named.add(previous.model_version)
    for record in rollbacks:
        for side in ("from", "to"):
            moved = record.get(side)
            if isinstance(moved, dict) and moved.get("model_version"):
                named.add(str(moved["model_version"]))
    return named


def _version_in(pointer_bytes: bytes) -> str:
    try:
        return artefacts.Pointer.from_json(pointer_bytes, "").model_version
    except artefacts.ModelUnavailable:
        return "a malformed pointer"


def _pointer_dict(pointer: artefacts.Pointer) -> Dict[str, str]:
    return json.loads(pointer.to_json())  # type: ignore[no-any-return]


def recorded_metadata_sha256(history: History, version: str) -> Optional[str]:
    """The sha256 of a version's metadata as a pointer once recorded it, if any did."""
    for entry in history.models:
        previous = entry.metadata.previous_model
        if previous is not None and previous.model_version == version:
            if previous.metadata_sha256:
                return previous.metadata_sha256
    for record in history.rollbacks:
        for side in ("from", "to"):
            pointer = record.get(side)
            if isinstance(pointer, dict) and pointer.get("model_version") == version:
                if pointer.get("metadata_sha256"):
                    return str(pointer["metadata_sha256"])
    return None


def valid_version(version: str) -> bool:
    """Whether a string can be a model version (and so a safe key part)."""
    return bool(_VERSION.fullmatch(version)) and ".." not in version and version != "latest.json"


def verified_pointer(store: Store, version: str, history: History) -> artefacts.Pointer:
    """A pointer to a published version after verifying it as a service would load it."""
    if not valid_version(version):
        raise UnknownVersion(f"{version!r} is not a model version")
    try:
        metadata_bytes = store.read_bytes(artefacts.metadata_key(version))
        store.read_bytes(artefacts.model_key(version))
    except ObjectNotFound:
        raise UnknownVersion(
            f"no published model {version} in {store.location(artefacts.MODELS_PREFIX)}"
        ) from None
    try:
        metadata = read_metadata(metadata_bytes)
    except MetadataError as exc:
        where = store.location(artefacts.metadata_key(version))
        raise CorruptVersion(f"{where} is unreadable: {exc}") from None
    if metadata.model_version != version:
        raise CorruptVersion(
            f"{store.location(artefacts.metadata_key(version))} does not describe model {version}"
        )
    actual = artefacts.sha256_hex(metadata_bytes)
    recorded = recorded_metadata_sha256(history, version)
    pointer = artefacts.Pointer(
        model_version=version,
        model_key=artefacts.model_key(version),
        model_sha256=metadata.model_sha256 or "",
        metadata_key=artefacts.metadata_key(version),
        metadata_sha256=recorded or actual,
        published_at=utc_now().isoformat(),
    )
    try:
        artefacts.load_pointed(store, pointer)
    except artefacts.ModelUnavailable as exc:
        raise CorruptVersion(str(exc)) from None
    return pointer


@dataclass(frozen=True)
class RollbackHold:
    """A rollback away from a model trained on a tranche: train_model publishes nothing on it."""

    record: Dict[str, Any]

    def explain(self) -> str:
        """One line: who rolled back from which model to which, when, why, and what retrains."""
        reason = " ".join(str(self.record.get("reason") or "").split())
        return (f"{self.record.get('by')} rolled back from model "
                f"{_side_version(self.record, 'from')} (trained on this very tranche) to "
                f"{_side_version(self.record, 'to')} at {self.record.get('at')}"
                f"{f' ({reason})' if reason else ''}; a new tranche or --force retrains")


def rolled_back_tranche(store: Store, record: Mapping[str, Any]) -> Optional[str]:
    """The sha256 of the tranche the model a rollback moved away from was trained on.

    Recorded in the rollback since it is held; for an older record, read from that model's
    metadata (None when it cannot be read).
    """
    noted = record.get("from_tranche")
    if isinstance(noted, dict) and noted.get("sha256"):
        return str(noted["sha256"])
    version = _side_version(record, "from")
    if not valid_version(version):
        return None
    try:
        return read_metadata(store.read_bytes(artefacts.metadata_key(version))).tranche.sha256
    except (ObjectNotFound, MetadataError):
        return None


def rollback_hold(store: Store, tranche_sha256: str) -> Optional[RollbackHold]:
    """The newest rollback away from a model trained on these tranche bytes, if any.

    train_model publishes nothing on such a tranche (unless --force): retraining would bring
    back the model, or one like it, that an operator decided against.
    """
    for record in reversed(read_rollbacks(store)):
        if rolled_back_tranche(store, record) == tranche_sha256:
            return RollbackHold(record)
    return None


@dataclass(frozen=True)
class RollbackDone:
    """A completed rollback: the pointers before and after and where it is recorded."""

    previous: Optional[artefacts.Pointer]
    pointer: artefacts.Pointer
    audit_key: Optional[str]
    record: Dict[str, Any]


def _tranche_of(
    history: History, pointer: Optional[artefacts.Pointer]
) -> Optional[Dict[str, Optional[str]]]:
    """The key and sha256 of the tranche a pointer's model was trained on, if its metadata says."""
    entry = None if pointer is None else history.find(pointer.model_version)
    if entry is None:
        return None
    tranche = entry.metadata.tranche
    return None if tranche.sha256 is None else {"key": tranche.key, "sha256": tranche.sha256}


def rollback(store: Store, version: str, reason: str, by: str) -> RollbackDone:
    """Verify a version, move the pointer to it (conditionally), then record the rollback.

    Raises UnknownVersion, CorruptVersion, PointerMoved, or StoreError. Rolling back
    to the live version changes nothing and records nothing (``audit_key`` None).
    """
    previous, token = pointer_and_token(store)
    history = read_history(store)
    target = verified_pointer(store, version, history)
    if previous is not None and previous.model_version == version:
        return RollbackDone(previous, previous, None, {})
    try:
        store.write_if_unchanged(artefacts.POINTER_KEY, target.to_json(), token)
    except ConcurrentUpdate:
        current = store.read_versioned(artefacts.POINTER_KEY)
        if current is None or current[0] != target.to_json():
            now = "nothing" if current is None else _version_in(current[0])
            raise PointerMoved(
                f"{store.location(artefacts.POINTER_KEY)} changed while rolling back (it now "
                f"names {now}); this rollback changed nothing: look at `list` and try again"
            ) from None
    moment = utc_now()
    record = {
        "action": "rollback",
        "at": moment.isoformat(),
        "by": by,
        "reason": reason,
        "from": None if previous is None else _pointer_dict(previous),
        "from_tranche": _tranche_of(history, previous),
        "to": _pointer_dict(target),
    }
    key = f"{AUDIT_PREFIX}{compact_utc(moment)}-{version}-{secrets.token_hex(4)}.json"
    artefacts.create_once(store, key, json.dumps(record, indent=2, sort_keys=True).encode())
    return RollbackDone(previous, target, key, record)
