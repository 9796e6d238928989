"""Rules across sections: unique names, references that resolve (peers, KMS, SAE IDs mapped to
SKIP remote systems), networks owned by one tunnel.

These run on the raw parsed data, not on the validated model, so they still report when some
other part of the file is broken: the operator gets every problem in one pass. Values that are
malformed are skipped here; the field validation already reports them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

from gateway.config.errors import Problem, render_path, show
from gateway.config.loader import Document, Loc, as_text

__all__ = ["cross_check"]

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
# What describes a WireGuard interface rather than one of its peers (see _Checker.interfaces).
_SHARED_WG_KEYS = ("backend", "adopt", "private_key", "listen_port")


def _items(data: Any, key: str) -> Iterator[tuple[int, dict[str, Any]]]:
    section = data.get(key) if isinstance(data, dict) else None
    if isinstance(section, list):
        for i, item in enumerate(section):
            if isinstance(item, dict):
                yield i, item


class _Checker:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    def add(self, loc: Loc, message: str, fix: str) -> None:
        self.problems.append(Problem(render_path(loc), self.doc.line_of(loc), message, fix))

    def unique(self, section: str, key: str, what: str) -> dict[str, int]:
        """Report repeated ``section[*].key`` values; return value -> first index."""
        seen: dict[str, int] = {}
        for i, item in _items(self.doc.data, section):
            value = as_text(item.get(key))
            if value is None:
                continue
            if value in seen:
                self.add((section, i, key), f"{what} {show(value)} is already used by "
                         f"{section}[{seen[value]}]", f"give each {what} a different value")
            else:
                seen[value] = i
        return seen

    def readable(self, section: str) -> bool:
        """Whether every name in ``section`` could be read: otherwise a reference that does not
        resolve may be the broken entry's fault, already reported by field validation."""
        data = self.doc.data
        items = data.get(section, []) if isinstance(data, dict) else []
        return isinstance(items, list) and all(
            isinstance(i, dict) and as_text(i.get("name")) is not None for i in items)

    def reference(self, loc: Loc, raw: Any, names: dict[str, int], section: str) -> None:
        value = as_text(raw)
        if value is None or value in names or not self.readable(section):
            return
        what = "peer" if section == "peers" else "KMS"
        if names:
            self.add(loc, f"no {what} named {show(value)}",
                     f"defined {section}: {', '.join(names)}")
        else:
            self.add(loc, f"no {what} named {show(value)}", f"define it under {section}:")

    def remote_systems(self) -> None:
        """Each SAE ID mapped under kms[].skip.remote_system_ids is a peer's: a typo would
        otherwise leave the peer silently mapped to itself."""
        saes: list[str] = []
        for _, peer in _items(self.doc.data, "peers"):
            sae = as_text(peer.get("sae_id"))
            if sae is None:
                return  # reported by field validation; any mapping might be that peer's
            saes.append(sae)
        fix = f"peers' SAE IDs: {', '.join(saes)}" if saes else "define the peer under peers:"
        for i, kms in _items(self.doc.data, "kms"):
            skip = kms.get("skip")
            ids = skip.get("remote_system_ids") if isinstance(skip, dict) else None
            for sae in ids if isinstance(ids, dict) else ():
                if sae not in saes:
                    self.add(("kms", i, "skip", "remote_system_ids", sae),
                             f"no peer has SAE ID {show(sae)}", fix)

    def interfaces(self) -> None:
        """Hub sites: several WireGuard tunnels may share one interface (one WireGuard peer each,
        as wg-quick and networkd run a hub on one ``wg0``). The interface itself is one thing, so
        what describes it must agree; an XFRM tunnel's interface is its own."""
        first: dict[str, tuple[int, dict[str, Any]]] = {}
        for i, tunnel in _items(self.doc.data, "tunnels"):
            name = as_text(tunnel.get("interface"))
            if name is None:
                continue
            if name not in first:
                first[name] = (i, tunnel)
                continue
            j, other = first[name]
            if tunnel.get("kind") != "wireguard" or other.get("kind") != "wireguard":
                self.add(("tunnels", i, "interface"), f"interface {show(name)} is already used "
                         f"by tunnels[{j}]", "only WireGuard tunnels can share an interface; "
                         "give this tunnel its own")
                continue
            mine, theirs = tunnel.get("wireguard"), other.get("wireguard")
            if not isinstance(mine, dict) or not isinstance(theirs, dict):
                continue
            for key in _SHARED_WG_KEYS:
                if mine.get(key) != theirs.get(key):
                    self.add(("tunnels", i, "wireguard", key),
                             f"differs from tunnels[{j}] on the shared interface {show(name)}",
                             f"tunnels on one interface share its {', '.join(_SHARED_WG_KEYS)}: "
                             "write the same value in each, or give this tunnel its own interface")
            if tunnel.get("on_shutdown", "keep") != other.get("on_shutdown", "keep"):
                self.add(("tunnels", i, "on_shutdown"), f"differs from tunnels[{j}] on the "
                         f"shared interface {show(name)}", "use the same on_shutdown for every "
                         "tunnel on one interface (it removes the interface or keeps it)")
            pub = mine.get("peer_public_key")
            if pub is not None and pub == theirs.get("peer_public_key"):
                self.add(("tunnels", i, "wireguard", "peer_public_key"),
                         f"the same WireGuard peer as tunnels[{j}] on interface {show(name)}",
                         "each tunnel on a shared interface has its own WireGuard peer")

    def if_ids(self) -> None:
        """An if_id links an XFRM interface to its policies and SAs: two route-mode tunnels with
        one if_id would share SAs and policies, and each would take the other's for its own."""
        seen: dict[int, int] = {}
        for i, tunnel in _items(self.doc.data, "tunnels"):
            xfrm = tunnel.get("xfrm")
            if tunnel.get("kind") != "xfrm" or not isinstance(xfrm, dict) \
                    or xfrm.get("mode") != "route":
                continue
            value = xfrm.get("if_id")
            if not isinstance(value, int) or isinstance(value, bool):
                continue  # missing or malformed: the field validation reports it
            if value in seen:
                self.add(("tunnels", i, "xfrm", "if_id"), f"if_id {int(value)} is already used "
                         f"by tunnels[{seen[value]}]", "give each route-mode tunnel its own if_id")
            else:
                seen[value] = i

    def networks(self) -> None:
        owners: list[tuple[_Net, Loc, str]] = []
        for i, tunnel in _items(self.doc.data, "tunnels"):
            for block, key in (("wireguard", "allowed_ips"), ("xfrm", "remote_subnets")):
                sub = tunnel.get(block)
                nets = sub.get(key) if isinstance(sub, dict) else None
                if not isinstance(nets, list):
                    continue
                for j, text in enumerate(nets):
                    try:
                        net = ipaddress.ip_network(str(text), strict=False)
                    except ValueError:
                        continue
                    loc: Loc = ("tunnels", i, block, key, j)
                    for other, other_loc, other_name in owners:
                        if other_loc[1] != i and net.version == other.version \
                                and net.overlaps(other):
                            self.add(loc, f"{net} overlaps {other} of "
                                     f"{render_path(other_loc)} (tunnel {other_name})",
                                     "route each network through one tunnel only")
                            break
                    owners.append((net, loc, str(tunnel.get("name", "?"))))


def cross_check(doc: Document) -> list[Problem]:
    """Every cross-section problem in ``doc``."""
    c = _Checker(doc)
    data = doc.data
    kms = c.unique("kms", "name", "KMS name")
    peers = c.unique("peers", "name", "peer name")
    c.unique("peers", "sae_id", "SAE ID")
    c.unique("tunnels", "name", "tunnel name")
    c.interfaces()
    site = data.get("site") if isinstance(data, dict) else None
    own_sae = as_text(site.get("sae_id")) if isinstance(site, dict) else None
    for i, peer in _items(data, "peers"):
        if own_sae is not None and as_text(peer.get("sae_id")) == own_sae:
            c.add(("peers", i, "sae_id"), f"{show(own_sae)} is this site's own SAE ID",
                  "write the peer's SAE ID here")
    for i, tunnel in _items(data, "tunnels"):
        c.reference(("tunnels", i, "peer"), tunnel.get("peer"), peers, "peers")
        names = tunnel.get("kms")
        if isinstance(names, list):
            seen: set[str] = set()
            for j, raw in enumerate(names):
                c.reference(("tunnels", i, "kms", j), raw, kms, "kms")
                name = as_text(raw)
                if name is not None and name in seen:
                    c.add(("tunnels", i, "kms", j), f"KMS {show(name)} is listed twice",
                          "list each KMS once")
                seen.add(str(name))
    c.remote_systems()
    c.if_ids()
    c.networks()
    return c.problems
