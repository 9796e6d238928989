"""Errors raised by the KMS clients and the key pool.

The whole tree, so a caller can pick the level it needs::

    KmsError                          anything that went wrong talking to a KMS
    ├── KmsBadRequest                 400 (or a "not found" 500): carries the KME's message
    ├── KmsUnauthorized               401: this SAE may not make that call
    ├── KmsUnavailable                503: the KME said it cannot serve now (retryable)
    ├── KmsTimeout                    no answer within the configured time (retryable)
    ├── KmsConnectionError            TCP/TLS connection failed or broke (retryable)
    ├── KmsTlsError                   the TLS handshake failed (bad CA, no client cert, ...)
    │   └── KmeIdentityMismatch       the peer certificate does not name the configured KME ID
    ├── KmsProtocolError              the answer is malformed (bad JSON, short key, wrong IDs)
    ├── KmsIndeterminate              dec_keys may or may not have consumed the keys: abort the
    │                                 rekey and start again with fresh keys, do not repeat
    └── KeyPoolError                  the key pool could not hand out keys
        ├── KeyPoolTimeout            not enough keys arrived within the caller's timeout
        └── KeyPoolClosed             the pool was closed

Messages name the KMS, the method and what to check; they never contain key bytes (only key
IDs, which are public by design: the peers exchange them in clear).
"""

from __future__ import annotations

__all__ = [
    "KeyPoolClosed",
    "KeyPoolError",
    "KeyPoolTimeout",
    "KmeIdentityMismatch",
    "KmsBadRequest",
    "KmsConnectionError",
    "KmsError",
    "KmsIndeterminate",
    "KmsProtocolError",
    "KmsTimeout",
    "KmsTlsError",
    "KmsUnauthorized",
    "KmsUnavailable",
]


class KmsError(Exception):
    """Base of every KMS client and key pool error."""


class KmsBadRequest(KmsError):
    """The KME rejected the request (400), e.g. a size it does not support or unknown key IDs.

    ``server_message`` is the KME's own ``message`` text (truncated), ``not_found`` is true when
    the KME said the key IDs are unknown (also for KMEs that answer that with a 500).
    """

    def __init__(self, message: str, *, server_message: str = "", not_found: bool = False) -> None:
        super().__init__(message)
        self.server_message = server_message
        self.not_found = not_found


class KmsUnauthorized(KmsError):
    """401: the KME does not let this SAE make that call (wrong SAE certificate or key owner).

    ``server_message`` is the KME's own text; ``not_found`` is true when that text says the key
    IDs are unknown (some KMEs answer unknown keys with a 401).
    """

    def __init__(self, message: str, *, server_message: str = "", not_found: bool = False) -> None:
        super().__init__(message)
        self.server_message = server_message
        self.not_found = not_found


class KmsUnavailable(KmsError):
    """503: the KME reported an error on its side; retryable after a pause."""


class KmsTimeout(KmsError):
    """No complete answer within the configured timeout."""


class KmsConnectionError(KmsError):
    """The connection could not be made or broke before an answer arrived."""


class KmsTlsError(KmsError):
    """The TLS handshake with the KME failed (CA, client certificate, TLS version)."""


class KmeIdentityMismatch(KmsTlsError):
    """The KME certificate chains to the CA but does not carry the configured KME ID."""


class KmsProtocolError(KmsError):
    """The KME answered 200 with something the standard does not allow (or we cannot use)."""


class KmsIndeterminate(KmsError):
    """dec_keys was sent but its answer was lost: the keys may already be consumed.

    Repeating the call could fail with "not found" or, worse, succeed on a KME that never
    erases keys; the protocol layer must abort this rekey and start again with new keys.
    """


class KeyPoolError(KmsError):
    """The key pool could not hand out keys."""


class KeyPoolTimeout(KeyPoolError):
    """Not enough keys became available within the caller's timeout."""


class KeyPoolClosed(KeyPoolError):
    """The pool is closed; no more keys are handed out."""
