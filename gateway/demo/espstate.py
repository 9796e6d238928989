"""What the kernels hold for the demo's ESP tunnels, read the way an operator reads it:
``ip -s xfrm state`` inside each site's namespace.

The verdict of an ESP tunnel compares, **per direction**, the SAs the sender holds (src = its WAN
address, dst = the peer's) with the SAs the receiver holds for the same addresses: every keyed SA
of the sender must exist at the receiver under the same SPI with the same key, and carry the
suite the issue asks for (``rfc4106(gcm(aes))``, a 288-bit key: 256-bit AES key + 32-bit salt,
128-bit ICV). Keys are compared as SHA-256 digests in constant time; the hex text ``ip`` prints
is hashed as soon as it is parsed and never kept, printed or logged.

The observer also follows the outbound SPIs of each ESP tunnel at its hub, once a second: every
new SPI is a rollover the kernel really went through, counted independently of the daemons' logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from dataclasses import dataclass, field

from gateway.demo.netns import quiet_output

__all__ = ["ESP_SUITE", "DirectionCheck", "EspSa", "compare_direction", "esp_keys_match",
           "parse_states", "read_states"]

# What every SA of ours must carry: ip's algorithm name, key length with the salt, ICV length.
ESP_SUITE = ("rfc4106(gcm(aes))", 288, 128)
# `ip xfrm state` answers in milliseconds on a host (in the kernel lab under load, process start-up
# alone can take seconds); a hung one is reported as unreadable, not waited on.
IP_XFRM_TIMEOUT_S = 20.0

_HEAD = re.compile(r"^src (\S+) dst (\S+)$")
_ID = re.compile(r"^\s+proto esp spi 0x([0-9a-f]+)(?:\(\d+\))? reqid (\d+)")
# `ip -s` prints "(288 bits)" between the key and the ICV length; without -s it does not.
_AEAD = re.compile(r"^\s+aead (\S+) 0x([0-9a-f]+)(?: \((\d+) bits\))? (\d+)\s*$")
_CURRENT = re.compile(r"^\s+(\d+)\(bytes\), (\d+)\(packets\)")


@dataclass(frozen=True)
class EspSa:
    """One ESP SA as ``ip -s xfrm state`` shows it. ``key_digest``: SHA-256 of the AEAD key
    (None for a larval SA: an SPI allocated but not keyed yet)."""

    src: str
    dst: str
    spi: int
    reqid: int
    alg: str | None = None
    key_bits: int | None = None
    icv_bits: int | None = None
    packets: int = 0
    key_digest: bytes | None = field(default=None, repr=False)

    @property
    def keyed(self) -> bool:
        return self.key_digest is not None

    @property
    def suite_ok(self) -> bool:
        return (self.alg, self.key_bits, self.icv_bits) == ESP_SUITE


def _block(lines: list[str]) -> EspSa | None:
    head = _HEAD.match(lines[0])
    ident = next((m for line in lines[1:] if (m := _ID.match(line))), None)
    if head is None or ident is None:
        return None  # not ESP (or not an SA at all)
    alg = key = None
    bits = icv = None
    packets = 0
    for line in lines[1:]:
        if (m := _AEAD.match(line)) is not None:
            alg, hexkey, shown_bits, icv_text = m.groups()
            key = hashlib.sha256(bytes.fromhex(hexkey)).digest()
            bits = int(shown_bits) if shown_bits else len(hexkey) * 4
            icv = int(icv_text)
        elif (m := _CURRENT.match(line)) is not None:
            packets = int(m.group(2))
    return EspSa(head.group(1), head.group(2), int(ident.group(1), 16), int(ident.group(2)),
                 alg, bits, icv, packets, key)


def parse_states(text: str) -> list[EspSa]:
    """The ESP SAs in ``ip [-s] xfrm state`` output, in the order printed."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("src "):
            blocks.append([line])
        elif blocks and line.strip():
            blocks[-1].append(line)
    return [sa for b in blocks if (sa := _block(b)) is not None]


async def read_states(netns: str) -> list[EspSa] | None:
    """The ESP SAs of namespace ``netns``; None if ``ip`` failed or hung."""
    out = await quiet_output(["ip", "-n", netns, "-s", "xfrm", "state"], IP_XFRM_TIMEOUT_S)
    return None if out is None else parse_states(out)


@dataclass(frozen=True)
class DirectionCheck:
    """One direction of one ESP tunnel: ``sender`` encrypts to ``receiver``."""

    sender: str
    receiver: str
    ok: bool
    detail: str  # why not, or the SPIs compared (never a key)

    @property
    def name(self) -> str:
        return f"{self.sender}->{self.receiver}"


def compare_direction(sender: str, receiver: str, src: str, dst: str,
                      at_sender: list[EspSa], at_receiver: list[EspSa]) -> DirectionCheck:
    """Every keyed SA src->dst at the sender exists at the receiver with the same SPI and key,
    and carries :data:`ESP_SUITE`."""
    out = [sa for sa in at_sender if sa.src == src and sa.dst == dst and sa.keyed]
    inbound = {sa.spi: sa for sa in at_receiver if sa.src == src and sa.dst == dst and sa.keyed}
    if not out:
        return DirectionCheck(sender, receiver, False, f"{sender} holds no keyed SA {src}->{dst}")
    for sa in out:
        peer = inbound.get(sa.spi)
        if not sa.suite_ok:
            return DirectionCheck(sender, receiver, False,
                                  f"SPI 0x{sa.spi:08x} is {sa.alg} with a {sa.key_bits}-bit key "
                                  f"and a {sa.icv_bits}-bit ICV, not {ESP_SUITE[0]} 288/128")
        if peer is None:
            return DirectionCheck(sender, receiver, False,
                                  f"{receiver} has no SA with SPI 0x{sa.spi:08x}")
        assert sa.key_digest is not None and peer.key_digest is not None  # both keyed
        if not hmac.compare_digest(sa.key_digest, peer.key_digest):
            return DirectionCheck(sender, receiver, False,
                                  f"SPI 0x{sa.spi:08x}: the two ends hold different keys")
    spis = ", ".join(f"0x{sa.spi:08x}" for sa in out)
    return DirectionCheck(sender, receiver, True, f"SPI {spis}, same key at both ends")


async def esp_keys_match(ends: tuple[tuple[str, str, str], tuple[str, str, str]],
                         attempts: int = 3) -> list[DirectionCheck]:
    """Both directions of one ESP tunnel. ``ends``: (site, namespace, WAN address) of each end.
    A rollover can land between the two reads, so a failed comparison is read again
    (``attempts`` times, 0.3 s apart) before it counts."""
    (a, ns_a, ip_a), (b, ns_b, ip_b) = ends
    checks: list[DirectionCheck] = []
    for attempt in range(attempts):
        sa_a, sa_b = await asyncio.gather(read_states(ns_a), read_states(ns_b))
        if sa_a is None or sa_b is None:
            unread = ns_a if sa_a is None else ns_b
            checks = [DirectionCheck(a, b, False, f"`ip xfrm state` failed in {unread}"),
                      DirectionCheck(b, a, False, f"`ip xfrm state` failed in {unread}")]
        else:
            checks = [compare_direction(a, b, ip_a, ip_b, sa_a, sa_b),
                      compare_direction(b, a, ip_b, ip_a, sa_b, sa_a)]
        if all(c.ok for c in checks):
            break
        if attempt + 1 < attempts:
            await asyncio.sleep(0.3)
    return checks
