"""The served model as columns: every curve's knots in one array, found by the code's position.

A published artefact of 100,000 parts is 20+ MB of JSON; parsed into Python objects it
takes 200+ MB and seconds of interpreter time. So the service never builds a
:class:`~pipeline.model_format.DispatchModel`: :func:`prepare` (run in a child process by
:func:`prepare_isolated`, so neither its memory nor its interpreter lock reach the
process that answers requests) parses the artefact with orjson, checks it with
:func:`~pipeline.model_format.check_artefact` (the format's one checker, which
``DispatchModel.from_json`` uses too: numpy over all parts at once) and returns its flat
arrays: all knots concatenated with each code's offsets. :class:`Lookup` wraps those arrays
for answering: a dict from code to position, a binary search for one answer (pure Python
over memoryviews) and a vectorised one for a batch
(:meth:`~pipeline.model_format.Segments.evaluate`), equal row for row.
"""
from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from bisect import bisect_right
from contextlib import suppress
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import orjson

from pipeline.metadata import HeldOut, Metadata, MetadataError, parse_document, read_metadata
from pipeline.model_format import (
    BASES,
    CatalogueSegments,
    ModelFormatError,
    Segments,
    check_artefact,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
MATCH_WIDTH = 32
MATCH_WINDOW = 12
MATCH_VARIANT_WINDOW = 3
MATCH_CUTOFF = 0.6
BUILD_CHUNK = 10_000
SUMMARY_ITEMS = 64
SUMMARY_NODES = 2_000
SUMMARY_TEXT = 1_000
SUMMARY_BYTES = 32_768
PRIORITY_KEYS = ("model_version", "model_sha256", "created_at", "trained_at", "metrics", "bases",
                 "previous_model", "tranche")
BACKGROUND_NICENESS = 5
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class MetadataMismatch(ModelFormatError):
    """The metadata is not JSON or does not describe the artefact beside it."""


class Prepared(NamedTuple):
    """A verified, checked artefact and its metadata, as arrays (picklable, compact)."""

    format_version: int
    codes_text: str
    code_ends: IntArray
    curves: Segments
    bounds: Optional[Segments]
    ranges: Optional[FloatArray]
    bases: Optional[npt.NDArray[np.int8]]
    catalogue: Optional[CatalogueSegments]
    metadata: Dict[str, Any]
    coverage: FloatArray
    matches: "MatchIndex"


def prepare(model_bytes: bytes, metadata_bytes: bytes, model_sha256: str) -> Prepared:
    """Parse and check an artefact and its metadata (ModelFormatError says what is wrong)."""
    try:
        parsed = orjson.loads(model_bytes)
    except orjson.JSONDecodeError as exc:
        raise ModelFormatError(f"model artefact is not JSON: {exc}") from exc
    checked = check_artefact(parsed)
    del parsed
    codes = checked.codes
    document, metadata = _metadata(metadata_bytes, model_sha256)
    lengths = np.fromiter(map(len, codes), dtype=np.int64, count=len(codes))
    return Prepared(
        checked.format_version, "".join(codes), np.cumsum(lengths), checked.curves,
        checked.bounds, checked.ranges, checked.bases, checked.catalogue,
        summarise_metadata(document), _coverage(metadata.metrics.held_out, codes),
        match_index(codes),
    )


def prepare_isolated(
    model_bytes: bytes, metadata_bytes: bytes, model_sha256: str, background: bool = False
) -> Prepared:
    """:func:`prepare` in a fresh child process: its memory and CPU never touch this one's.

    The child (``python -m pipeline.api.lookup``) imports only numpy, orjson, pydantic and
    the model format and metadata modules. ``background`` lowers its scheduling priority and
    lets it run on any CPU this process may use, so the requests being answered meanwhile
    come first. Raises what :func:`prepare` raises, or ChildProcessError when the child dies
    (killed, out of memory).
    """
    command = [sys.executable, "-m", "pipeline.api.lookup", model_sha256]
    if background:
        command.append("--background")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert child.stdin is not None and child.stdout is not None
    with child.stdin:  # the child answers only once it has read everything
        child.stdin.write(b"%d\n" % len(model_bytes))
        child.stdin.write(model_bytes)
        child.stdin.write(metadata_bytes)
    # The arrays come out of band (pickle protocol 5) and are used where they land.
    answer: Any = child.stdout
    sizes = [int(size) for size in answer.readline().split()] or [-1]
    data = answer.read(max(sizes[0], 0))
    buffers = [bytearray(size) for size in sizes[1:]]
    complete = len(data) == sizes[0] and all(
        answer.readinto(buffer) == len(buffer) for buffer in buffers
    )
    child.wait()
    if child.returncode != 0 or not complete:
        raise ChildProcessError(f"the model parser exited with {child.returncode}")
    outcome, value = pickle.loads(data, buffers=buffers)  # our own child's answer
    if outcome == "error":
        raise value
    prepared: Prepared = value
    return prepared


def _child(argv: Sequence[str]) -> int:
    """The child of :func:`prepare_isolated`: read the artefact on stdin, answer on stdout."""
    if "--background" in argv:
        os.nice(BACKGROUND_NICENESS)
        if hasattr(os, "sched_setaffinity"):
            with suppress(OSError):
                os.sched_setaffinity(0, range(os.cpu_count() or 1))
    given = sys.stdin.buffer
    size = int(given.readline())
    model_bytes = given.read(size)
    metadata_bytes = given.read()
    try:
        answer: Tuple[str, Any] = ("ok", prepare(model_bytes, metadata_bytes, argv[0]))
    except ModelFormatError as exc:
        answer = ("error", exc)
    buffers: List[pickle.PickleBuffer] = []
    data = pickle.dumps(answer, protocol=5, buffer_callback=buffers.append)
    parts: List[Any] = [data] + [buffer.raw() for buffer in buffers]
    out = sys.stdout.buffer
    out.write(" ".join(str(len(part)) for part in parts).encode() + b"\n")
    for part in parts:
        out.write(part)
    out.flush()
    return 0


def _metadata(data: bytes, model_sha256: str) -> Tuple[Dict[str, Any], Metadata]:
    """The metadata document as parsed and as read; MetadataMismatch unless it describes the
    artefact."""
    try:
        document = parse_document(data)
    except MetadataError as exc:
        raise MetadataMismatch(f"model metadata is {exc}") from exc
    metadata = read_metadata(document)
    if metadata.model_sha256 != model_sha256:
        raise MetadataMismatch("the metadata does not describe the artefact it sits beside")
    return document, metadata


def _coverage(held_out: HeldOut, codes: Sequence[str]) -> FloatArray:
    """Per code, its held-out p90 coverage as recorded (NaN where absent or not finite)."""
    per_code = held_out.per_product_code
    if not per_code:
        return np.full(len(codes), math.nan)
    found = (per_code.get(code) for code in codes)
    values = np.fromiter((math.nan if s is None or s.coverage_p90 is None else s.coverage_p90
                          for s in found), np.float64, len(codes))
    values[~np.isfinite(values)] = math.nan
    return values


def summarise(value: Any, budget: Optional[List[int]] = None, items: int = SUMMARY_ITEMS) -> Any:
    """Parsed JSON made small and strict: big containers become a note saying their size.

    Containers of more than ``items`` entries, and anything past the budget of values
    (``SUMMARY_NODES``), are replaced by a string such as ``"<object with 100000 keys>"``;
    long strings are clipped, NaN and infinities become null and integers beyond 64 bits
    strings.
    """
    left = [SUMMARY_NODES] if budget is None else budget
    left[0] -= 1
    if isinstance(value, dict):
        if len(value) > items or left[0] < len(value):
            return f"<object with {len(value)} keys>"
        return {str(k): summarise(v, left, items) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > items or left[0] < len(value):
            return f"<array of {len(value)} items>"
        return [summarise(v, left, items) for v in value]
    if isinstance(value, str) and len(value) > SUMMARY_TEXT:
        return value[:SUMMARY_TEXT] + "..."
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return str(value)
    return value


def summarise_metadata(metadata: Dict[str, Any]) -> Dict[str, Any]:
    """The metadata summarised, what the API reads first (metrics, bases) summarised first,
    and smaller still if it would not fit ``SUMMARY_BYTES`` of JSON."""
    first = [key for key in PRIORITY_KEYS if key in metadata]
    order = first + [key for key in metadata if key not in first]
    for items, nodes in ((SUMMARY_ITEMS, SUMMARY_NODES), (16, 400), (4, 60)):
        budget = [nodes]
        done = {str(key): summarise(metadata[key], budget, items) for key in order}
        summary = {str(key): done[str(key)] for key in metadata}
        if len(orjson.dumps(summary)) <= SUMMARY_BYTES:
            break
    return summary


class MatchIndex(NamedTuple):
    """The codes casefolded and sorted by their start and by their (reversed) end."""

    heads: npt.NDArray[np.bytes_]
    head_order: IntArray
    tails: npt.NDArray[np.bytes_]
    tail_order: IntArray


def _keys(texts: Sequence[str]) -> Tuple[npt.NDArray[np.bytes_], npt.NDArray[np.bytes_]]:
    """Each text's casefolded first and (reversed) last ``MATCH_WIDTH`` bytes."""
    folded = [text.casefold().encode() for text in texts]
    width = f"S{MATCH_WIDTH}"
    heads = np.array([f[:MATCH_WIDTH] for f in folded], dtype=width)
    tails = np.array([f[::-1][:MATCH_WIDTH] for f in folded], dtype=width)
    return heads, tails


def match_index(codes: Sequence[str]) -> MatchIndex:
    """The sorted keys in which close matches of a code are looked up."""
    heads, tails = _keys(codes)
    head_order = np.argsort(heads, kind="stable").astype(np.int64)
    tail_order = np.argsort(tails, kind="stable").astype(np.int64)
    return MatchIndex(heads[head_order], head_order, tails[tail_order], tail_order)


def _near(keys: npt.NDArray[np.bytes_], order: IntArray, probes: npt.NDArray[np.bytes_],
          windows: IntArray) -> IntArray:
    """Positions of the codes within ``windows`` places of each probe in sorted order."""
    at = np.searchsorted(keys, probes)
    spans = [np.arange(max(a - w, 0), min(a + w, len(keys))) for a, w in zip(at, windows)]
    found: IntArray = order[np.concatenate(spans)] if spans else order[:0]
    return found


class Lookup:
    """A prepared model ready to answer: codes by position, curves as columns."""

    def __init__(self, prepared: Prepared) -> None:
        ends = prepared.code_ends.tolist()
        text = prepared.codes_text
        codes: List[str] = []
        index: Dict[str, int] = {}
        start = 0
        # In chunks, so a thread building this never holds the interpreter for long.
        for chunk in range(0, len(ends), BUILD_CHUNK):
            stops = ends[chunk:chunk + BUILD_CHUNK]
            piece = [text[a:b] for a, b in zip([start] + stops[:-1], stops)]
            start = stops[-1]
            index.update(zip(piece, range(len(codes), len(codes) + len(piece))))
            codes.extend(piece)
        self.codes: Tuple[str, ...] = tuple(codes)
        self.index = index
        self.format_version = prepared.format_version
        self.curves = prepared.curves
        self.bounds = prepared.bounds
        self.ranges = prepared.ranges
        self.bases = prepared.bases
        self.catalogue = prepared.catalogue
        self.coverage = prepared.coverage
        self.matches = prepared.matches
        self._curve = _views(prepared.curves)
        self._bound = None if prepared.bounds is None else _views(prepared.bounds)
        ranges = prepared.ranges
        self._ranges = None if ranges is None else np.ascontiguousarray(ranges).ravel().data
        # From the smallest to the largest orders_placed any code was trained on: the range
        # of the whole model, and so of its catalogue curve.
        self.orders_range: Optional[Tuple[float, float]] = None
        if ranges is not None and len(ranges):
            self.orders_range = (float(ranges[:, 0].min()), float(ranges[:, 1].max()))
        self._bases = None if prepared.bases is None else prepared.bases.data
        catalogue = prepared.catalogue
        self._catalogue = None if catalogue is None else (
            _views(catalogue.curve), _views(catalogue.bound)
        )

    @property
    def has_catalogue(self) -> bool:
        """Whether the model has a catalogue curve to answer parts it has never seen."""
        return self._catalogue is not None

    def catalogue_answer(self, orders: float) -> Tuple[float, float]:
        """The catalogue curve's estimate and p90 bound at ``orders`` (needs a catalogue)."""
        assert self._catalogue is not None
        curve, bound = self._catalogue
        estimate = _at(curve, 0, orders)
        return estimate, max(_at(bound, 0, orders), estimate)

    def __len__(self) -> int:
        """How many product codes the model knows."""
        return len(self.codes)

    def estimate(self, i: int, orders: float) -> float:
        """Code ``i``'s estimate at ``orders`` (pure Python: the single-request hot path)."""
        return _at(self._curve, i, orders)

    def upper(self, i: int, orders: float, estimate: float) -> Optional[float]:
        """Code ``i``'s p90 bound at ``orders``, never below ``estimate``; None without bounds."""
        if self._bound is None:
            return None
        return max(_at(self._bound, i, orders), estimate)

    def extrapolated(self, i: int, orders: float) -> Optional[bool]:
        """Whether ``orders`` lies outside code ``i``'s trained range; None if not recorded."""
        ranges = self._ranges
        if ranges is None:
            return None
        return not ranges[2 * i] <= orders <= ranges[2 * i + 1]

    def outside_trained(self, orders: float) -> Optional[bool]:
        """Whether ``orders`` lies outside :attr:`orders_range`; None if not recorded."""
        trained = self.orders_range
        if trained is None:
            return None
        return not trained[0] <= orders <= trained[1]

    def basis(self, i: int) -> Optional[str]:
        """What code ``i``'s curve rests on; None for a model without bases."""
        return None if self._bases is None else BASES[self._bases[i]]

    def positions(self, codes: Iterable[str]) -> IntArray:
        """Each code's position, -1 where the model does not know it."""
        get = self.index.get
        return np.array([get(code, -1) for code in codes], dtype=np.int64)

    def close_matches(self, code: str, limit: int = 5) -> List[str]:
        """Up to ``limit`` known codes most like ``code`` (a typo's likely intent), best first.

        A few binary searches find the candidates: the codes nearest in sorted order by
        their start and by their end (casefolded), for the code and for each variant of it
        with one character left out; only those are ranked, by difflib's ratio (>= 0.6).
        """
        if not self.codes:
            return []
        folded = code.casefold()
        shorter = range(min(len(folded), MATCH_WIDTH))
        variants = [folded] + [folded[:i] + folded[i + 1:] for i in shorter]
        heads, tails = _keys(variants)
        windows = np.full(len(variants), MATCH_VARIANT_WINDOW)
        windows[0] = MATCH_WINDOW
        index = self.matches
        picked = set(_near(index.heads, index.head_order, heads, windows).tolist())
        picked.update(_near(index.tails, index.tail_order, tails, windows).tolist())
        scored = []
        for i in picked:
            matcher = SequenceMatcher(None, folded, self.codes[i].casefold())
            if matcher.real_quick_ratio() >= MATCH_CUTOFF and matcher.quick_ratio() >= MATCH_CUTOFF:
                ratio = matcher.ratio()
                if ratio >= MATCH_CUTOFF:
                    scored.append((-ratio, self.codes[i]))
        return [found for _, found in sorted(scored)[:limit]]


Views = Tuple[memoryview, memoryview, memoryview]


def _views(segments: Segments) -> Views:
    # Memoryviews, not lists: items come out as Python numbers, and the collector never
    # walks 100,000 entries.
    return segments.knots.data, segments.values.data, segments.offsets.data


def _at(views: Views, i: int, orders: float) -> float:
    # One curve at one order count in pure Python: the only such path (a single answer's);
    # Segments.evaluate does the same arithmetic for many rows at once.
    knots, values, offsets = views
    low, high = offsets[i], offsets[i + 1]
    j = min(max(bisect_right(knots, orders, low, high) - 1, low), high - 2)
    t0, v0 = knots[j], values[j]
    slope = (values[j + 1] - v0) / (knots[j + 1] - t0)
    return max(v0 + slope * (orders - t0), 0.0)


if __name__ == "__main__":
    # Through the importable module, so what is pickled names pipeline.api.lookup, not __main__.
    from pipeline.api.lookup import _child as child

    sys.exit(child(sys.argv[1:]))
