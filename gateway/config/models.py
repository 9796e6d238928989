"""The configuration file, key by key: site, listener, KMS, peers, tunnels, telemetry.

Every model forbids unknown keys (a typo must not silently become a default). Durations are
``float`` seconds; paths are absolute (resolved against the file's directory); public keys are
raw ``bytes``; private keys are :class:`~gateway.config.sources.SecretSource` (a path to read).
The reference with every default is docs/config.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from gateway.config.durations import format_duration
from gateway.config.fields import (
    Count,
    Duration,
    Ed25519PublicKey,
    ExistingFile,
    HostPort,
    IpAddress,
    MlDsa65PublicKey,
    Name,
    PeerAddress,
    Port,
    ResolvedPath,
    fail,
    longer_than_zero,
    show,
)
from gateway.config.loader import as_text
from gateway.config.sources import GeneratedKey, SecretSource
from gateway.config.tunnels import Tunnel

__all__ = [
    "DaemonSettings",
    "GatewayConfig",
    "Identity",
    "Kms",
    "KmsPool",
    "KmsTimeouts",
    "Listen",
    "LogSettings",
    "MetricsSettings",
    "MqttSettings",
    "Peer",
    "PublicKeys",
    "Site",
    "SkipSettings",
    "Telemetry",
]

# The peer control protocol's TCP port. Unassigned by IANA; chosen for this project.
DEFAULT_LISTEN_PORT = 7447
# MQTT's Keep Alive is a 16-bit number of seconds (MQTT 3.1.1 section 3.1.2.10; 0 would turn it
# off, so a dead broker would go unnoticed); gateway.telemetry refuses less than 5 s.
MQTT_MIN_KEEPALIVE = 5.0
MQTT_MAX_KEEPALIVE = 65535.0
# The daemon's reconcile pass (data plane and keys compared with the declared state, drift such
# as a killed wireguard-go or a peer deleted by hand restored). Each pass dumps every interface,
# so more often than every second would keep a big hub busy; drift must not outlast an hour.
RECONCILE_DEFAULT = 30.0
RECONCILE_MIN = 1.0
RECONCILE_MAX = 3600.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _url(schemes: tuple[str, ...], example: str) -> BeforeValidator:
    def validate(value: object) -> str:
        if not isinstance(value, str):
            raise fail("url", f"{show(value)} is not a URL", f"write e.g. {example}")
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise fail("url", f"{show(value)} must start with {' or '.join(schemes)}://",
                       f"write e.g. {example}")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1 or parts.query or parts.fragment or parts.username:
            raise fail("url", f"{show(value)} is not scheme://host:port",
                       f"write e.g. {example}")
        return value.rstrip("/")

    return BeforeValidator(validate)


HttpsUrl = Annotated[str, _url(("https",), "https://127.0.0.1:8443")]
MqttUrl = Annotated[str, _url(("mqtt", "mqtts"), "mqtts://broker.example:8883")]


class Identity(_Strict):
    """This site's private keys, as written by ``qkd-gateway keygen``."""

    ed25519_key: GeneratedKey
    mldsa65_key: GeneratedKey


class Site(_Strict):
    name: Name
    sae_id: Name
    identity: Identity


class Listen(_Strict):
    """Where the peer control protocol accepts connections from peers."""

    address: IpAddress = Field(default="0.0.0.0", validate_default=True)
    port: Port = DEFAULT_LISTEN_PORT


class KmsTimeouts(_Strict):
    connect: Annotated[Duration, longer_than_zero("5s")] = 5.0
    request: Annotated[Duration, longer_than_zero("10s")] = 10.0


class KmsPool(_Strict):
    """Keys fetched ahead: refill in ``batch``es up to ``target`` when below ``low_water``."""

    target: Count = Field(default=64, gt=0)
    batch: Count = Field(default=8, gt=0)
    low_water: Count = Field(default=16, ge=0)

    @model_validator(mode="after")
    def _order(self) -> KmsPool:
        if self.batch > self.target:
            raise fail("order", "batch is larger than target", "make batch <= target", "batch")
        if self.low_water >= self.target:
            raise fail("order", "low_water must be below target", "e.g. target: 64, "
                       "low_water: 16", "low_water")
        return self


def _system_id(value: object) -> str:
    value = as_text(value) if isinstance(value, int) else value
    if not isinstance(value, str) or not 0 < len(value) <= 128 or not value.isascii() \
            or not value.isprintable() or " " in value:
        raise fail("system_id", f"{show(value)} is not a SKIP remote system ID",
                   "use 1-128 printable characters without spaces, as the KMS names it")
    return value


SystemId = Annotated[str, BeforeValidator(_system_id)]


class SkipSettings(_Strict):
    """Cisco SKIP names the far end of a key by its ``remoteSystemID``, not by an SAE ID. A peer
    whose SAE ID is not listed here is asked for by its SAE ID (what the embedded KME uses)."""

    remote_system_ids: dict[Name, SystemId] = Field(default_factory=dict)


def _low_stock_default(data: object) -> object:
    """``low_stock`` defaults to the pool's ``low_water`` when that is a valid count; an invalid
    one is reported at pool.low_water only, not a second time here."""
    if isinstance(data, dict) and "low_stock" not in data:
        pool = data.get("pool")
        water = pool.get("low_water") if isinstance(pool, dict) else None
        if isinstance(water, int) and not isinstance(water, bool) and water >= 0:
            return {**data, "low_stock": water}
    return data


class Kms(_Strict):
    """One key management system this site's gateway (the SAE) fetches keys from."""

    name: Name
    kind: Literal["etsi014", "skip"]
    url: HttpsUrl
    kme_id: Name | None = None
    ca_file: ExistingFile
    client_cert: ExistingFile
    client_key: SecretSource
    timeouts: KmsTimeouts = Field(default_factory=KmsTimeouts)
    pool: KmsPool = Field(default_factory=KmsPool)
    # The daemon stretches the rekey interval while the KMS reports fewer stored keys than this
    # (gateway.daemon.schedule); 0 never stretches. Default: pool.low_water.
    low_stock: Count = Field(default=KmsPool.model_fields["low_water"].default, ge=0)
    skip: SkipSettings | None = None

    _default_low_stock = model_validator(mode="before")(_low_stock_default)

    @model_validator(mode="after")
    def _kind_rules(self) -> Kms:
        # ETSI GS QKD 014 forbids using a KME whose ID was not confirmed from its certificate.
        if self.kind == "etsi014" and self.kme_id is None:
            raise fail("missing_rule", "required for kind: etsi014 (the KME ID is checked "
                       "against the KME's certificate)", "add kme_id: ID", "kme_id")
        if self.kind != "skip" and self.skip is not None:
            raise fail("kind", f"a skip: block does not belong in a KMS of kind {self.kind}",
                       "remove it, or set kind: skip", "skip")
        return self

    def remote_system_id(self, sae_id: str) -> str:
        """The SKIP ``remoteSystemID`` for the peer with ``sae_id`` (itself unless mapped)."""
        mapped = self.skip.remote_system_ids if self.skip is not None else {}
        return mapped.get(sae_id, sae_id)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 443


class PublicKeys(_Strict):
    """A peer's pinned identity: base64 inline, or ``{file: PATH}`` to a ``.pub`` file."""

    ed25519: Ed25519PublicKey
    mldsa65: MlDsa65PublicKey


class Peer(_Strict):
    name: Name
    sae_id: Name
    address: PeerAddress
    public_keys: PublicKeys


class LogSettings(_Strict):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class MqttSettings(_Strict):
    url: MqttUrl
    topic_prefix: str = Field(default="qkd-gateway", min_length=1)
    ca_file: ExistingFile | None = None
    client_cert: ExistingFile | None = None
    client_key: SecretSource | None = None
    keepalive: Duration = 60.0

    @model_validator(mode="after")
    def _tls(self) -> MqttSettings:
        if not MQTT_MIN_KEEPALIVE <= self.keepalive <= MQTT_MAX_KEEPALIVE:
            raise fail("duration_range", f"{format_duration(self.keepalive)} is outside "
                       f"{format_duration(MQTT_MIN_KEEPALIVE)} to "
                       f"{format_duration(MQTT_MAX_KEEPALIVE)} (MQTT keep-alive is 16-bit "
                       "seconds; the client needs at least 5s)", "write e.g. 60s", "keepalive")
        if (self.client_cert is None) != (self.client_key is None):
            missing = "client_key" if self.client_key is None else "client_cert"
            raise fail("missing_rule", "client_cert and client_key go together",
                       f"add {missing}, or remove both", missing)
        tls = self.url.startswith("mqtts://")
        for key in ("ca_file", "client_cert"):
            if getattr(self, key) is not None and not tls:
                raise fail("tls", f"{key} needs an mqtts:// URL", "use mqtts://", key)
        if any(c in self.topic_prefix for c in "#+") or self.topic_prefix.endswith("/"):
            raise fail("topic", "topic_prefix cannot hold '#', '+' or end with '/'",
                       "write e.g. qkd-gateway/bucharest", "topic_prefix")
        return self


class MetricsSettings(_Strict):
    listen: HostPort


class Telemetry(_Strict):
    log: LogSettings = Field(default_factory=LogSettings)
    mqtt: MqttSettings | None = None
    metrics: MetricsSettings | None = None


class DaemonSettings(_Strict):
    """How the daemon itself runs."""

    reconcile_interval: Duration = RECONCILE_DEFAULT

    @model_validator(mode="after")
    def _bounds(self) -> DaemonSettings:
        if not RECONCILE_MIN <= self.reconcile_interval <= RECONCILE_MAX:
            raise fail("duration_range", f"{format_duration(self.reconcile_interval)} is outside "
                       f"{format_duration(RECONCILE_MIN)} to {format_duration(RECONCILE_MAX)} "
                       "(each pass dumps every interface; drift must not last longer)",
                       "write e.g. 30s", "reconcile_interval")
        return self


class GatewayConfig(_Strict):
    """The whole file. Build it with :func:`gateway.config.load_config`, which also runs the
    checks across sections (unique names, references, overlapping subnets)."""

    site: Site
    state_dir: ResolvedPath = Path("/var/lib/qkd-gateway")
    control_socket: ResolvedPath = Path("/run/qkd-gateway/control.sock")
    listen: Listen = Field(default_factory=Listen)
    kms: list[Kms] = Field(default_factory=list)
    peers: list[Peer] = Field(default_factory=list)
    tunnels: list[Tunnel] = Field(default_factory=list)
    telemetry: Telemetry = Field(default_factory=Telemetry)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)

    def peer(self, name: str) -> Peer:
        return next(p for p in self.peers if p.name == name)

    def kms_named(self, name: str) -> Kms:
        return next(k for k in self.kms if k.name == name)

