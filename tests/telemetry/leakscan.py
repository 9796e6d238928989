"""Scan captured telemetry output for planted key bytes in every encoding a leak could take."""

from __future__ import annotations

import base64


def encodings(key: bytes) -> dict[str, str]:
    """Every text form of ``key`` a careless log line, repr or JSON encoder could produce."""
    return {
        "raw": key.decode("latin-1"),
        "repr": repr(key)[2:-1],
        "hex": key.hex(),
        "HEX": key.hex().upper(),
        "base64": base64.b64encode(key).decode().rstrip("="),
        "base64url": base64.urlsafe_b64encode(key).decode().rstrip("="),
        "json_escaped": "".join(f"\\u{b:04x}" for b in key[:8]),
    }


def leaks(text: str, key: bytes) -> list[str]:
    """The names of the encodings of ``key`` found in ``text`` (empty: no leak)."""
    return [name for name, form in encodings(key).items() if form in text]


def planted_key() -> bytes:
    # Fixed, recognisable and long enough that a chance match in unrelated output is impossible;
    # includes non-printable bytes so the raw and repr forms differ.
    return bytes(range(0xA0, 0xC0))
