"""Errors of the embedded KME and the exact messages it answers with.

Exception tree::

    KmeError                     an ETSI GS QKD 014 / SKIP error answer (status, message, details)
    ├── BadRequest               400 + Error body: the request is malformed or cannot be honoured
    ├── Unauthorized             401, no body (the standard defines none); the reason is logged only
    ├── NotFound                 404 + Error body: unknown URL, or an unknown SKIP key ID
    └── Unavailable              503 + Error body: not enough key, no route, injected fault

    PoolExhausted(Exception)     raised by a link pool; the server turns it into Unavailable

Messages the standard fixes are used verbatim (``MSG_*`` constants marked "ETSI"); the others are
this KME's own and are listed in docs/kms-sim.md. No message ever carries key bytes: only IDs,
sizes and counts.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MSG_EXT_MANDATORY",
    "MSG_KEYS_NOT_FOUND",
    "MSG_SIZE_MULTIPLE_OF_8",
    "BadRequest",
    "KmeError",
    "NotFound",
    "PoolExhausted",
    "Unauthorized",
    "Unavailable",
]

# ETSI GS QKD 014 clause 6 text, verbatim.
MSG_SIZE_MULTIPLE_OF_8 = "size shall be a multiple of 8"
MSG_EXT_MANDATORY = "not all extension_mandatory parameters are supported"
MSG_KEYS_NOT_FOUND = "one or more keys specified are not found on KME"


class KmeError(Exception):
    """An error answer. ``details`` becomes the Error body's ``details`` list."""

    status = 500

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        if self.details:
            out["details"] = self.details
        return out


class BadRequest(KmeError):
    status = 400


class Unauthorized(KmeError):
    status = 401


class NotFound(KmeError):
    status = 404


class Unavailable(KmeError):
    status = 503


class PoolExhausted(Exception):
    """A link pool holds fewer bits than asked for; nothing was taken."""

    def __init__(self, link: tuple[str, str], wanted_bits: int, stock_bits: int) -> None:
        super().__init__(
            f"QKD link {link[0]}-{link[1]} holds {stock_bits} bits, {wanted_bits} needed"
        )
        self.link = link
        self.wanted_bits = wanted_bits
        self.stock_bits = stock_bits
