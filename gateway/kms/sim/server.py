"""The HTTP face of one simulated KME: ETSI GS QKD 014 V1.1.1 methods over mutual TLS.

Routes (SAE IDs in the path are URL-decoded by aiohttp)::

    GET       /api/v1/keys/{slave_SAE_ID}/status
    GET|POST  /api/v1/keys/{slave_SAE_ID}/enc_keys     GET: only ?number=&size=
    GET|POST  /api/v1/keys/{master_SAE_ID}/dec_keys    GET: only ?key_ID=

The calling SAE is the CN of its client certificate; a certificate of the PKI that does not name
an SAE attached to this KME gets 401 with no body (the standard defines none), and the reason is
logged. Request parsing is strict: an unknown field is a 400, not silently ignored, so a client
bug shows up here and not against a vendor KME. The SKIP routes live in ``skip``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.kms.sim.errors import (
    MSG_EXT_MANDATORY,
    MSG_SIZE_MULTIPLE_OF_8,
    BadRequest,
    KmeError,
    NotFound,
    Unauthorized,
)
from gateway.kms.sim.faults import Faults, faults_middleware
from gateway.kms.sim.model import PATH_EXTENSION, IssuedKey, KeyNetwork

__all__ = ["CALLER", "CONTEXT", "KmeContext", "build_app", "parse_size"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_KEY_REQUEST_FIELDS = {
    "number", "size", "additional_slave_SAE_IDs", "extension_mandatory", "extension_optional",
}


@dataclass
class KmeContext:
    kme_id: str
    network: KeyNetwork
    faults: Faults
    log: Any


CONTEXT = web.AppKey("kme_context", KmeContext)
CALLER = web.RequestKey("qkdgw_caller_sae", str)


def _error(exc: KmeError) -> web.Response:
    if isinstance(exc, Unauthorized):
        return web.Response(status=401)
    return web.json_response(exc.body(), status=exc.status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    try:
        return await handler(request)
    except KmeError as exc:
        ctx.log.info("kme_request_rejected", status=exc.status, reason=exc.message,
                     method=request.method, path=request.path, sae=request.get(CALLER))
        return _error(exc)
    except web.HTTPNotFound:
        return _error(NotFound(f"no such resource: {request.path[:200]}"))
    except web.HTTPMethodNotAllowed as exc:
        return web.json_response(
            {"message": f"method {request.method} not allowed here; use "
                        f"{' or '.join(sorted(exc.allowed_methods))}"},
            status=405, headers={"Allow": ",".join(sorted(exc.allowed_methods))},
        )
    except web.HTTPException as exc:  # e.g. 413 from aiohttp's body size limit
        return web.json_response({"message": exc.reason}, status=exc.status)
    except Exception:
        # A bug here must still answer in the standard's shape; the traceback holds no key
        # bytes (keys live only in Secret, whose repr is redacted).
        ctx.log.exception("kme_internal_error", method=request.method, path=request.path)
        return web.json_response({"message": "internal KME error; see the KME log"}, status=500)


def caller_sae(request: web.Request) -> str | None:
    """The CN of the verified client certificate, or None."""
    if request.transport is None:
        return None
    cert = request.transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    sae = caller_sae(request)
    if sae is None:
        raise Unauthorized("client certificate has no common name")
    if not ctx.network.attached(sae, ctx.kme_id):
        request[CALLER] = sae
        raise Unauthorized(f"certificate CN {sae[:128]!r} is not an SAE attached to this KME")
    request[CALLER] = sae
    return await handler(request)


def _int_field(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} shall be an integer")
    return value


def _query_int(request: web.Request, name: str) -> int | None:
    raw = request.query.getall(name, [])
    if not raw:
        return None
    if len(raw) > 1:
        raise BadRequest(f"query parameter {name} given more than once")
    try:
        return int(raw[0], 10)
    except ValueError:
        raise BadRequest(f"{name} shall be an integer") from None


def parse_size(size: int, net: KeyNetwork) -> int:
    """Validate a key size in bits against the KME limits (shared with SKIP)."""
    if size % 8:
        raise BadRequest(MSG_SIZE_MULTIPLE_OF_8)
    lim = net.limits
    if not lim.min_key_size <= size <= lim.max_key_size:
        raise BadRequest(
            f"size {size} is outside [min_key_size {lim.min_key_size}, "
            f"max_key_size {lim.max_key_size}]"
        )
    return size


def _key_request(body: dict[str, Any], net: KeyNetwork) -> tuple[int, int]:
    unknown = sorted(set(body) - _KEY_REQUEST_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s) in Key request: {', '.join(unknown)[:200]}")
    number = _int_field(body.get("number", 1), "number")
    if number < 1:
        raise BadRequest("number shall be a positive integer")
    if number > net.limits.max_key_per_request:
        raise BadRequest(
            f"number {number} exceeds max_key_per_request {net.limits.max_key_per_request}"
        )
    size = parse_size(_int_field(body.get("size", net.limits.key_size), "size"), net)
    extra = body.get("additional_slave_SAE_IDs", [])
    if not isinstance(extra, list) or not all(isinstance(s, str) for s in extra):
        raise BadRequest("additional_slave_SAE_IDs shall be an array of strings")
    if len(extra) > net.limits.max_sae_id_count:
        raise BadRequest(
            f"additional_slave_SAE_IDs lists {len(extra)} SAE IDs, more than max_SAE_ID_count "
            f"{net.limits.max_sae_id_count} (this KME does not support key multicast)"
        )
    names: list[str] = []
    for field in ("extension_mandatory", "extension_optional"):
        items = body.get(field, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise BadRequest(f"{field} shall be an array of objects")
        if field == "extension_mandatory":
            names = [str(name)[:64] for item in items for name in item]
    if names:  # this KME implements no extension, so any mandatory one is unsupported
        raise BadRequest(MSG_EXT_MANDATORY, [{"unsupported": names}])
    return number, size


async def _json_object(request: web.Request, what: str) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(f"{what} is not valid UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(f"{what} shall be a JSON object")
    return body


def _container(keys: list[IssuedKey]) -> web.Response:
    return web.json_response({"keys": [
        {
            "key_ID": k.key_id,
            "key": base64.b64encode(k.key.reveal()).decode("ascii"),
            "key_extension": {PATH_EXTENSION: list(k.path)},
        }
        for k in keys
    ]})


async def _status(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    slave = request.match_info["sae"]
    return web.json_response(ctx.network.status(ctx.kme_id, request[CALLER], slave))


async def _enc_keys(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    slave = request.match_info["sae"]
    if request.method == "GET":
        extra = sorted(set(request.query) - {"number", "size"})
        if extra:
            raise BadRequest(
                f"GET enc_keys takes only number and size, not {', '.join(extra)[:200]}; "
                "send other parameters in a POST Key request"
            )
        body: dict[str, Any] = {}
        for name in ("number", "size"):
            value = _query_int(request, name)
            if value is not None:
                body[name] = value
    else:
        body = await _json_object(request, "Key request")
    number, size = _key_request(body, ctx.network)
    keys = ctx.network.issue(ctx.kme_id, request[CALLER], slave, number, size)
    ctx.log.info("kme_keys_issued", master=request[CALLER], slave=slave, number=number,
                 size=size, path=list(keys[0].path), key_ids=[k.key_id for k in keys])
    return _container(keys)


def _key_ids(body: dict[str, Any]) -> list[str]:
    unknown = sorted(set(body) - {"key_IDs", "key_IDs_extension"})
    if unknown:
        raise BadRequest(f"unknown field(s) in Key IDs: {', '.join(unknown)[:200]}")
    items = body.get("key_IDs")
    if not isinstance(items, list) or not items:
        raise BadRequest("key_IDs shall be a non-empty array of {\"key_ID\": ...} objects")
    ids: list[str] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key_ID"), str):
            raise BadRequest("every key_IDs item shall be an object with a string key_ID")
        if set(item) - {"key_ID", "key_ID_extension"}:
            raise BadRequest("key_IDs items take only key_ID and key_ID_extension")
        ids.append(item["key_ID"])
    return ids


async def _dec_keys(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    master = request.match_info["sae"]
    if request.method == "GET":
        ids = request.query.getall("key_ID", [])
        if set(request.query) - {"key_ID"} or len(ids) != 1:
            raise BadRequest(
                "GET dec_keys takes exactly one key_ID query parameter; "
                "send several key IDs in a POST Key IDs body"
            )
    else:
        ids = _key_ids(await _json_object(request, "Key IDs"))
    keys = ctx.network.collect(ctx.kme_id, request[CALLER], master, ids)
    ctx.log.info("kme_keys_delivered", master=master, slave=request[CALLER],
                 key_ids=[k.key_id for k in keys])
    return _container(keys)


def build_app(ctx: KmeContext) -> web.Application:
    """The aiohttp application of one KME (ETSI routes; ``skip.add_routes`` adds SKIP)."""
    app = web.Application(middlewares=[_errors, faults_middleware(ctx.faults), _authenticate])
    app[CONTEXT] = ctx
    base = "/api/v1/keys/{sae}"
    app.router.add_get(f"{base}/status", _status, allow_head=False)
    app.router.add_route("GET", f"{base}/enc_keys", _enc_keys)
    app.router.add_route("POST", f"{base}/enc_keys", _enc_keys)
    app.router.add_route("GET", f"{base}/dec_keys", _dec_keys)
    app.router.add_route("POST", f"{base}/dec_keys", _dec_keys)
    return app
