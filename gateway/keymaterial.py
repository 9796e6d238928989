"""Secret: the one type that carries key bytes through the project.

Key material must never reach a log line, an exception message, a repr, an MQTT payload or a
file outside the state directory. Wrapping it in :class:`Secret` makes the safe thing the easy
thing: ``repr``/``str``/``format`` are redacted, equality is constant-time, it cannot be pickled
or JSON-serialised by accident, and the raw bytes are reachable only through :meth:`reveal`,
a name that stands out in review.
"""

from __future__ import annotations

import hmac
import os
from typing import NoReturn

__all__ = ["Secret"]


class Secret:
    """Immutable wrapper around secret bytes with redacted representations."""

    __slots__ = ("_value",)

    _value: bytes

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError("Secret() takes bytes")
        object.__setattr__(self, "_value", bytes(value))

    @classmethod
    def random(cls, length: int) -> Secret:
        """A fresh secret from the OS CSPRNG (e.g. the fail-closed random PSK)."""
        return cls(os.urandom(length))

    def reveal(self) -> bytes:
        """The raw bytes. Call only where the bytes go into a KDF, a cipher or the kernel."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        # Hashing by value would leak through hash() and dict timing; identity is enough.
        return id(self)

    def __repr__(self) -> str:
        return f"Secret(<redacted {len(self._value)} bytes>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __bytes__(self) -> NoReturn:
        raise TypeError("Secret cannot be converted with bytes(); call .reveal() deliberately")

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("Secret is immutable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret cannot be pickled")

    def __bool__(self) -> bool:
        return bool(self._value)
