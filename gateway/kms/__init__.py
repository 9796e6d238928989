"""KMS clients (ETSI GS QKD 014, SKIP) and the master-side key pool.

Public surface::

    Etsi014Client(name=, url=, kme_id=, ca_file=, cert_file=, key_file=, ...)   a KeySource
    SkipClient(name=, url=, local_system_id=, remote_system_ids=, ca_file=, ...)  a KeySource
    KeyPool(source, slave_sae_id, size_bits, ...)     keys fetched ahead of need
    RetryPolicy                                        capped, jittered retries
    the error tree of :mod:`gateway.kms.errors`
"""

from gateway.kms.errors import (
    KeyPoolClosed,
    KeyPoolError,
    KeyPoolTimeout,
    KmeIdentityMismatch,
    KmsBadRequest,
    KmsConnectionError,
    KmsError,
    KmsIndeterminate,
    KmsProtocolError,
    KmsTimeout,
    KmsTlsError,
    KmsUnauthorized,
    KmsUnavailable,
)
from gateway.kms.etsi014 import Etsi014Client
from gateway.kms.pool import KeyPool, PoolStats
from gateway.kms.retry import RetryPolicy
from gateway.kms.skip import SkipClient
from gateway.kms.types import KeySource, KeyStatus, QKDKey

__all__ = [
    "Etsi014Client",
    "KeyPool",
    "KeyPoolClosed",
    "KeyPoolError",
    "KeyPoolTimeout",
    "KeySource",
    "KeyStatus",
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
    "PoolStats",
    "QKDKey",
    "RetryPolicy",
    "SkipClient",
]
