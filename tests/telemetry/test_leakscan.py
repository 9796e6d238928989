"""The scanner itself must find a key in each encoding, or every 'no leak' assertion is void."""

from __future__ import annotations

import base64
import json

import pytest

from tests.telemetry.leakscan import leaks, planted_key

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "render",
    [
        lambda k: f"x {k!r} y",
        lambda k: k.hex(),
        lambda k: k.hex().upper(),
        lambda k: base64.b64encode(k).decode(),
        lambda k: base64.urlsafe_b64encode(k).decode(),
        lambda k: json.dumps(k.decode("latin-1")),
        lambda k: k.decode("latin-1"),
    ],
)
def test_scanner_finds_each_encoding(render: object) -> None:
    key = planted_key()
    assert leaks(render(key), key)  # type: ignore[operator]


def test_scanner_quiet_on_clean_text() -> None:
    assert leaks("rekey_completed tunnel=wg0 Secret(<redacted 32 bytes>)", planted_key()) == []
