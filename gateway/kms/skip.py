"""SKIP client (draft-cisco-skip) behind the same :class:`KeySource` interface as ETSI 014.

SKIP speaks of systems, not SAEs: a router asks its own key server for a key shared with a
*remote system* and the remote router fetches it there by ``keyId``. ``remote_system_ids`` maps
the SAE IDs the rest of the gateway uses to those remote system IDs.

=======================  ==========================================================
KeySource method         SKIP request
=======================  ==========================================================
``status(sae)``          ``GET /capabilities`` (a :class:`KeyStatus` without stock)
``get_keys(sae, n, s)``  ``n`` x ``GET /key?remoteSystemID=<remote>&size=<s>``
``get_keys_by_id``       ``GET /key/{keyId}?remoteSystemID=<remote>`` per key ID
=======================  ==========================================================

Keys and IDs: keys are hex; key IDs are opaque hex strings (canonicalised to lower case).

Deviation from the draft: the draft protects SKIP with TLS 1.3 and an external pre-shared key.
Python's ``ssl`` module has no TLS 1.3 external-PSK client API, so this client uses the same
mutual-TLS certificates as ETSI 014 (and the same KME identity check against the key server's
``localSystemID``). Key servers that accept only TLS-PSK are not supported.

SKIP has no stock counter: :meth:`SkipClient.status` marks its answer with
:data:`~gateway.kms.wire.STOCK_UNKNOWN`, and the key pool then reports ``stored_key_count`` None.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.keymaterial import Secret
from gateway.kms.errors import KmsBadRequest, KmsProtocolError
from gateway.kms.http import KmeHttp, fetch_once
from gateway.kms.retry import RetryPolicy, call_with_retries
from gateway.kms.types import KeyStatus, QKDKey
from gateway.kms.wire import STOCK_UNKNOWN, parse_json_object

__all__ = ["SkipClient"]

_KEY_ID = re.compile(r"^[0-9a-fA-F][0-9a-fA-F-]{0,127}$")
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")
# SKIP has no status call that reports sizes; 256 bits is the draft's example and the PPK size
# routers use. Only reported through status(); get_keys always asks for an explicit size.
_DEFAULT_SIZE = 256


class SkipClient:
    """A :class:`~gateway.kms.types.KeySource` for one SKIP key server.

    ``url``: ``https://host:port`` of the key server. ``local_system_id``: its
    ``localSystemID``, which its certificate must also carry (as for a KME ID).
    ``remote_system_ids``: SAE ID -> remote system ID. The TLS, timeout and retry arguments are
    those of :class:`~gateway.kms.etsi014.Etsi014Client`.
    """

    def __init__(
        self,
        *,
        name: str,
        url: str,
        local_system_id: str,
        remote_system_ids: Mapping[str, str],
        ca_file: Path | str,
        cert_file: Path | str,
        key_file: Path | str,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 4,
        check_hostname: bool = True,
    ) -> None:
        if not remote_system_ids:
            raise ValueError(f"kms {name!r}: remote_system_ids must map at least one SAE ID")
        self._http = KmeHttp(
            name=name, url=url, kme_id=local_system_id, ca_file=ca_file, cert_file=cert_file,
            key_file=key_file, timeout=timeout, connect_timeout=connect_timeout,
            max_connections=max_connections, check_hostname=check_hostname,
            not_found_statuses=frozenset({404}))
        self._name = name
        self._local = local_system_id
        self._remotes = dict(remote_system_ids)
        self._retry = retry or RetryPolicy()

    @property
    def name(self) -> str:
        return self._name

    async def __aenter__(self) -> SkipClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _remote(self, sae_id: str) -> str:
        try:
            return self._remotes[sae_id]
        except KeyError:
            raise KmsBadRequest(
                f"kms {self._name!r}: no remoteSystemID configured for SAE {sae_id!r}; add it "
                f"to remote_system_ids (known: {sorted(self._remotes)})") from None

    async def capabilities(self) -> dict[str, Any]:
        """The raw ``/capabilities`` object (checked for ``localSystemID`` and a remote list)."""
        what = f"kms {self._name!r} capabilities"

        async def once() -> dict[str, Any]:
            obj = parse_json_object(await self._http.exchange("GET", "/capabilities", "status"),
                                    what)
            remotes = obj.get("remoteSystemID")
            if not isinstance(remotes, list) or not all(isinstance(r, str) for r in remotes):
                raise KmsProtocolError(f"{what}: remoteSystemID is not a list of strings")
            if str(obj.get("localSystemID")) != self._local:
                raise KmsProtocolError(f"{what}: localSystemID {obj.get('localSystemID')!r} is "
                                       f"not the configured {self._local!r}")
            return obj

        return await call_with_retries(once, self._retry, event_context={"kms": self._name})

    async def status(self, slave_sae_id: str) -> KeyStatus:
        remote = self._remote(slave_sae_id)
        caps = await self.capabilities()
        if remote not in caps["remoteSystemID"]:
            raise KmsBadRequest(
                f"kms {self._name!r}: key server cannot reach remoteSystemID {remote!r} "
                f"(reachable: {caps['remoteSystemID'][:8]})")
        return KeyStatus(
            source_kme_id=self._local, target_kme_id=remote, master_sae_id="",
            slave_sae_id=slave_sae_id, key_size=_DEFAULT_SIZE, stored_key_count=0,
            max_key_count=0, max_key_per_request=1, max_key_size=0, min_key_size=0,
            max_sae_id_count=0, status_extension={STOCK_UNKNOWN: True, "skip": caps})

    async def get_keys(self, slave_sae_id: str, number: int = 1,
                       size: int | None = None) -> list[QKDKey]:
        """``number`` new keys shared with the slave's remote system (one request per key)."""
        if number < 1:
            raise ValueError("number must be >= 1")
        size = _DEFAULT_SIZE if size is None else size
        if size <= 0 or size % 8:
            raise ValueError(f"size {size} must be a positive multiple of 8 bits")
        params = {"remoteSystemID": self._remote(slave_sae_id), "size": str(size)}
        what = f"kms {self._name!r} skip key"

        async def once() -> QKDKey:
            body = await self._http.exchange("GET", "/key", "enc_keys", params)
            return _parse_key(parse_json_object(body, what), what, size, None)

        keys: list[QKDKey] = []
        for _ in range(number):
            # A lost answer only wastes a key on the server, so new-key requests are retried.
            keys.append(await call_with_retries(once, self._retry,
                                                event_context={"kms": self._name}))
        if len({k.key_id for k in keys}) != len(keys):
            raise KmsProtocolError(f"{what}: key server returned the same keyId twice")
        return keys

    async def get_keys_by_id(self, master_sae_id: str, key_ids: Sequence[str]) -> list[QKDKey]:
        """The keys the master's system obtained, each fetched once (SKIP erases it then)."""
        if not key_ids:
            raise ValueError("key_ids must not be empty")
        ids = [_canonical_id(k) for k in key_ids]
        if len(set(ids)) != len(ids):
            raise ValueError("key_ids contains duplicates")
        params = {"remoteSystemID": self._remote(master_sae_id)}
        what = f"kms {self._name!r} skip key by id"
        keys: list[QKDKey] = []
        for key_id in ids:
            async def once(key_id: str = key_id) -> bytes:
                return await self._http.exchange(
                    "GET", f"/key/{quote(key_id, safe='')}", "dec_keys", params)

            body = await fetch_once(once, self._retry, f"{what} {key_id}")
            keys.append(_parse_key(parse_json_object(body, what), what, None, key_id))
        if len({len(k.key) for k in keys}) > 1:
            raise KmsProtocolError(f"{what}: keys of different sizes")
        return keys


def _canonical_id(value: object) -> str:
    if not isinstance(value, str) or not _KEY_ID.fullmatch(value):
        raise KmsProtocolError(f"SKIP keyId {str(value)[:64]!r} is not a hex identifier")
    return value.lower()


def _parse_key(obj: dict[str, Any], what: str, size: int | None, want_id: str | None) -> QKDKey:
    key_id = _canonical_id(obj.get("keyId"))
    if want_id is not None and key_id != want_id:
        raise KmsProtocolError(f"{what}: asked for keyId {want_id}, got {key_id}")
    encoded = obj.get("key")
    if not isinstance(encoded, str) or not _HEX.fullmatch(encoded):
        raise KmsProtocolError(f"{what}: key {key_id} is not hex")
    raw = bytes.fromhex(encoded)
    if size is not None and len(raw) * 8 != size:
        raise KmsProtocolError(f"{what}: key {key_id} has {len(raw) * 8} bits, {size} asked")
    return QKDKey(key_id, Secret(raw))
