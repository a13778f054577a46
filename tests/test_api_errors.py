"""Error bodies: FastAPI's shape, hostile input shortened, always serialisable."""
from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.api.errors import (
    MAX_ECHO_CHARS,
    MAX_ECHO_ITEMS,
    MAX_LOGGED_ERRORS,
    echo,
    summary,
    validation_body,
)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("a" * MAX_ECHO_CHARS, "a" * MAX_ECHO_CHARS),
        ("a" * (MAX_ECHO_CHARS + 1), "a" * MAX_ECHO_CHARS + "..."),
        (2**63 - 1, 2**63 - 1),
        (2**63, str(2**63)),
        (-(2**63), -(2**63)),
        (b"raw", {}),
        ("\ud800x", "?x"),
        (list(range(MAX_ECHO_ITEMS)), list(range(MAX_ECHO_ITEMS))),
        (list(range(MAX_ECHO_ITEMS + 1)), f"<array of {MAX_ECHO_ITEMS + 1} items>"),
        ({"a": {"b": {"c": 1}}}, {"a": {"b": "<object with 1 keys>"}}),
        (None, None),
        (1.5, 1.5),
    ],
)
def test_echo_shortens_what_it_sends_back(value: Any, expected: Any) -> None:
    assert echo(value) == expected


def test_validation_body_has_fastapi_shape_and_serialises_anything() -> None:
    errors = [
        {"type": "missing", "loc": ("orders_placed",), "msg": "Field required", "input": {}},
        {"type": "finite_number", "loc": ("x",), "msg": "m", "input": float("nan"),
         "ctx": {"error": ValueError("boom")}},
        {"type": "json_invalid", "loc": (), "msg": "Invalid JSON", "input": b"{",
         "ctx": {"error": "EOF"}},
    ]
    body = json.loads(validation_body(errors))
    assert body["detail"][0] == {
        "type": "missing", "loc": ["body", "orders_placed"], "msg": "Field required", "input": {}
    }
    assert body["detail"][1]["input"] is None
    assert body["detail"][1]["ctx"] == {"error": "boom"}
    assert body["detail"][2]["loc"] == ["body"] and body["detail"][2]["input"] == {}


def test_literal_error_message_is_never_shortened() -> None:
    message = "Input should be " + ", ".join(f"'SKU{i:04d}'" for i in range(500))
    issue = {"type": "literal_error", "loc": ("product_code",), "msg": message, "input": "x"}
    assert json.loads(validation_body([issue]))["detail"][0]["msg"] == message


def test_summary_keeps_the_first_few_types_and_locations() -> None:
    errors = [{"type": f"t{i}", "loc": (i, "f"), "msg": "m", "input": "secret?"} for i in range(9)]
    assert summary(errors) == [
        {"type": f"t{i}", "loc": ["body", i, "f"]} for i in range(MAX_LOGGED_ERRORS)
    ]
