"""Tunnel models: what each protected link is, its key policy, timers and data-plane settings.

A tunnel's ``kind`` selects exactly one sub-block (``wireguard:`` or ``xfrm:``). Rules between
keys of one tunnel are checked here; rules between tunnels (unique names, overlapping subnets,
references to peers and KMS) are in :mod:`gateway.config.crosscheck`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from gateway.config.durations import format_duration
from gateway.config.fields import (
    Cidr,
    Count,
    Duration,
    HostPort,
    IfName,
    Interface,
    IpAddress,
    Name,
    Port,
    WireGuardPublicKey,
    fail,
    longer_than_zero,
    share_fields_set,
    share_value,
)
from gateway.config.sources import GeneratedKey

__all__ = ["EspLifetime", "Policy", "Tunnel", "WireGuardSettings", "XfrmSettings"]

Policy = Literal["qkd+pqc", "qkd", "pqc", "any"]

# WireGuard's own timers (REKEY_AFTER_TIME 120 s, REJECT_AFTER_TIME 180 s in the whitepaper):
# a fresh PSK per WireGuard session keeps QKD keys and sessions in step.
DEFAULT_REKEY_INTERVAL = 120.0
DEFAULT_REJECT_AFTER = 180.0



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _share(self, info: ValidationInfo) -> _Strict:
        share_fields_set(self, info)  # the same few sets for 10,000 tunnels (fields.py)
        return self


class WireGuardSettings(_Strict):
    """The WireGuard interface and its one peer. With ``adopt: true`` the interface exists
    already (wg-quick, networkd) and the gateway only ever writes the peer's preshared key."""

    # "record": benchmarks only (gateway.dataplane.record); the daemon refuses it otherwise.
    backend: Literal["auto", "kernel", "userspace", "record"] = "auto"
    adopt: bool = False
    private_key: GeneratedKey | None = None
    listen_port: Port | None = None
    address: Interface | None = None
    peer_public_key: WireGuardPublicKey
    endpoint: HostPort | None = None
    allowed_ips: list[Cidr] = Field(default_factory=list)
    persistent_keepalive: Duration | None = None

    @field_validator("private_key")
    @classmethod
    def _one_key_object(cls, value: GeneratedKey | None,
                        info: ValidationInfo) -> GeneratedKey | None:
        return share_value(value, info)  # the hub's one key file, not a copy per tunnel

    @model_validator(mode="after")
    def _rules(self) -> WireGuardSettings:
        if self.adopt:
            for key in ("private_key", "listen_port", "address", "endpoint", "allowed_ips"):
                if getattr(self, key):
                    raise fail("adopt", f"with adopt: true the gateway only sets the preshared "
                               f"key and never touches {key}",
                               f"remove {key}, or set adopt: false", key)
        else:
            if self.private_key is None:
                raise fail("missing_rule", "required key is missing (unless adopt: true)",
                           "add private_key: {file: PATH}; "
                           "`qkd-gateway keygen --wireguard` writes one", "private_key")
            if not self.allowed_ips:
                raise fail("missing_rule", "no allowed_ips: no traffic would enter the tunnel",
                           "list the peer's networks, e.g. [10.77.0.2/32, 10.2.0.0/16]",
                           "allowed_ips")
        keepalive = self.persistent_keepalive
        if keepalive is not None and (keepalive != int(keepalive) or keepalive > 65535):
            raise fail("keepalive", "WireGuard takes a whole number of seconds up to 65535",
                       "write e.g. 25s", "persistent_keepalive")
        return self


class EspLifetime(_Strict):
    """Kernel-enforced SA limits. Unset means no kernel limit: the gateway replaces SAs every
    ``rekey_interval`` and removes them after ``reject_after`` itself. A soft limit makes the
    kernel tell the daemon, which rekeys at once; a hard limit deletes the SA (traffic stops:
    the backstop while no daemon runs)."""

    soft_bytes: Count | None = Field(default=None, gt=0)
    hard_bytes: Count | None = Field(default=None, gt=0)
    soft_packets: Count | None = Field(default=None, gt=0)
    hard_packets: Count | None = Field(default=None, gt=0)
    # 0 would read as "no limit" to the kernel but as "expire now" to a reader: refused.
    soft_time: Annotated[Duration, longer_than_zero("5m")] | None = None
    hard_time: Annotated[Duration, longer_than_zero("10m")] | None = None

    @model_validator(mode="after")
    def _order(self) -> EspLifetime:
        for soft, hard in (("soft_bytes", "hard_bytes"), ("soft_packets", "hard_packets"),
                           ("soft_time", "hard_time")):
            s, h = getattr(self, soft), getattr(self, hard)
            if s is not None and h is not None and s >= h:
                raise fail("order", f"{soft} must be below {hard}",
                           f"lower {soft} or raise {hard}", soft)
        for key in ("soft_time", "hard_time"):
            value = getattr(self, key)
            if value is not None and value != int(value):
                raise fail("lifetime", "the kernel counts SA lifetimes in whole seconds",
                           "write e.g. 50m or 3000s", key)
        return self


#: The kernel's ESN replay bitmap holds up to 4096 packets here (gateway.dataplane.xfrm.consts
#: MAX_REPLAY_WINDOW; config knows nothing of the data plane, so the number is repeated).
MAX_REPLAY_WINDOW = 4096
_U32 = 0xFFFF_FFFF


class XfrmSettings(_Strict):
    """An ESP tunnel-mode SA pair between two addresses, carrying the listed subnets.

    ``mode: policy`` (default): out/in/fwd policies for every local x remote subnet pair.
    ``mode: route``: an XFRM interface (the tunnel's ``interface``) with ``if_id``; what is
    routed into it is encrypted (the remote subnets are routed there by the gateway)."""

    mode: Literal["policy", "route"] = "policy"
    if_id: Count | None = None
    local_address: IpAddress
    remote_address: IpAddress
    local_subnets: list[Cidr] = Field(min_length=1)
    remote_subnets: list[Cidr] = Field(min_length=1)
    replay_window: Count = 128
    esn: bool = True
    lifetime: EspLifetime = Field(default_factory=EspLifetime)

    @model_validator(mode="after")
    def _families(self) -> XfrmSettings:
        if self.local_address.version != self.remote_address.version:
            raise fail("family", "local_address and remote_address are different IP versions",
                       "use two IPv4 or two IPv6 addresses", "remote_address")
        if self.mode == "route":
            if self.if_id is None or not 0 < self.if_id <= _U32:
                raise fail("missing_rule" if self.if_id is None else "if_id",
                           "route mode needs if_id, a number from 1 to 4294967295 that links "
                           "the XFRM interface to its policies and SAs",
                           "add e.g. if_id: 7 (unique on this host)", "if_id")
        elif self.if_id is not None:
            raise fail("if_id", "if_id belongs to mode: route (an XFRM interface)",
                       "remove if_id, or set mode: route", "if_id")
        if self.mode == "policy":
            sides = (("local", self.local_subnets, self.remote_subnets),
                     ("remote", self.remote_subnets, self.local_subnets))
            for side, mine, other in sides:
                for net in mine:
                    if not any(o.version == net.version for o in other):
                        peer_side = "remote" if side == "local" else "local"
                        raise fail("family", f"{side} subnet {net} has no {peer_side} subnet "
                                   "of its IP version to pair with (policies pair subnets of "
                                   "one version)", f"add a {peer_side} subnet of that version, "
                                   "or remove this one", f"{side}_subnets")
        for net in self.remote_subnets:
            if net.version == self.remote_address.version and self.remote_address in net:
                raise fail("subnet", f"remote subnet {net} contains remote_address "
                           f"{self.remote_address}: the gateways' own traffic (the key "
                           "exchange) would need the tunnel it sets up",
                           "list only the protected networks behind the peer", "remote_subnets")
        if not 0 <= self.replay_window <= MAX_REPLAY_WINDOW:
            raise fail("replay", f"replay_window must be 0 to {MAX_REPLAY_WINDOW} packets",
                       "write e.g. 128", "replay_window")
        if self.esn and self.replay_window == 0:
            raise fail("replay", "esn needs a replay window (the kernel keeps the high sequence "
                       "number bits there)", "set replay_window above 0, or esn: false",
                       "replay_window")
        return self


class Tunnel(_Strict):
    """One protected link to one peer."""

    name: Name
    kind: Literal["wireguard", "xfrm"]
    interface: IfName
    peer: Name
    policy: Policy = "qkd+pqc"
    kms: list[Name] = Field(default_factory=list)
    rekey_interval: Duration = DEFAULT_REKEY_INTERVAL
    reject_after: Duration = DEFAULT_REJECT_AFTER
    on_shutdown: Literal["keep", "teardown"] = "keep"
    wireguard: WireGuardSettings | None = None
    xfrm: XfrmSettings | None = None

    @model_validator(mode="after")
    def _rules(self) -> Tunnel:
        other = "xfrm" if self.kind == "wireguard" else "wireguard"
        if getattr(self, self.kind) is None:
            raise fail("missing_rule", f"required for kind: {self.kind}",
                       f"add the {self.kind}: block", self.kind)
        if getattr(self, other) is not None:
            raise fail("kind", f"a {other}: block does not belong in a tunnel of kind "
                       f"{self.kind}", f"remove it, or set kind: {other}", other)
        if self.policy == "pqc" and self.kms:
            raise fail("policy", "policy pqc never fetches QKD keys",
                       "remove kms, or choose policy qkd+pqc", "kms")
        if self.policy != "pqc" and not self.kms:
            raise fail("missing_rule", f"policy {self.policy} needs at least one KMS",
                       "list KMS names, e.g. kms: [ronaqci], or choose policy pqc", "kms")
        if self.rekey_interval < 1:
            raise fail("timer", "rekey_interval must be at least 1s", "write e.g. 120s",
                       "rekey_interval")
        if self.reject_after <= self.rekey_interval:
            # Point at the key the operator actually wrote: usually only one of the two is set.
            explicit = "reject_after" in self.model_fields_set
            rekey, reject = (format_duration(v) for v in (self.rekey_interval, self.reject_after))
            raise fail("timer",
                       f"reject_after ({reject}{'' if explicit else ', the default'}) must be "
                       f"longer than rekey_interval ({rekey})",
                       "e.g. rekey_interval: 120s with reject_after: 180s",
                       "reject_after" if explicit else "rekey_interval")
        hard = self.xfrm.lifetime.hard_time if self.xfrm else None
        if hard is not None and hard <= self.rekey_interval:
            raise fail("timer", "the SAs would expire before the gateway replaces them",
                       "make hard_time longer than rekey_interval", "xfrm")
        return self
