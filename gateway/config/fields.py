"""Field types shared by the models: names, durations, addresses, networks, files, public keys.

Every validator here raises :func:`fail`, a pydantic custom error carrying an operator-language
message and a fix, so :mod:`gateway.config.translate` needs no guessing for our own types.
File paths resolve against the configuration file's directory (``context["base_dir"]``), and
referenced files are checked to exist at load time, so ``check-config`` catches a missing key file
before ``run`` would.

Equal per-tunnel values are held once (the end of this module): :func:`validate_document` puts a
table into the context (``context["shared"]``) and validators hand out one object per distinct
value instead of a copy per tunnel: :func:`share_fields_set` (a frozen model's set of given
field names, pydantic's ``__pydantic_fields_set__``, ~200-730 bytes per model; frozen models
never change it: assignment raises first, copies copy it) and :func:`share_value` (an equal
frozen sub-model: the hub's WireGuard ``private_key`` in every tunnel, ~1.6 KB). Only identities
change: values, messages and checks are the same (a model validated without the table, e.g. in
a test, shares nothing).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, PlainSerializer, ValidationInfo
from pydantic_core import PydanticCustomError

from gateway.config.durations import format_duration, parse_duration
from gateway.config.errors import looks_like_key, show
from gateway.config.loader import as_text

__all__ = [
    "PASTED",
    "SHARED",
    "Cidr",
    "Count",
    "Duration",
    "Ed25519PublicKey",
    "Endpoint",
    "ExistingFile",
    "HostPort",
    "IfName",
    "Interface",
    "IpAddress",
    "MlDsa65PublicKey",
    "Name",
    "PeerAddress",
    "Port",
    "ResolvedPath",
    "WireGuardPublicKey",
    "check_readable",
    "fail",
    "longer_than_zero",
    "resolve_path",
    "share_fields_set",
    "share_value",
    "show",
]

DEFAULT_PEER_PORT = 7447
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\.?")


def fail(kind: str, message: str, fix: str = "", field: str = "") -> PydanticCustomError:
    """A validation error in operator language. ``field`` points one level below the value
    being validated (a model-level rule about one of its keys)."""
    return PydanticCustomError(
        f"cfg_{kind}", "{message}", {"message": message, "fix": fix, "field": field}
    )


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    return Path(context.get("base_dir", Path.cwd()))


# -- names -----------------------------------------------------------------------------------
def _name(value: Any) -> str:
    # `name: 2024` reads as a number in YAML; it is still a fine name, spelled as written.
    value = as_text(value) if isinstance(value, int) else value
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise fail("name", f"{show(value)} is not a valid name",
                   "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def _ifname(value: Any) -> str:
    # The kernel's dev_valid_name(): 1-15 bytes, not "." or "..", no '/', ':' or whitespace.
    if (not isinstance(value, str) or not 0 < len(value.encode()) <= 15
            or value in (".", "..") or re.search(r"[/:\s]", value)):
        raise fail("ifname", f"{show(value)} is not a valid interface name",
                   "use at most 15 characters without '/', ':' or spaces, e.g. wg-cluj")
    return value


Name = Annotated[str, BeforeValidator(_name)]
IfName = Annotated[str, BeforeValidator(_ifname)]


# -- durations -------------------------------------------------------------------------------
def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise fail("duration", f"{show(value)} is not a duration",
                   "write e.g. 120s or 5m") from None


Duration = Annotated[float, BeforeValidator(_duration), PlainSerializer(format_duration)]


def longer_than_zero(example: str) -> AfterValidator:
    """For a Duration where 0 would mean "give up at once" or "expire at once", never "off"."""

    def check(seconds: float) -> float:
        if seconds <= 0:
            raise fail("duration_range", "must be longer than 0s", f"write e.g. {example}")
        return seconds

    return AfterValidator(check)


def _count(value: Any) -> Any:
    # Pydantic reads true as 1; `target: yes` is a typo, not a pool of one key.
    if isinstance(value, bool):
        raise fail("count", f"{show(value)} is not a whole number", "write e.g. 64")
    return value


Count = Annotated[int, BeforeValidator(_count)]


# -- addresses -------------------------------------------------------------------------------
def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise fail("port", f"{show(value)} is not a port number", "write a number from 1 to 65535")
    return value


Port = Annotated[int, BeforeValidator(_port)]


def _ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise fail("ip", f"{show(value)} is not an IP address",
                   "write e.g. 192.0.2.1 or 2001:db8::1") from None


def _cidr(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = str(value)
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise fail("cidr", f"{show(value)} is not a network in CIDR notation",
                   "write e.g. 10.1.0.0/16 or 2001:db8:1::/48") from None
    raise fail("cidr", f"{show(value)} has host bits set", f"write {net}")


def _interface(value: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(str(value))
    except ValueError:
        raise fail("cidr", f"{show(value)} is not an address with prefix length",
                   "write e.g. 10.77.0.1/24") from None


IpAddress = Annotated[ipaddress.IPv4Address | ipaddress.IPv6Address,
                      BeforeValidator(_ip), PlainSerializer(str)]
Cidr = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network,
                 BeforeValidator(_cidr), PlainSerializer(str)]
Interface = Annotated[ipaddress.IPv4Interface | ipaddress.IPv6Interface,
                      BeforeValidator(_interface), PlainSerializer(str)]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """``host:port``; ``host`` is an IP address or a DNS name."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _parse_endpoint(value: Any, default_port: int | None) -> Endpoint:
    example = "192.0.2.1:7447 or [2001:db8::1]:7447"
    if not isinstance(value, str):
        raise fail("endpoint", f"{show(value)} is not host:port", f"write e.g. {example}")
    host, port_text = value, ""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise fail("endpoint", f"{show(value)} is not host:port", f"write e.g. {example}")
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif value.count(":") > 1:
        raise fail("endpoint", f"{show(value)}: an IPv6 address needs brackets",
                   "write e.g. [2001:db8::1]:7447")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.fullmatch(host):
            raise fail("endpoint", f"{show(host)} is not an IP address or host name",
                       f"write e.g. {example}") from None
    if not port_text:
        if default_port is None:
            raise fail("endpoint", f"{show(value)} has no port", f"write e.g. {example}")
        return Endpoint(host, default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise fail("endpoint", f"{show(port_text)} is not a port number",
                   "write a number from 1 to 65535 after the ':'")
    return Endpoint(host, int(port_text))


def _peer_address(value: Any) -> Endpoint:
    return value if isinstance(value, Endpoint) else _parse_endpoint(value, DEFAULT_PEER_PORT)


def _host_port(value: Any) -> Endpoint:
    return value if isinstance(value, Endpoint) else _parse_endpoint(value, None)


# A peer's control-protocol address: the port defaults to 7447.
PeerAddress = Annotated[Endpoint, BeforeValidator(_peer_address), PlainSerializer(str)]
# Any other host:port (WireGuard endpoint, metrics listener): the port is mandatory.
HostPort = Annotated[Endpoint, BeforeValidator(_host_port), PlainSerializer(str)]


# -- files -----------------------------------------------------------------------------------
def resolve_path(value: Path, base_dir: Path) -> Path:
    """``value`` against ``base_dir``, normalised (``pair/../keys`` -> ``keys``) for messages."""
    return Path(os.path.normpath(value if value.is_absolute() else base_dir / value))


def _resolve(value: Path, info: ValidationInfo) -> Path:
    return resolve_path(value, _base_dir(info))


def check_readable(path: Path) -> str:
    """Empty when ``path`` is a readable regular file, else the reason (no file content)."""
    if not path.exists():
        return f"file {path} does not exist"
    if not path.is_file():
        return f"{path} is not a regular file"
    if not os.access(path, os.R_OK):
        return f"file {path} is not readable"
    return ""


PASTED = "no such file, and this looks like key material rather than a path (not shown)"


def _existing(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, info)
    reason = check_readable(path)
    if reason and looks_like_key(str(value)):
        # Pasted key material: the reason would quote it. An existing file is never refused.
        raise fail("inline_secret", PASTED, "put it in a file and write the file's path here")
    if reason:
        raise fail("file", reason, "check the path (relative paths start at this file's folder)")
    return path




ResolvedPath = Annotated[Path, AfterValidator(_resolve)]
ExistingFile = Annotated[Path, AfterValidator(_existing)]


# -- public keys -----------------------------------------------------------------------------
def _public_key(length: int, label: str, how: str) -> Callable[[Any, ValidationInfo], bytes]:
    """Raw public key bytes, written inline as base64 or as ``{file: PATH}`` holding base64.
    Public keys are not secrets, so inline is fine (and quoting them in errors is too)."""

    def decode(text: str, where: str) -> bytes:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise fail("base64", f"{where} is not valid base64", f"copy it from {how}") from None
        if len(raw) != length:
            raise fail("key_length",
                       f"{where} decodes to {len(raw)} bytes; {label} public keys are {length}",
                       f"copy the whole key from {how}")
        return raw

    def validate(value: Any, info: ValidationInfo) -> bytes:
        if isinstance(value, bytes) and len(value) == length:
            return value
        if isinstance(value, str):
            # Not quoted: what is pasted here by mistake is sometimes a private key.
            return decode(value, f"this {label} public key")
        if isinstance(value, dict) and set(value) == {"file"} and isinstance(value["file"], str):
            path = _resolve(Path(value["file"]), info)
            reason = check_readable(path)
            if reason and looks_like_key(value["file"]):
                raise fail("inline_secret", PASTED,
                           "write the base64 key inline, or {file: PATH} to a .pub file")
            if reason:
                raise fail("file", reason,
                           "check the path (relative paths start at this file's folder)")
            return decode(path.read_text(encoding="ascii", errors="replace"), f"file {path}")
        raise fail("public_key", f"expected a base64 {label} public key",
                   "write the base64 key inline, or {file: PATH} (the only key allowed here)")

    return validate


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


_KEYGEN = "`qkd-gateway keygen` output (or the peer's .pub file)"
_B64 = PlainSerializer(_b64)
Ed25519PublicKey = Annotated[bytes, BeforeValidator(_public_key(32, "Ed25519", _KEYGEN)), _B64]
MlDsa65PublicKey = Annotated[
    bytes, BeforeValidator(_public_key(1952, "ML-DSA-65", _KEYGEN)), _B64
]
_WG = "`wg pubkey` or `qkd-gateway keygen --wireguard`"
WireGuardPublicKey = Annotated[bytes, BeforeValidator(_public_key(32, "WireGuard", _WG)), _B64]


# -- equal values held once (see the module docstring) -----------------------------------
_T = TypeVar("_T")

#: The validation context's key of the table.
SHARED = "shared"


def _table(info: ValidationInfo) -> dict[Any, Any] | None:
    context = info.context
    table = context.get(SHARED) if isinstance(context, dict) else None
    return table if isinstance(table, dict) else None


def share_fields_set(model: BaseModel, info: ValidationInfo) -> None:
    """Replace ``model``'s set of given field names by the table's equal one (frozen models)."""
    table = _table(info)
    if table is None or not model.model_config.get("frozen"):
        return
    given = model.__pydantic_fields_set__
    shared = table.setdefault(("fields_set", type(model), frozenset(given)), given)
    if shared is not given:
        object.__setattr__(model, "__pydantic_fields_set__", shared)


def share_value(value: _T, info: ValidationInfo) -> _T:
    """The table's object equal to ``value`` (a frozen model: same type, fields, private
    attributes and given fields), or ``value`` itself, which then becomes that object."""
    table = _table(info)
    if table is None or not isinstance(value, BaseModel) or not value.model_config.get("frozen"):
        return value
    try:
        key = ("value", type(value), frozenset(value.__pydantic_fields_set__), value,
               tuple(sorted((value.__pydantic_private__ or {}).items())))
        shared: _T = table.setdefault(key, value)
    except TypeError:  # a field that cannot be hashed (a list): not shared
        return value
    return shared
