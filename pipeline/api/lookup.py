"""The served model as columns: every curve's knots in one array, found by the code's position.

A published artefact of 100,000 parts is 20+ MB of JSON; parsed into Python objects it
takes 200+ MB and seconds of interpreter time. So the service never builds a
:class:`~pipeline.model_format.DispatchModel`: :func:`prepare` (run in a child process by
:func:`prepare_isolated`, so neither its memory nor its interpreter lock reach the
process that answers requests) parses the artefact with orjson, checks it as strictly
as :meth:`DispatchModel.from_json <pipeline.model_format.DispatchModel.from_json>` does, with
numpy over all parts at once, and returns flat arrays: all knots concatenated with each
code's offsets. :class:`Lookup` wraps those arrays for answering: a dict from code to
position, a binary search for one answer (pure Python over memoryviews) and a
vectorised one for a batch, equal row for row.
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
from itertools import chain
from operator import methodcaller
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt
import orjson

from pipeline.metadata import HeldOut, Metadata, MetadataError, parse_document, read_metadata
from pipeline.model_format import (
    BASES,
    BASIS_KEY,
    BOUND_KEY,
    BOUND_TOLERANCE,
    CATALOGUE_BASIS,
    CATALOGUE_KEY,
    RANGE_KEY,
    ModelFormatError,
    checked_document,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
NO_BASIS = -1
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


class Segments(NamedTuple):
    """Piecewise-linear curves, one per code: code i's are ``knots[offsets[i]:offsets[i + 1]]``."""

    knots: FloatArray
    values: FloatArray
    offsets: IntArray

    def evaluate(self, which: IntArray, orders: FloatArray) -> FloatArray:
        """Curve ``which[r]`` at ``orders[r]`` for every row r, floored at zero.

        A vectorised ``bisect_right`` within each row's curve, then the same arithmetic as
        :meth:`Curve.predict_one <pipeline.model_format.Curve.predict_one>`, so results are equal.
        """
        low = self.offsets[which]
        high = self.offsets[which + 1]
        left, right = low.copy(), high.copy()
        top = len(self.knots) - 1
        steps = int(np.diff(self.offsets).max(initial=1)).bit_length() + 1
        for _ in range(steps):
            open_ = left < right
            middle = (left + right) >> 1
            above = open_ & (self.knots[np.minimum(middle, top)] <= orders)
            left = np.where(above, middle + 1, left)
            right = np.where(open_ & ~above, middle, right)
        i = np.minimum(np.maximum(left - 1, low), high - 2)
        t0, v0 = self.knots[i], self.values[i]
        slope = (self.values[i + 1] - v0) / (self.knots[i + 1] - t0)
        result: FloatArray = np.maximum(v0 + slope * (orders - t0), 0.0)
        return result

    def end_slopes(self) -> FloatArray:
        """Each curve's slope beyond its last knot."""
        last = self.offsets[1:] - 1
        slopes: FloatArray = (self.values[last] - self.values[last - 1]) / (
            self.knots[last] - self.knots[last - 1]
        )
        return slopes


class Catalogue(NamedTuple):
    """The catalogue-wide curve and its p90 bound, as one-curve segments."""

    curve: Segments
    bound: Segments


class Prepared(NamedTuple):
    """A verified, checked artefact and its metadata, as arrays (picklable, compact)."""

    format_version: int
    codes_text: str
    code_ends: IntArray
    curves: Segments
    bounds: Optional[Segments]
    ranges: Optional[FloatArray]
    bases: Optional[npt.NDArray[np.int8]]
    catalogue: Optional[Catalogue]
    metadata: Dict[str, Any]
    coverage: FloatArray
    matches: "MatchIndex"


def prepare(model_bytes: bytes, metadata_bytes: bytes, model_sha256: str) -> Prepared:
    """Parse and check an artefact and its metadata (ModelFormatError says what is wrong)."""
    document = _document(model_bytes)
    raw: Dict[str, Any] = document["curves"]
    version: int = document["format_version"]
    codes = sorted(raw)
    specs = [raw[code] for code in codes]
    curves = _segments(codes, specs, "")
    bounds = ranges = bases = catalogue = None
    if version >= 2:
        bound_specs = _covering(codes, _field(specs, BOUND_KEY), "bounds")
        if bound_specs is not None:
            bounds = _segments(codes, bound_specs, f" {BOUND_KEY}")
            _check_bounds(codes, curves, bounds)
        range_specs = _covering(codes, _field(specs, RANGE_KEY), "ranges")
        if range_specs is not None:
            ranges = _ranges(codes, range_specs)
    if version >= 3:
        basis_specs = _covering(codes, _field(specs, BASIS_KEY), "bases")
        if basis_specs is not None:
            bases = _bases(codes, basis_specs)
        if document.get(CATALOGUE_KEY) is not None:
            catalogue = _catalogue(document[CATALOGUE_KEY])
    document, metadata = _metadata(metadata_bytes, model_sha256)
    lengths = np.fromiter(map(len, codes), dtype=np.int64, count=len(codes))
    return Prepared(
        version, "".join(codes), np.cumsum(lengths), curves, bounds, ranges, bases, catalogue,
        summarise_metadata(document), _coverage(metadata.held_out, codes), match_index(codes),
    )


def prepare_isolated(
    model_bytes: bytes, metadata_bytes: bytes, model_sha256: str, background: bool = False
) -> Prepared:
    """:func:`prepare` in a fresh child process: its memory and CPU never touch this one's.

    The child (``python -m pipeline.api.lookup``) imports only numpy, orjson and the model
    module. ``background`` lowers its scheduling priority and lets it run on any CPU this
    process may use, so the requests being answered meanwhile come first. Raises what
    :func:`prepare` raises, or ChildProcessError when the child dies (killed, out of memory).
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


def _document(data: bytes) -> Dict[str, Any]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ModelFormatError(f"model artefact is not JSON: {exc}") from exc
    return checked_document(document)


def _field(specs: Sequence[Dict[str, Any]], key: str) -> List[Any]:
    """Each spec's value for ``key`` (None where absent)."""
    return list(map(methodcaller("get", key), specs))


def _covering(codes: Sequence[str], found: List[Any], name: str) -> Optional[List[Any]]:
    """The per-code values if every code has one, None if none has; else ModelFormatError."""
    absent = found.count(None)
    if absent == len(codes):
        return None
    if absent:
        missing = [code for code, value in zip(codes, found) if value is None]
        raise ModelFormatError(
            f"{name} must cover every product code or none (differ in {missing[:5]})"
        )
    return found


def _segments(codes: Sequence[str], specs: Sequence[Any], suffix: str) -> Segments:
    """Curves checked as model.py's parser does: >= 2 finite knots, increasing, values rising."""

    def fail(position: int, what: str) -> None:
        raise ModelFormatError(what.format(repr(codes[position] + suffix)))

    def first(bad: BoolArray, what: str) -> None:
        if bad.any():
            fail(int(np.flatnonzero(bad)[0]), what)

    if set(map(type, specs)) != {dict}:
        first(np.array([type(spec) is not dict for spec in specs]), "curve for {} is not an object")
    knots, values = _field(specs, "knots"), _field(specs, "values")
    if set(map(type, knots)) | set(map(type, values)) != {list}:
        first(np.array([type(k) is not list or type(v) is not list
                        for k, v in zip(knots, values)]), "curve for {} lacks knots or values")
    counts = np.fromiter(map(len, knots), dtype=np.int64, count=len(knots))
    value_counts = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    first((counts < 2) | (counts != value_counts),
          "curve for {} needs >= 2 knots and one value per knot")
    offsets = np.concatenate(([0], np.cumsum(counts)))
    total = int(offsets[-1])

    def column(lists: List[Any]) -> FloatArray:
        if not set(map(type, chain.from_iterable(lists))) <= {int, float}:
            kinds = np.fromiter((type(x) in (int, float) for x in chain.from_iterable(lists)),
                                np.bool_, total)
            first(np.add.reduceat(~kinds, offsets[:-1]) > 0,
                  "curve for {} holds a value that is not a number")
        with np.errstate(over="ignore"):
            return np.fromiter(chain.from_iterable(lists), np.float64, total)

    k_arr, v_arr = column(knots), column(values)
    by_code = offsets[:-1]

    def per_code(bad: BoolArray) -> BoolArray:
        flagged: BoolArray = np.add.reduceat(bad, by_code) > 0
        return flagged

    first(per_code(~(np.isfinite(k_arr) & np.isfinite(v_arr))),
          "curve for {} holds a value that is not finite")
    within = np.ones(total, dtype=np.bool_)
    within[by_code] = False  # a curve's first knot has no predecessor in its curve
    step_k = np.concatenate(([0.0], np.diff(k_arr)))
    step_v = np.concatenate(([0.0], np.diff(v_arr)))
    first(per_code(within & ~(step_k > 0)), "knots of {} are not strictly increasing")
    first(per_code(within & (step_v < 0)) | (v_arr[by_code] < 0),
          "values of {} are negative or decreasing")
    return Segments(k_arr, v_arr, offsets)


def _check_bounds(codes: Sequence[str], curves: Segments, bounds: Segments) -> None:
    """ModelFormatError unless each bound is >= its estimate at 0, every knot and beyond."""
    problem = bound_violations(curves, bounds)
    if problem is not None:
        i, text = problem
        raise ModelFormatError(f"p90 bound of {codes[i]!r} {text}")


def bound_violations(curves: Segments, bounds: Segments) -> Optional[Tuple[int, str]]:
    """The first code (position) whose bound falls below its estimate and why, or None.

    The vectorised form of :func:`pipeline.model_format.bound_violation`: both curves at 0 and at
    every knot of either, with the same tolerance, then the slopes beyond the last knots.
    """
    n = len(curves.offsets) - 1
    owners = np.arange(n)
    points = np.concatenate((np.zeros(n), curves.knots, bounds.knots))
    which = np.concatenate((
        owners,
        np.repeat(owners, np.diff(curves.offsets)),
        np.repeat(owners, np.diff(bounds.offsets)),
    ))
    keep = points >= 0.0
    points, which = points[keep], which[keep]
    with np.errstate(all="ignore"):
        low, high = curves.evaluate(which, points), bounds.evaluate(which, points)
        slack = BOUND_TOLERANCE * np.maximum(1.0, np.abs(low))
        below = ~(high >= low - slack)
        if below.any():
            row = np.flatnonzero(below)
            row = row[np.lexsort((points[row], which[row]))][0]
            return int(which[row]), (
                f"is below the estimate at orders_placed={points[row]:g} "
                f"({high[row]:g} < {low[row]:g})"
            )
        grows, needed = bounds.end_slopes(), curves.end_slopes()
        slow = ~(grows >= needed - BOUND_TOLERANCE * np.maximum(1.0, np.abs(needed)))
    if slow.any():
        i = int(np.flatnonzero(slow)[0])
        return i, (
            f"grows slower than the estimate beyond its last knot "
            f"({grows[i]:g} < {needed[i]:g})"
        )
    return None


def _ranges(codes: Sequence[str], specs: Sequence[Any]) -> FloatArray:
    shaped = set(map(type, specs)) == {list} and set(map(len, specs)) == {2}
    if not (shaped and set(map(type, chain.from_iterable(specs))) <= {int, float}):
        for code, spec in zip(codes, specs):
            if not (type(spec) is list and len(spec) == 2
                    and type(spec[0]) in (int, float) and type(spec[1]) in (int, float)):
                raise ModelFormatError(f"orders_placed range of {code!r} is not [min, max]")
    with np.errstate(over="ignore"):
        flat = np.fromiter(chain.from_iterable(specs), np.float64, 2 * len(specs))
    ranges = flat.reshape(len(codes), 2)
    low, high = ranges[:, 0], ranges[:, 1]
    bad = ~(np.isfinite(low) & np.isfinite(high) & (low >= 0.0) & (low <= high))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ModelFormatError(
            f"orders_placed range of {codes[i]!r} is not 0 <= min <= max: {list(specs[i])}"
        )
    return ranges


def _bases(codes: Sequence[str], specs: Sequence[Any]) -> npt.NDArray[np.int8]:
    positions = {basis: i for i, basis in enumerate(BASES)}
    found = [positions.get(spec, NO_BASIS) if type(spec) is str else NO_BASIS for spec in specs]
    index = np.array(found, dtype=np.int8)
    if (index == NO_BASIS).any():
        i = int(np.flatnonzero(index == NO_BASIS)[0])
        raise ModelFormatError(f"basis of {codes[i]!r} is {specs[i]!r}, not one of {list(BASES)}")
    return index


def _catalogue(spec: Any) -> Catalogue:
    if type(spec) is not dict or spec.get(BOUND_KEY) is None:
        raise ModelFormatError("catalogue curve is not an object with a p90 bound")
    curve = _segments([CATALOGUE_BASIS], [spec], "")
    bound = _segments([CATALOGUE_BASIS], [spec[BOUND_KEY]], f" {BOUND_KEY}")
    problem = bound_violations(curve, bound)
    if problem is not None:
        raise ModelFormatError(f"p90 bound of the catalogue curve {problem[1]}")
    return Catalogue(curve, bound)


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
