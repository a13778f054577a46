"""The metadata schema and its one reader: every earlier format, round trips, tolerance.

tests/fixtures/metadata/ holds metadata that train_model wrote at earlier commits of this
project (named by date and commit, each the second of two weekly runs on simulated tranches,
so it records the model it replaced), one first model, and one realised-accuracy record.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Set, Type

import pytest

from pipeline.metadata import (
    ByCode, Fit, Gate, HeldOut, Metadata, MetadataError, Metrics, Scores, Section, read_metadata,
    read_realised,
)
from testing_support.stages import PYTHON, REPO_ROOT

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "metadata"
CURRENT = FIXTURES / "2026-12-03c-0ca4c7a.json"
CODES = ["SKU001", "SKU002", "SKU003", "SKU004", "SKU005"]
# Each fixture (date and commit of the code that wrote it): whether it records the bound's
# coverage, bases and the history window, the model it replaced ("absent": the format before
# previous_model; "none": a first model), the baselines and rows set aside (gated against
# the window's medians, absolute levels off; its newest tranche has one bad row), and the
# newest tranche held out whole (what was held out and published in words, the catalogue
# curve's answers scored as a basis).
FORMATS = {
    "2026-11-21-d4a100c": (False, False, "absent", False, False),
    "2026-11-30a-6f8c3e3": (False, False, "recorded", False, False),
    "2026-11-30b-16c8907-first": (False, False, "none", False, False),
    "2026-11-30b-16c8907": (False, False, "recorded", False, False),
    "2026-11-30c-c543ccb": (True, False, "recorded", False, False),
    "2026-12-01a-84302c3": (True, True, "recorded", False, False),
    "2026-12-01b-97e3e84": (True, True, "recorded", False, False),
    "2026-12-02-e6bcebe": (True, True, "recorded", False, False),
    "2026-12-03-9ed8c2f": (True, True, "recorded", False, False),
    "2026-12-03b-ad2cc23": (True, True, "recorded", True, False),
    "2026-12-03c-0ca4c7a": (True, True, "recorded", True, True),
}
# Fields no training run writes: the service's first tests' shapes, read for compatibility.
LEGACY = {"Metadata.trained_at", "HeldOut.coverage_p90"}


def test_every_fixture_is_listed() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("2*.json")) == sorted(FORMATS)


def document(path: Path) -> Dict[str, Any]:
    parsed: Dict[str, Any] = json.loads(path.read_bytes())
    return parsed


@pytest.mark.parametrize("stem", FORMATS)
def test_every_earlier_format_reads_and_writes_back_byte_for_byte(stem: str) -> None:
    path = FIXTURES / f"{stem}.json"
    data = path.read_bytes()
    metadata = read_metadata(data)
    assert metadata.to_json() == data
    assert read_metadata(document(path)) == metadata
    assert metadata.unknown_fields() == [], "the schema names every field training ever wrote"


@pytest.mark.parametrize("stem", FORMATS)
def test_every_earlier_format_gives_its_facts_typed(stem: str) -> None:
    path = FIXTURES / f"{stem}.json"
    coverage, bases, previous_model, baselines, out_of_time = FORMATS[stem]
    raw = document(path)
    metadata = read_metadata(path.read_bytes())
    assert metadata.model_version == raw["model_version"]
    assert metadata.heldout_mae == raw["metrics"]["held_out"]["overall"]["mae"] > 0
    assert metadata.tranche.key == raw["tranche"]["key"]
    assert metadata.tranche.sha256 is not None and len(metadata.tranche.sha256) == 64
    assert metadata.created is not None and metadata.created.tzinfo is not None
    assert metadata.rows.total == sum(metadata.rows.per_product_code.values()) == raw["rows"][
        "total"] > 0
    assert metadata.product_codes == CODES == sorted(metadata.fits)
    assert all(fit.family and fit.cv_mae for _, fit in metadata.fits.items())
    per_code = metadata.metrics.held_out.per_product_code
    assert [code for code, _ in per_code.items()] == CODES
    assert all(s.mae is not None and s.rows for _, s in per_code.items())
    assert [g.gate for g in metadata.gates][:3] == (
        ["coverage_p90", "mae_vs_code_median", "mae_vs_global_median"] if baselines
        else ["r2", "mae", "coverage_p90" if coverage else "monotone"])
    assert set(metadata.metrics.held_out.baselines) == (
        {"code_median", "global_median"} if baselines else set())
    assert all(b.overall.rows == metadata.metrics.held_out.overall.rows and set(b.by_basis) == set(
        metadata.metrics.held_out.by_basis) for b in metadata.metrics.held_out.baselines.values())
    assert [h.rows_set_aside for h in metadata.history] == ([1, 0] if baselines else [
        None for _ in metadata.history])
    quarantine = metadata.quarantine
    assert (quarantine is not None) == baselines
    if quarantine is not None:
        assert quarantine.max_bad_row_share == 0.01 and quarantine.rows_set_aside == 1
        [tranche] = quarantine.tranches
        assert tranche.key == metadata.tranche.key and tranche.rows_read == 1001
        assert tranche.rules == {"hours_to_dispatch_negative": 1}
        assert tranche.quarantine == "quarantine/time_to_dispatch_2026-11-20T23:00:00.csv"
    assert set(metadata.drift.psi) == (set() if previous_model == "none" else {
        "orders_placed", "hours_to_dispatch", "product_code"})
    assert metadata.options.thresholds.coverage_min == (0.85 if coverage else None)
    assert (metadata.metrics.held_out.coverage is not None) == coverage
    assert set(metadata.metrics.held_out.by_basis) == (
        set() if not bases else {"product", "pooled", "catalogue"} if out_of_time
        else {"product", "pooled"})
    assert (metadata.held_out or "").startswith("the newest tranche, whole") == out_of_time
    assert (metadata.rows.test == metadata.rows.total) == out_of_time
    assert all((f.loss is not None) == out_of_time for _, f in metadata.fits.items())
    assert (metadata.pooling is not None) == bases
    assert [h.newest for h in metadata.history] == ([True, False] if bases else [])
    assert metadata.records_previous_model == (previous_model != "absent")
    assert (metadata.report is not None) == (previous_model != "absent")
    previous = metadata.previous_model
    if previous_model != "recorded":
        assert previous is None
        return
    assert previous is not None and previous.realised is not None
    assert previous.model_version == raw["previous_model"]["model_version"]
    assert previous.realised_mae == previous.realised.mae == raw["previous_model"]["realised_mae"]
    assert previous.realised.tranche.key == metadata.tranche.key
    assert previous.realised.rows_scored == metadata.rows.total
    assert metadata.report is not None and (metadata.report.json_key or "").endswith(".json")


def test_a_first_model_records_that_it_replaced_none() -> None:
    metadata = read_metadata((FIXTURES / "2026-11-30b-16c8907-first.json").read_bytes())
    assert metadata.records_previous_model and metadata.previous_model is None
    assert b'"previous_model": null' in metadata.to_json()


def test_a_realised_record_reads_and_writes_back() -> None:
    data = (FIXTURES / "realised-2026-11-30a-6f8c3e3.json").read_bytes()
    realised = read_realised(data)
    assert realised.to_json() == data and realised.unknown_fields() == []
    assert realised.mae is not None and realised.rows_scored == 600
    assert [code for code, _ in realised.per_product_code.items()] == CODES


def written_fields(section: Section, found: Dict[Type[Section], Set[str]]) -> None:
    """Add the fields each kind of section in ``section`` (itself included) carries somewhere."""
    kind = type(section)
    if section.open_content:
        return
    found.setdefault(kind, set()).update(section.model_fields_set)
    for field in kind.model_fields:
        value = getattr(section, field)
        children: List[Any] = (
            [value] if isinstance(value, Section) else list(value) if isinstance(value, list)
            else list(value.values()) if isinstance(value, dict)
            else [s for _, s in value.items()] if isinstance(value, ByCode) else [])
        for child in children:
            if isinstance(child, Section):
                written_fields(child, found)


def declared_but_unwritten(section: Section) -> Set[str]:
    """Fields the schema declares that no section of their kind carries (a baseline's scores
    have no coverage but the model's have: the field is written)."""
    written: Dict[Type[Section], Set[str]] = {}
    written_fields(section, written)
    return {f"{kind.__name__}.{field}" for kind, fields in written.items()
            for field in kind.model_fields if field not in fields}


def test_the_current_format_carries_every_field_the_schema_declares() -> None:
    """A field renamed in the schema (or no longer written) shows up here, not in production."""
    metadata = read_metadata(CURRENT.read_bytes())
    assert declared_but_unwritten(metadata) == LEGACY


def test_unknown_fields_are_kept_as_read_and_never_an_error() -> None:
    raw = document(CURRENT)
    raw["added_later"] = {"nested": [1, 2.5, None]}
    raw["metrics"]["held_out"]["overall"]["new_score"] = 0.7
    raw["metrics"]["held_out"]["per_product_code"]["SKU001"]["extra"] = "x"
    raw["tranche"]["format"] = "csv"
    metadata = read_metadata(raw)
    assert metadata.heldout_mae == document(CURRENT)["metrics"]["held_out"]["overall"]["mae"]
    assert sorted(metadata.unknown_fields()) == [
        "added_later", "metrics.held_out.overall.new_score",
        "metrics.held_out.per_product_code.SKU001.extra", "tranche.format",
    ]
    assert json.loads(metadata.to_json()) == raw


@pytest.mark.parametrize("broken, gone", [
    ({"metrics": {"held_out": {"overall": {"mae": "0.4", "rows": 3}}}}, "mae"),
    ({"metrics": {"held_out": {"overall": {"mae": True, "rows": 3}}}}, "mae"),
    ({"metrics": {"held_out": {"overall": {"mae": 0.4, "rows": 3.0}}}}, "rows"),
    ({"metrics": {"held_out": {"overall": None}}}, "overall"),
    ({"metrics": {"held_out": "<object with 5 keys>"}}, "held_out"),
    ({"metrics": {"held_out": {"per_product_code": ["SKU001"]}}}, "per_product_code"),
])
def test_a_field_of_the_wrong_type_reads_as_absent(broken: Dict[str, Any], gone: str) -> None:
    metadata = read_metadata({"model_version": "v", **broken})
    assert metadata.model_version == "v"
    held = metadata.metrics.held_out
    assert gone != "mae" or (held.overall.mae is None and held.overall.rows == 3)
    assert gone != "rows" or (held.overall.rows is None and held.overall.mae == 0.4)
    assert gone not in ("overall", "held_out") or held.overall == Scores()
    assert gone != "per_product_code" or len(held.per_product_code) == 0
    assert gone not in json.dumps(metadata.to_data())


def test_wrong_entries_in_lists_and_maps_are_left_out_the_rest_kept() -> None:
    metadata = read_metadata({
        "gates": [1, {"gate": "r2", "value": "high"}, {"gate": "mae", "value": 0.3}],
        "bases": {"product": {"parts": 3}, "pooled": "many"},
        "metrics": {"held_out": {"per_product_code": {"A": {"mae": 0.2}, "B": [1], "C": {
            "mae": "x", "rows": 4}}}},
        "previous_model": {"model_version": "old", "realised": {"mae": "?", "rows_scored": 9}},
    })
    assert metadata.gates == [Gate(gate="r2"), Gate(gate="mae", value=0.3)]
    assert {b: p.parts for b, p in metadata.bases.items()} == {"product": 3}
    per_code = metadata.metrics.held_out.per_product_code
    assert per_code.get("A") == Scores(mae=0.2) and per_code.get("B") is None
    assert per_code.get("C") == Scores(rows=4) and per_code.get("D") is None
    assert [code for code, _ in per_code.items()] == ["A", "C"]
    previous = metadata.previous_model
    assert previous is not None and previous.realised is not None
    assert previous.realised.mae is None and previous.realised.rows_scored == 9


def test_the_shapes_the_service_read_before_training_wrote_them() -> None:
    metadata = read_metadata({
        "model_version": "v", "trained_at": "2026-11-20T23:00:00",
        "tranche_key": "datasets/time_to_dispatch_2026-11-16T00:00:00.csv", "rows": 1000,
        "metrics": {"mae": 0.4, "held_out": {"coverage_p90": 0.91}},
    })
    assert metadata.created is not None and metadata.created.isoformat().startswith(
        "2026-11-20T23:00:00+00:00")
    assert metadata.metrics.held_out.coverage == 0.91 and metadata.heldout_mae is None
    assert metadata.rows.total is None


@pytest.mark.parametrize("data", [b"", b"not json", b"[1, 2]", b'"text"', b"null", b"\xff"])
def test_only_a_document_that_is_not_a_json_object_is_an_error(data: bytes) -> None:
    with pytest.raises(MetadataError):
        read_metadata(data)
    with pytest.raises(MetadataError):
        read_realised(data)


def test_what_training_builds_is_written_with_exactly_the_fields_given() -> None:
    held = HeldOut(overall=Scores(rows=2, mae=0.5, r2=0.9),
                   per_product_code=ByCode(Scores, {"A": Scores(rows=2, mae=0.5, r2=None)}),
                   unscored_rows=0)
    metadata = Metadata(model_version="v", model_sha256="s", previous_model=None,
                        metrics=Metrics(held_out=held))
    written = json.loads(metadata.to_json())
    assert written == {"model_version": "v", "model_sha256": "s", "previous_model": None,
                       "metrics": {"held_out": {
                           "overall": {"rows": 2, "mae": 0.5, "r2": 0.9},
                           "per_product_code": {"A": {"rows": 2, "mae": 0.5, "r2": None}},
                           "unscored_rows": 0}}}
    assert Fit.model_validate({"orders_range": (1.0, 2.0)}).to_data() == {
        "orders_range": [1.0, 2.0]}


def test_a_misspelt_field_is_named_not_silently_read() -> None:
    metadata = read_metadata({"metrics": {"held_out": {"overal": {"mae": 0.4}}}})
    assert metadata.heldout_mae is None
    assert metadata.unknown_fields() == ["metrics.held_out.overal"]


def test_importing_the_schema_loads_no_training_library() -> None:
    code = ("import sys, pipeline.metadata; "
            "print(sorted(m for m in ('pandas', 'sklearn', 'scipy', 'pandera', 'matplotlib') "
            "if m in sys.modules))")
    done = subprocess.run([PYTHON, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO_ROOT)}, check=True)
    assert done.stdout.strip() == "[]"
