"""Artefact format 3: a basis per code and the catalogue curve; formats 1 and 2 still load."""
from __future__ import annotations

import json
from typing import Any, Dict

import pytest

from pipeline.model_format import (
    FORMAT,
    CatalogueCurve,
    Curve,
    DispatchModel,
    ModelFormatError,
    with_bounds,
)

ESTIMATE = Curve((0.0, 100.0), (1.0, 3.0))
BOUND = Curve((0.0, 100.0), (2.0, 5.0))
CATALOGUE = CatalogueCurve(Curve((0.0, 100.0), (1.5, 4.0)), Curve((0.0, 100.0), (4.0, 9.0)))


def pooled_model() -> DispatchModel:
    """Two codes, one on its own rows and one pooled, with the catalogue curve."""
    return DispatchModel(
        {"SKU001": ESTIMATE, "SKU002": ESTIMATE},
        {"SKU001": BOUND, "SKU002": BOUND},
        {"SKU001": (0.0, 90.0), "SKU002": (5.0, 7.0)},
        {"SKU001": "product", "SKU002": "pooled"},
        CATALOGUE,
    )


def document() -> Dict[str, Any]:
    """The format 3 document of pooled_model, as a dict to break."""
    loaded: Dict[str, Any] = json.loads(pooled_model().to_json())
    return loaded


def parse(doc: Dict[str, Any]) -> DispatchModel:
    """Load a document as the service does."""
    return DispatchModel.from_json(json.dumps(doc).encode())


def test_format_3_round_trip_is_exact_and_canonical() -> None:
    model = pooled_model()
    data = model.to_json()
    doc = json.loads(data)
    assert doc["format_version"] == 3
    assert doc["curves"]["SKU002"]["basis"] == "pooled"
    assert doc["catalogue"]["p90"] == {"knots": [0.0, 100.0], "values": [4.0, 9.0]}
    again = DispatchModel.from_json(data)
    assert again == model
    assert again.to_json() == data
    assert again.bases == {"SKU001": "product", "SKU002": "pooled"}


def test_a_model_without_bases_is_written_as_format_2_and_answers_no_basis() -> None:
    plain = DispatchModel({"SKU001": ESTIMATE}, {"SKU001": BOUND}, {"SKU001": (0.0, 1.0)})
    doc = json.loads(plain.to_json())
    assert doc["format_version"] == 2 and "catalogue" not in doc
    assert DispatchModel.from_json(plain.to_json()).bases == {}


def test_bases_cover_every_code_or_none_and_name_a_known_basis() -> None:
    doc = document()
    del doc["curves"]["SKU002"]["basis"]
    with pytest.raises(ModelFormatError, match="every product code or none"):
        parse(doc)
    doc = document()
    doc["curves"]["SKU002"]["basis"] = "guess"
    with pytest.raises(ModelFormatError, match="basis of 'SKU002' is 'guess'"):
        parse(doc)
    with pytest.raises(ModelFormatError, match="not one of"):
        DispatchModel({"A": ESTIMATE}, bases={"A": "catalogue"})


def test_the_catalogue_curve_needs_a_bound_at_or_above_it() -> None:
    doc = document()
    del doc["catalogue"]["p90"]
    with pytest.raises(ModelFormatError, match="catalogue curve"):
        parse(doc)
    doc = document()
    doc["catalogue"]["p90"]["values"] = [0.5, 9.0]
    with pytest.raises(ModelFormatError, match="catalogue curve is below"):
        parse(doc)


def test_version_2_ignores_format_3_keys_and_with_bounds_keeps_bases() -> None:
    doc = document()
    doc["format_version"] = 2
    old = parse(doc)
    assert old.bases == {} and old.catalogue is None
    assert doc["format"] == FORMAT
    kept = with_bounds(pooled_model(), {"SKU001": BOUND, "SKU002": BOUND},
                       {"SKU001": (0, 1), "SKU002": (0, 1)})
    assert kept.bases == pooled_model().bases and kept.catalogue == CATALOGUE
