"""SKIP (draft-cisco-skip) endpoints on the same KME server.

Routes, keys and random strings in hex as the draft has them::

    GET /capabilities                           {entropy, key, algorithm, localSystemID,
                                                 remoteSystemID[]}
    GET /key?remoteSystemID=<KME>&size=<bits>   {keyId, key}: a new key shared with <KME>
    GET /key/{keyId}?remoteSystemID=<KME>       {keyId, key}: the key <KME> issued, once
    GET /entropy?minentropy=<bits>              {randomStr, minentropy}

System IDs are KME IDs: a router asks its own KME for a key shared with the remote KME, and the
remote router fetches it there by keyId. Keys travel over the same QKD links (and relays) as
ETSI 014 keys and drain the same pools.

Deviation from the draft: the draft runs SKIP over TLS 1.3 with an external PSK; this simulator
serves it over the KME's mutual-TLS (certificate) listener, so a SKIP client authenticates with
an SAE certificate of this KME. Errors are the same JSON Error bodies as the ETSI routes: 400
for bad parameters, 404 for an unknown or already fetched keyId, 503 when the links run dry.
"""

from __future__ import annotations

import os

from aiohttp import web

from gateway.kms.sim.errors import BadRequest
from gateway.kms.sim.server import CALLER, CONTEXT, parse_size

__all__ = ["SKIP_ALGORITHM", "add_routes"]

# What the draft's capabilities call the key type; our keys are raw uniform bits for a PPK.
SKIP_ALGORITHM = "qkd"
_DEFAULT_SIZE = 256
_MAX_ENTROPY_BITS = 65536


def _only(request: web.Request, allowed: set[str]) -> None:
    extra = sorted(set(request.query) - allowed)
    if extra:
        raise BadRequest(f"unexpected query parameter(s): {', '.join(extra)[:200]}")


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw, 10)
    except ValueError:
        raise BadRequest(f"{name} shall be an integer") from None


def _remote(request: web.Request) -> str:
    remote = request.query.get("remoteSystemID")
    if not remote:
        raise BadRequest("remoteSystemID query parameter is required")
    return remote


async def _capabilities(request: web.Request) -> web.StreamResponse:
    _only(request, set())
    ctx = request.app[CONTEXT]
    return web.json_response({
        "entropy": True,
        "key": True,
        "algorithm": SKIP_ALGORITHM,
        "localSystemID": ctx.kme_id,
        "remoteSystemID": ctx.network.neighbours(ctx.kme_id),
    })


async def _new_key(request: web.Request) -> web.StreamResponse:
    _only(request, {"remoteSystemID", "size"})
    ctx = request.app[CONTEXT]
    remote = _remote(request)
    size = parse_size(_int_param(request, "size", _DEFAULT_SIZE), ctx.network)
    key_id, key = ctx.network.skip_issue(ctx.kme_id, remote, size)
    ctx.log.info("skip_key_issued", sae=request[CALLER], remote=remote, size=size, key_id=key_id)
    return web.json_response({"keyId": key_id, "key": key.reveal().hex()})


async def _key_by_id(request: web.Request) -> web.StreamResponse:
    _only(request, {"remoteSystemID"})
    ctx = request.app[CONTEXT]
    remote, key_id = _remote(request), request.match_info["key_id"]
    key = ctx.network.skip_collect(ctx.kme_id, remote, key_id)
    ctx.log.info("skip_key_delivered", sae=request[CALLER], remote=remote, key_id=key_id)
    return web.json_response({"keyId": key_id.lower(), "key": key.reveal().hex()})


async def _entropy(request: web.Request) -> web.StreamResponse:
    _only(request, {"minentropy"})
    bits = _int_param(request, "minentropy", _DEFAULT_SIZE)
    if bits <= 0 or bits % 8 or bits > _MAX_ENTROPY_BITS:
        raise BadRequest(f"minentropy shall be a multiple of 8 in [8, {_MAX_ENTROPY_BITS}]")
    return web.json_response({"randomStr": os.urandom(bits // 8).hex(), "minentropy": bits})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/capabilities", _capabilities, allow_head=False)
    app.router.add_get("/key", _new_key, allow_head=False)
    app.router.add_get("/key/{key_id}", _key_by_id, allow_head=False)
    app.router.add_get("/entropy", _entropy, allow_head=False)
