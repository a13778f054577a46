"""Service settings: defaults, TTD_* environment variables, the key kept secret."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.api.settings import ServeSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TTD_API_KEY", raising=False)
    settings = ServeSettings()
    assert settings.api_key is None
    assert settings.api_key_header == "X-API-Key"
    assert settings.max_batch_rows == 10_000
    assert settings.model_refresh_seconds == 0
    assert settings.drain_seconds == 2.0
    assert settings.fast_path is True


def test_environment_sets_fields_and_the_key_stays_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTD_API_KEY", "hunter2-long-key")
    monkeypatch.setenv("TTD_MAX_BATCH_ROWS", "50")
    settings = ServeSettings()
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "hunter2-long-key"
    assert settings.max_batch_rows == 50
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


@pytest.mark.parametrize(
    "field, value",
    [("max_batch_rows", 0), ("model_refresh_seconds", -1.0), ("drain_seconds", float("nan")),
     ("max_body_bytes", 1023)],
)
def test_out_of_range_values_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        ServeSettings(**{field: value})


def test_smallest_allowed_values() -> None:
    settings = ServeSettings(max_batch_rows=1, model_refresh_seconds=0, max_body_bytes=1024)
    assert (settings.max_batch_rows, settings.max_body_bytes) == (1, 1024)
