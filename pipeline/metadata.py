"""A published model's metadata (``models/<version>/metadata.json``) as types: written by
training, read by the run report, the model history, the ``models`` command and the service.

:class:`Metadata` and its sections name every field once. Training builds them and writes
them with :meth:`Section.to_json`: the fields it gave (``None`` included), keys sorted,
indented. Readers use :func:`read_metadata`, the one reader, which accepts every format
training has written (sections were added over time; tests/fixtures/metadata/ holds real
metadata of each) and fails on nothing inside a JSON object: a field it does not know is
kept as it is (and written back as it was), a field of the wrong type reads as absent, an
absent field as its default. Only a document that is not a JSON object is an error.

The per-code sections (held-out scores and fits, 100,000 of each for a catalogue) are
checked one at a time as they are read (:class:`ByCode`): reading a document costs the
same whatever its catalogue, and most readers want a handful of codes.

Realised-accuracy records (``models/<version>/realised/*.json``, also embedded in the next
model's ``previous_model``) are typed here too (:class:`Realised`). Needs only pydantic:
the service imports this module.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import (
    Any, Callable, ClassVar, Dict, Generic, Iterator, List, Mapping, Optional, Sequence, Tuple,
    Type, TypeVar, Union,
)

from pydantic import (
    BaseModel, ConfigDict, Field, GetCoreSchemaHandler, StrictBool, StrictFloat, StrictInt,
    StrictStr, ValidationError,
)
from pydantic_core import CoreSchema, core_schema

REPAIR_ROUNDS = 32


class MetadataError(ValueError):
    """A metadata document is not a JSON object."""


class Section(BaseModel):
    """A part of the metadata: frozen, unknown fields kept as read. Numbers, strings and flags
    are strict (no ``"1.5"`` for a number, no ``true`` for a count); an int is a float.

    ``open_content`` marks a section whose fields another module defines (the run's options,
    what the pooling learned): only the fields a reader needs are typed, the rest pass through.
    """

    model_config = ConfigDict(
        extra="allow", frozen=True, populate_by_name=True, allow_inf_nan=True,
    )
    open_content: ClassVar[bool] = False

    def to_data(self) -> Dict[str, Any]:
        """The JSON-ready form: the fields given or read (unknown ones too), nothing else."""
        return self.model_dump(by_alias=True, exclude_unset=True)

    def to_json(self) -> bytes:
        """The stored form: indented, keys sorted, so equal content gives equal bytes."""
        return json.dumps(self.to_data(), indent=2, sort_keys=True).encode()

    def unknown_fields(self, path: str = "") -> List[str]:
        """Dotted paths of the fields this schema does not name (none in what training writes)."""
        found = [] if self.open_content else [f"{path}{name}" for name in self.model_extra or {}]
        for name in self.model_fields_set & set(type(self).model_fields):
            found += _unknown_in(getattr(self, name), f"{path}{name}.")
        return found


S = TypeVar("S", bound=Section)


def _unknown_in(value: Any, path: str) -> List[str]:
    if isinstance(value, Section):
        return value.unknown_fields(path)
    if isinstance(value, ByCode):
        return [f for code, s in value.items() for f in s.unknown_fields(f"{path}{code}.")]
    if isinstance(value, dict):
        return [f for key, item in value.items() for f in _unknown_in(item, f"{path}{key}.")]
    if isinstance(value, list):
        return [f for i, item in enumerate(value) for f in _unknown_in(item, f"{path}{i}.")]
    return []


class ByCode(Generic[S]):
    """Sections by product code, each checked (tolerantly) only when it is read."""

    __slots__ = ("_kind", "_entries")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, kind: Type[S], entries: Mapping[str, Any]) -> None:
        self._kind = kind
        self._entries = entries

    def get(self, code: str) -> Optional[S]:
        """The code's section; None when absent or not an object."""
        found = self._entries.get(code)
        if found is None or isinstance(found, self._kind):
            return found
        if type(found) is dict:
            try:
                return self._kind.model_validate(found)
            except ValidationError:
                pass
        return read_section(self._kind, found)

    def items(self) -> Iterator[Tuple[str, S]]:
        """Every code with its section (codes whose entry is not an object left out)."""
        for code in self._entries:
            found = self.get(code)
            if found is not None:
                yield code, found

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, code: object) -> bool:
        return code in self._entries

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByCode) and self.to_data() == other.to_data()

    def __repr__(self) -> str:
        return f"ByCode[{self._kind.__name__}]({len(self._entries)} codes)"

    def to_data(self) -> Dict[str, Any]:
        """The JSON-ready form (entries never read stay as they were parsed)."""
        return {code: entry.to_data() if isinstance(entry, Section) else entry
                for code, entry in self._entries.items()}

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        kind: Any = getattr(source, "__args__", (Section,))[0]

        def validate(value: Any) -> "ByCode[Any]":
            if isinstance(value, ByCode):
                return value
            if not isinstance(value, dict):
                raise ValueError("not an object keyed by product code")
            return cls(kind, value)

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(cls.to_data),
        )


def by_code(kind: Type[S]) -> Callable[[], ByCode[S]]:
    """The default of a per-code field: no codes."""
    return lambda: ByCode(kind, {})


class Scores(Section):
    """Accuracy on some rows: MAE and R² of the estimate, the share within the p90 bound.

    ``coverage_p90`` only for a model with a bound; a basis without rows records null scores.
    """

    rows: Optional[StrictInt] = None
    mae: Optional[StrictFloat] = None
    r2: Optional[StrictFloat] = None
    coverage_p90: Optional[StrictFloat] = None


class Baseline(Section):
    """A naive peer's accuracy on the model's held-out rows (the gates compare the two): overall
    and, for a model with bases, per basis."""

    overall: Scores = Scores()
    by_basis: Dict[str, Scores] = {}


class HeldOut(Section):
    """The model's accuracy on the held-out rows: overall, per code and (pooled models) per
    basis; ``unscored_rows`` are held-out rows of codes it does not know; ``baselines`` (from
    the gates against the window's medians on) the peers' on the same rows, by name.
    ``coverage_p90`` beside them is no training run's: the service has read the overall
    coverage there too."""

    overall: Scores = Scores()
    per_product_code: ByCode[Scores] = Field(default_factory=by_code(Scores))
    unscored_rows: Optional[StrictInt] = None
    by_basis: Dict[str, Scores] = {}
    baselines: Dict[str, Baseline] = {}
    coverage_p90: Optional[StrictFloat] = None

    @property
    def coverage(self) -> Optional[float]:
        """The p90 bound's overall held-out coverage, where either shape records it."""
        return self.overall.coverage_p90 if self.overall.coverage_p90 is not None else (
            self.coverage_p90)


class Metrics(Section):
    """The model's recorded accuracy."""

    held_out: HeldOut = HeldOut()


class TrancheRef(Section):
    """A tranche a model was scored against: its key and the sha256 of its bytes."""

    key: Optional[StrictStr] = None
    sha256: Optional[StrictStr] = None


class TrainedTranche(TrancheRef):
    """The tranche the model was trained on, where it was and the columns it ignored."""

    location: Optional[StrictStr] = None
    ignored_columns: List[StrictStr] = []


class Rows(Section):
    """Row counts of the newest tranche: total, split, per code and the codes not learned."""

    total: Optional[StrictInt] = None
    train: Optional[StrictInt] = None
    test: Optional[StrictInt] = None
    per_product_code: Dict[str, StrictInt] = {}
    skipped_product_codes: Dict[str, StrictInt] = {}
    skipped_product_codes_in_training_split: Dict[str, StrictInt] = {}


class Fit(Section):
    """How one code's curve was chosen: its rows, the family, each family's CV MAE, its trained
    range and the bound's quantile (the last two from artefact format 2 on), and the loss it
    was fitted by (``squared`` or ``absolute``; from the conditional-median curves on)."""

    rows: Optional[StrictInt] = None
    family: Optional[StrictStr] = None
    parameter: Optional[StrictFloat] = None
    cv_mae: Dict[str, StrictFloat] = {}
    orders_range: Optional[List[StrictFloat]] = None
    bound_quantile: Optional[StrictFloat] = None
    loss: Optional[StrictStr] = None


class HistoryTranche(Section):
    """A tranche that fed the model (the newest first): its valid rows and (from the quarantine
    on) the rows it set aside."""

    key: Optional[StrictStr] = None
    sha256: Optional[StrictStr] = None
    rows: Optional[StrictInt] = None
    rows_set_aside: Optional[StrictInt] = None
    newest: Optional[StrictBool] = None


class LeftOut(Section):
    """An older tranche left out of the history window, and why."""

    key: Optional[StrictStr] = None
    reason: Optional[StrictStr] = None


class QuarantinedTranche(Section):
    """A tranche that set rows aside: its data rows, those set aside, the rows breaking each
    rule, and the quarantine file that keeps them."""

    key: Optional[StrictStr] = None
    quarantine: Optional[StrictStr] = None
    rows_read: Optional[StrictInt] = None
    rows_set_aside: Optional[StrictInt] = None
    rules: Dict[str, StrictInt] = {}


class Quarantine(Section):
    """The rows set aside for breaking a row rule: the share a tranche may set aside, how many
    in all, and each tranche that set some aside (the newest first)."""

    max_bad_row_share: Optional[StrictFloat] = None
    rows_set_aside: Optional[StrictInt] = None
    tranches: List[QuarantinedTranche] = []


class BasisParts(Section):
    """How many of the model's parts rest on one basis."""

    parts: Optional[StrictInt] = None


class Pooling(Section):
    """What the partial pooling learned (pipeline/training/pooling.py writes it)."""

    open_content: ClassVar[bool] = True
    parts: Dict[str, StrictInt] = {}


class Gate(Section):
    """One gate's decision: its name, pass/warn/fail/keep, why, and the value it judged."""

    gate: Optional[StrictStr] = None
    outcome: Optional[StrictStr] = None
    detail: Optional[StrictStr] = None
    value: Optional[StrictFloat] = None


class Drift(Section):
    """Drift against the previous tranche: PSI per feature and those above the threshold."""

    previous_tranche: Optional[StrictStr] = None
    threshold: Optional[StrictFloat] = None
    psi: Dict[str, StrictFloat] = {}
    drifted: List[StrictStr] = []
    note: Optional[StrictStr] = None


class Thresholds(Section):
    """The metric gates' levels the run used (pipeline/training/gates.py's MetricThresholds)."""

    open_content: ClassVar[bool] = True
    coverage_min: Optional[StrictFloat] = None


class Options(Section):
    """Every option of the run (pipeline/training/run.py's TrainOptions, as they were)."""

    open_content: ClassVar[bool] = True
    thresholds: Thresholds = Thresholds()


class Realised(Section):
    """A model's accuracy on all rows of a tranche that arrived after it was trained."""

    model_version: Optional[StrictStr] = None
    tranche: TrancheRef = TrancheRef()
    rows_scored: Optional[StrictInt] = None
    unscored_rows: Optional[StrictInt] = None
    mae: Optional[StrictFloat] = None
    r2: Optional[StrictFloat] = None
    per_product_code: ByCode[Scores] = Field(default_factory=by_code(Scores))
    by_basis: Dict[str, Scores] = {}
    heldout_mae: Optional[StrictFloat] = None
    recorded_at: Optional[StrictStr] = None
    run_id: Optional[StrictStr] = None


class PreviousModel(Section):
    """The model this one replaced: its version and checksums, the MAE it promised and its
    realised MAE on this model's tranche (null when it knew none of its codes)."""

    model_version: Optional[StrictStr] = None
    model_sha256: Optional[StrictStr] = None
    metadata_sha256: Optional[StrictStr] = None
    heldout_mae: Optional[StrictFloat] = None
    realised_mae: Optional[StrictFloat] = None
    realised: Optional[Realised] = None


class ReportKeys(Section):
    """Where the run's report is: its page and its JSON twin."""

    html: Optional[StrictStr] = None
    json_key: Optional[StrictStr] = Field(default=None, alias="json")


class Metadata(Section):
    """Everything recorded about how a published model came to be.

    ``previous_model`` and ``report`` are written from the models command's first version
    on (``previous_model`` null for a first model); ``history*``, ``bases`` and ``pooling``
    from the history window's; ``quarantine`` (and ``history[].rows_set_aside``) from the
    rows set aside's. ``published_model`` says which model was published (the refit on all
    rows or the scored one) and ``held_out`` which rows it was scored on, in words (the latter
    from the newest tranche held out whole on). ``trained_at`` is no training run's: the
    service's first tests wrote it for ``created_at``.
    """

    model_version: Optional[StrictStr] = None
    model_sha256: Optional[StrictStr] = None
    created_at: Optional[StrictStr] = None
    tranche: TrainedTranche = TrainedTranche()
    rows: Rows = Rows()
    metrics: Metrics = Metrics()
    fits: ByCode[Fit] = Field(default_factory=by_code(Fit))
    history: List[HistoryTranche] = []
    history_left_out: List[LeftOut] = []
    history_weeks: Optional[StrictInt] = None
    quarantine: Optional[Quarantine] = None
    bases: Dict[str, BasisParts] = {}
    pooling: Optional[Pooling] = None
    published_model: Optional[StrictStr] = None
    held_out: Optional[StrictStr] = None
    gates: List[Gate] = []
    drift: Drift = Drift()
    product_codes: List[StrictStr] = []
    library_versions: Dict[str, StrictStr] = {}
    git_commit: Optional[StrictStr] = None
    training_seconds: Optional[StrictFloat] = None
    options: Options = Options()
    previous_model: Optional[PreviousModel] = None
    report: Optional[ReportKeys] = None
    trained_at: Optional[StrictStr] = None

    @property
    def heldout_mae(self) -> Optional[StrictFloat]:
        """The overall held-out MAE, if recorded."""
        return self.metrics.held_out.overall.mae

    @property
    def created(self) -> Optional[datetime]:
        """When the model was created (``created_at``, else ``trained_at``), if either parses."""
        return next((t for t in map(parse_time, (self.created_at, self.trained_at)) if t), None)

    @property
    def records_previous_model(self) -> bool:
        """Whether the metadata says which model it replaced (null for none): older ones do not."""
        return "previous_model" in self.model_fields_set


def parse_time(value: Any) -> Optional[datetime]:
    """An aware datetime from an ISO 8601 string (naive means UTC), or None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def parse_document(data: bytes) -> Dict[str, Any]:
    """A stored document as parsed JSON; MetadataError unless it is a JSON object."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise MetadataError(f"not a JSON object but {type(document).__name__}")
    return document


def read_metadata(data: Union[bytes, Mapping[str, Any]]) -> Metadata:
    """The one reader: a metadata document (bytes or parsed) of any format, as types.

    MetadataError when it is not a JSON object; inside one nothing is an error.
    """
    found = read_section(Metadata, parse_document(data) if isinstance(data, bytes) else data)
    if found is None:
        raise MetadataError("not a JSON object")
    return found


def read_realised(data: Union[bytes, Mapping[str, Any]]) -> Realised:
    """A realised-accuracy record of any format, as types (MetadataError: not an object)."""
    found = read_section(Realised, parse_document(data) if isinstance(data, bytes) else data)
    if found is None:
        raise MetadataError("not a JSON object")
    return found


def read_section(kind: Type[S], value: Any) -> Optional[S]:
    """``value`` as a ``kind``: None unless it is an object; every field of the wrong type
    (at any depth) is left out, so it reads as absent."""
    if not isinstance(value, Mapping):
        return None
    for _ in range(REPAIR_ROUNDS):
        try:
            return kind.model_validate(value)
        except ValidationError as exc:
            value = _pruned(value, [tuple(error["loc"]) for error in exc.errors()])
        if value is _DROP:
            break
    return kind()


_DROP: Any = object()


def _pruned(value: Any, locations: Sequence[Tuple[Any, ...]]) -> Any:
    """``value`` without what each location names (copied along the way, never mutated).

    A location is followed as far as the data goes; the item where it stops is dropped
    (_DROP: ``value`` itself).
    """
    inner: Dict[Any, List[Tuple[Any, ...]]] = {}
    for location in locations:
        if not location or not _holds(value, location[0]):
            return _DROP
        inner.setdefault(location[0], []).append(location[1:])
    if isinstance(value, Mapping):
        result = dict(value)
        for key, rest in inner.items():
            kept = _pruned(value[key], rest)
            if kept is _DROP:
                del result[key]
            else:
                result[key] = kept
        return result
    items = list(value)
    for index, rest in inner.items():
        items[index] = _pruned(value[index], rest)
    return [item for item in items if item is not _DROP]


def _holds(value: Any, key: Any) -> bool:
    if isinstance(value, Mapping):
        return key in value
    return isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value)
