"""The settings: secrets stay out of what is printed, weak secrets are refused with the
variable named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.settings import Settings


def test_a_short_admin_token_is_refused_and_a_good_one_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEGMENTER_ADMIN_TOKEN", "letmein")
    with pytest.raises(ValidationError, match="SEGMENTER_ADMIN_TOKEN must be at least 16 bytes"):
        Settings()
    monkeypatch.setenv("SEGMENTER_ADMIN_TOKEN", "a-long-enough-admin-token")
    settings = Settings()
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "a-long-enough-admin-token"
    assert "a-long-enough-admin-token" not in repr(settings) + settings.model_dump_json()
