"""Two real `qkd-gateway run` daemons programming XFRM ESP in the kernel lab, next to a WireGuard
tunnel in the same daemons (a mixed site), with real ESP traffic.

Same harness as tests/e2e (namespaces on a bridged WAN, the embedded KME network, real
processes); each site gets a second tunnel of kind xfrm to the same peer (policy mode, inner
networks 10.88.<site>.0/24 on lo) and a strongSwan-like neighbour (reqid 1, its own subnets and
SPIs, installed with `ip xfrm`). One scenario, in order (QEMU TCG is 5-10x slower: one story):

1. both tunnels rotate; `ip xfrm state` at both ends shows rfc4106(gcm(aes)) with 288-bit keys,
   each direction's key equal at both ends; the WireGuard PSKs equal at both ends;
2. a 10/s ping through ESP across 5+ rollovers: nothing lost; `qkd-gateway status` shows both
   kinds (ESP: the outbound SA is the key in use);
3. a burst of pings crosses the SAs' soft packet limit: the kernel's soft expiry makes the
   daemons rekey;
4. the current outbound SA deleted by hand (`ip xfrm state delete`) under a ping: the daemon
   notices (the kernel's acquire for packets meeting the policy without an SA, or the reconcile
   pass) and rekeys; new SPIs and keys at both ends, the deleted SA's key never installed again
   (AES-GCM: an SA re-added with its key repeats nonces), the ping through ESP resumes;
5. the KMS stops: past reject_after the ESP tunnel fails closed at both ends (SAs gone, policies
   kept); a capture of what both ends send shows no inner packet in clear while the inner ping
   is lost (a ping between the outer addresses shows up, so the capture works); the KMS comes
   back and the tunnel reopens;
6. shutdown with on_shutdown: teardown removes our SAs and policies, and only ours.

Throughout: the neighbour's SAs and policy are unchanged, and no ESP key or PSK appears in the
daemons' output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.daemon.control import request
from gateway.dataplane.xfrm import AEAD_ALGORITHM, reqid_for
from tests.e2e.lab import Lab
from tests.netns_harness import Namespace
from tests.vm.xfrm_helpers import Wire, add_neighbour, count, neighbour, xfrm_states

pytestmark = [pytest.mark.vm, pytest.mark.timeout(3600)]

NAMES = ("bucharest", "cluj-napoca")
ESP = "esp-pair"
REQID = reqid_for(ESP)  # the only XFRM tunnel of each site: assign_reqids gives this one
INTERVAL = 8.0
# Long enough that a slow exchange under emulation never closes the tunnel by accident; the
# unmet-policy phase waits it out.
REJECT_AFTER = 40.0
# The normal ping sends ~80 packets per SA per rollover; the burst sends thousands.
SOFT_PACKETS, HARD_PACKETS = 1000, 10_000_000


_RESULTS = os.environ.get("LAB_RESULTS")
_T0 = time.monotonic()


def note(text: str) -> None:
    """Progress into the lab's results folder (the guest's pytest output comes only at the end)."""
    if _RESULTS:
        with open(Path(_RESULTS) / "daemon_xfrm.progress", "a") as f:
            f.write(f"{time.monotonic() - _T0:7.1f} s  {text}\n")


@contextlib.contextmanager
def keep_logs_on_failure(lab: Lab) -> Iterator[None]:
    """A failed run leaves the daemons' logs in the lab's results folder."""
    try:
        yield
    except BaseException:
        if _RESULTS:
            for site in lab.plan.sites:
                with contextlib.suppress(OSError):
                    shutil.copy(site.log_path, Path(_RESULTS) / f"daemon-{site.name}.log")
        raise


def inner(index: int) -> str:
    return f"10.88.{index + 1}.1"


def add_esp_tunnel(lab: Lab) -> None:
    """A second tunnel, kind xfrm, to the same peer in each site's configuration."""
    for index, site in enumerate(lab.plan.sites):
        peer_index, peer = next((i, s) for i, s in enumerate(lab.plan.sites) if s is not site)
        cfg = yaml.safe_load(site.config_path.read_text())
        cfg["tunnels"].append({
            "name": ESP, "kind": "xfrm", "interface": f"{lab.prefix}x{index}", "peer": peer.name,
            "policy": "qkd+pqc", "kms": ["qkd"], "rekey_interval": f"{INTERVAL:g}s",
            "reject_after": f"{REJECT_AFTER:g}s", "on_shutdown": "teardown",
            "xfrm": {"local_address": str(site.wan.ip), "remote_address": str(peer.wan.ip),
                     "local_subnets": [f"10.88.{index + 1}.0/24"],
                     "remote_subnets": [f"10.88.{peer_index + 1}.0/24"],
                     "lifetime": {"soft_packets": SOFT_PACKETS, "hard_packets": HARD_PACKETS}},
        })
        site.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        ns = Namespace(site.netns)
        ns.run("ip", "addr", "add", f"{inner(index)}/32", "dev", "lo")
        ns.run("ip", "route", "add", f"10.88.{peer_index + 1}.0/24", "via", str(peer.wan.ip),
               "src", inner(index))


def ours(ns: Namespace) -> dict[int, dict[str, str]]:
    return {spi: sa for spi, sa in xfrm_states(ns).items() if sa["reqid"] == str(REQID)}


def our_policies(ns: Namespace) -> int:
    return ns.run("ip", "xfrm", "policy", "list").count(f"reqid {REQID} ")


def esp_epochs(lab: Lab, name: str) -> list[int]:
    return [e["epoch"] for e in lab.events(name, "tunnel_rekeyed") if e.get("tunnel") == ESP]


def esp_events(lab: Lab, name: str, event: str) -> list[dict[str, Any]]:
    return [e for e in lab.events(name, event) if e.get("tunnel") == ESP]


async def matching_sas(a: Namespace, b: Namespace, wan: tuple[str, str], seen: set[str]
                       ) -> None:
    """``a``'s outbound SA is ``b``'s inbound SA with the same key, rfc4106(gcm(aes)) with 288
    bits (read while no rollover ran in between: ``a`` read twice, the same both times)."""
    first: dict[int, dict[str, str]] = {}
    other: dict[int, dict[str, str]] = {}
    for _ in range(30):
        first, other, again = ours(a), ours(b), ours(a)
        out = {spi: sa for spi, sa in first.items() if sa["src"] == wan[0]}
        if first == again and out:
            for sa in (*first.values(), *other.values()):
                assert (sa["alg"], sa["bits"], sa["icv"]) == (AEAD_ALGORITHM, "288", "128"), sa
            if all(other.get(spi, {}).get("key") == sa["key"] for spi, sa in out.items()):
                seen.update(sa["key"] for sa in (*first.values(), *other.values()))
                return
        await asyncio.sleep(0.5)
    raise AssertionError(f"no stable matching SA pair: {first} / {other}")


class PingLoop:
    """Pings through the tunnel in chunks of 50 at 10/s until stopped; every chunk completes,
    so an interrupted ping never counts its last request as lost."""

    def __init__(self, ns: Namespace, src: str, dst: str) -> None:
        self.ns, self.src, self.dst = ns, src, dst
        self.sent = self.lost = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            proc = await asyncio.create_subprocess_exec(
                *self.ns.cmd("ping", "-n", "-q", "-I", self.src, "-c", "50", "-i", "0.1",
                             "-W", "5", self.dst), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT)
            out, _ = await proc.communicate()
            text = out.decode()
            m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
            if m is None and self._stop.is_set():
                return  # killed with the lab (a failed test): nothing to count
            assert m, text
            self.sent += int(m.group(1))
            self.lost += int(m.group(1)) - int(m.group(2))

    def stop(self) -> None:
        self._stop.set()


def reactions(lab: Lab) -> tuple[int, int]:
    """Site 0's reactions to a lost ESP SA so far: (packets met the policy without an SA: the
    kernel's acquire, the reconcile pass found the SA missing)."""
    return (len(esp_events(lab, NAMES[0], "esp_packets_without_sa")),
            len([e for e in esp_events(lab, NAMES[0], "tunnel_key_drift")
                 if str(e.get("slot", "")).endswith("SA missing")]))


def deletion_noticed(lab: Lab) -> int:
    return sum(reactions(lab))


async def sa_deleted_by_hand(lab: Lab, a: Namespace, b: Namespace, wan: tuple[str, ...],
                             keys_seen: set[str]) -> None:
    """Step 4: delete site 0's current outbound SA under a 10/s ping through ESP."""
    pings = PingLoop(a, inner(0), inner(1))
    ping_task = asyncio.create_task(pings.run())
    deleted: dict[str, str] = {}
    deleted_keys: list[str] = []
    for attempt in range(3):  # a scheduled rollover may replace the SA first: try again
        noticed, before = deletion_noticed(lab), reactions(lab)
        counts = [len(esp_epochs(lab, n)) for n in NAMES]
        out: dict[int, dict[str, str]] = {}
        for _ in range(60):  # between rollovers: exactly one outbound SA
            out = {spi: sa for spi, sa in ours(a).items() if sa["src"] == wan[0]}
            if len(out) == 1:
                break
            await asyncio.sleep(0.2)
        ((spi, deleted),) = out.items()
        deleted_keys.append(deleted["key"])
        a.run("ip", "xfrm", "state", "delete", "src", wan[0], "dst", wan[1], "proto", "esp",
              "spi", f"0x{spi:08x}")
        note(f"4: deleted outbound SA 0x{spi:08x} at {NAMES[0]}")
        await lab.wait_for(lambda n=noticed, c=counts[0]: deletion_noticed(lab) > n
                           or len(esp_epochs(lab, NAMES[0])) > c + 1, 120,
                           "the daemon noticing the deleted SA (or two rollovers)")
        after = reactions(lab)
        note(f"4: attempt {attempt + 1}: acquire events +{after[0] - before[0]}, reconcile "
             f"'SA missing' +{after[1] - before[1]}, ESP rekeys at {NAMES[0]} "
             f"+{len(esp_epochs(lab, NAMES[0])) - counts[0]}")
        if deletion_noticed(lab) > noticed:
            break
    else:
        raise AssertionError("three deleted SAs, each replaced by a rollover before noticed")
    requested = [e.get("by") for e in esp_events(lab, NAMES[0], "rekey_requested")]
    assert {"packets met the policy without an SA", "the outbound SA is gone"} & set(requested)
    # A rekey gives both ends new SAs; no deleted SA's key is in any of them (only the peer's
    # inbound SA, the original one, holds it until its retire grace ends).
    await lab.wait_for(lambda: all(len(esp_epochs(lab, n)) > c for n, c in zip(NAMES, counts,
                                                                               strict=True)),
                       120, "a rekey at both ends")
    await lab.wait_for(lambda: all(sa["key"] not in deleted_keys
                                   for sa in (*ours(a).values(), *ours(b).values())), 120,
                       "the deleted SAs' keys gone from both ends")
    await matching_sas(a, b, (wan[0], wan[1]), keys_seen)
    await matching_sas(b, a, (wan[1], wan[0]), keys_seen)
    assert spi not in {s for s, sa in ours(a).items() if sa["src"] == wan[0]}
    pings.stop()
    await ping_task
    # Traffic resumed: a fresh run of pings through ESP, every one answered.
    done = await a.arun("ping", "-n", "-q", "-I", inner(0), "-c", "10", "-i", "0.2", "-W", "5",
                        inner(1), check=False, timeout=120)
    assert re.search(r"10 packets transmitted, 10 received", done), done
    note(f"4: SA deletion noticed and repaired by a rekey; {pings.lost} of {pings.sent} pings "
         "lost meanwhile, then 10 of 10 answered")


async def status(lab: Lab, name: str) -> dict[str, Any]:
    """What `qkd-gateway status --json` prints, asked over the control socket from this process
    (a Python start per CLI call costs a minute under emulation)."""
    return await request(lab.plan.by_name[name].directory / "control.sock", {"cmd": "status"},
                         timeout=120)


async def scenario(lab: Lab, keys_seen: set[str]) -> tuple[str, set[str]]:
    """The whole story on a running lab; returns the daemons' logs and the last PSKs."""
    assert lab.plan.backend == "kernel", "the kernel lab must use kernel WireGuard"
    add_esp_tunnel(lab)
    a, b = (Namespace(lab.plan.by_name[n].netns) for n in NAMES)
    wan = tuple(str(lab.plan.by_name[n].wan.ip) for n in NAMES)
    # The first GCM SA of a boot builds the cipher: slow under emulation.
    foreign = [add_neighbour(a, wan[0], wan[1], outbound_spi="0x91", inbound_spi="0x92",
                             timeout=300),
               add_neighbour(b, wan[1], wan[0], outbound_spi="0x92", inbound_spi="0x91",
                             timeout=300)]
    note("lab up; daemons starting")
    await lab.start_daemons()

    # 1. Both kinds rotate in the same daemons; same keys at both ends.
    # Generous: on a host at load 16 (other labs running) the daemons had not logged a line
    # 400 s after their start (Python start-up under TCG); on a quiet host this takes ~2 min.
    await lab.wait_for(lambda: all(esp_epochs(lab, n) for n in NAMES), 1200,
                       "the first ESP rekey")
    await lab.wait_for(lambda: lab.psk(NAMES[0]) == lab.psk(NAMES[1]) != "(none)", 200,
                       "equal WireGuard PSKs")
    await matching_sas(a, b, (wan[0], wan[1]), keys_seen)
    await matching_sas(b, a, (wan[1], wan[0]), keys_seen)
    assert our_policies(a) == our_policies(b) == 3  # out, in, fwd

    note("1: both kinds rotate; SAs match at both ends")

    # 2. Rollovers under a 10/s ping through ESP: nothing lost.
    pings = PingLoop(a, inner(0), inner(1))
    ping_task = asyncio.create_task(pings.run())
    start = len(esp_epochs(lab, NAMES[1]))
    await lab.wait_for(lambda: len(esp_epochs(lab, NAMES[1])) >= start + 5, 300,
                       "five ESP rollovers")
    await matching_sas(a, b, (wan[0], wan[1]), keys_seen)
    st = await status(lab, NAMES[0])
    esp, wg = st["tunnels"][ESP], st["tunnels"][lab.tunnel.name]
    assert (esp["dataplane"], wg["dataplane"]) == ("esp", "wireguard")
    assert not esp["closed"] and esp["esp"]["key_in_use_epoch"] == esp["epoch"] > 0
    assert "wg" in wg and "wg" not in esp  # keys in use: handshakes vs the outbound SA

    note("2: five rollovers under ping; status checked")

    # 3. A burst crosses the soft packet limit: the kernel's soft expiry causes a rekey.
    before = len(esp_epochs(lab, NAMES[0]))
    await a.arun("ping", "-n", "-q", "-I", inner(0), "-c", "2500", "-i", "0.002", "-W", "5",
                 inner(1), check=False, timeout=300)
    await lab.wait_for(lambda: any(esp_events(lab, n, "esp_sa_soft_expired") for n in NAMES),
                       120, "a soft expiry")
    await lab.wait_for(lambda: any(
        e.get("by") == "soft lifetime reached" for n in NAMES
        for e in esp_events(lab, n, "rekey_requested")), 60, "a rekey asked for")
    await lab.wait_for(lambda: len(esp_epochs(lab, NAMES[0])) > before, 120,
                       "the rekey after the soft expiry")
    pings.stop()
    await ping_task
    assert pings.sent >= 250 and pings.lost == 0, (pings.sent, pings.lost)
    assert [neighbour(a), neighbour(b)] == foreign

    note(f"3: soft expiry made a rekey; pings through ESP {pings.sent} sent, {pings.lost} lost "
         f"across {len(esp_epochs(lab, NAMES[1])) - start} rollovers")

    # 4. An SA deleted by hand: noticed, replaced by a rekey, its key never installed again.
    await sa_deleted_by_hand(lab, a, b, wan, keys_seen)

    # 5. Policy unmet (KMS gone past reject_after): fail closed, nothing in clear.
    lab.pause_kms()
    await lab.wait_for(lambda: all(esp_events(lab, n, "tunnel_failed_closed")
                                   for n in NAMES), REJECT_AFTER + 120, "fail closed")
    await lab.wait_for(lambda: not ours(a) and not ours(b), 60, "SAs removed")
    assert our_policies(a) == our_policies(b) == 3  # the policies stay: no clear-text gap
    wire = Wire(a, "wan0", b, "wan0")
    try:
        mark = wire.mark()
        lost = await a.arun("ping", "-n", "-q", "-I", inner(0), "-c", "5", "-i", "0.2",
                            "-W", "1", inner(1), check=False, timeout=60)
        assert re.search(r"\d+ packets transmitted, 0 received", lost), lost
        await a.arun("ping", "-n", "-q", "-c", "3", "-i", "0.2", wan[1], timeout=60)
        lines = await asyncio.to_thread(
            wire.wait, mark, lambda ls: count(ls, f"{wan[0]} > {wan[1]}: ICMP echo") >= 3)
    finally:
        dropped = wire.stop()
    assert dropped == 0, "tcpdump dropped packets: the capture proves nothing"
    assert count(lines, f"{wan[0]} > {wan[1]}: ICMP echo") >= 3  # the capture works
    leaked = [ln for ln in lines if "10.88." in ln]
    assert not leaked, f"inner packets on the wire while failed closed: {leaked[:3]}"
    lab.resume_kms()
    closed_at = len(esp_epochs(lab, NAMES[0]))
    await lab.wait_for(lambda: len(esp_epochs(lab, NAMES[0])) > closed_at
                       and len(ours(a)) >= 2, 300, "the tunnel reopened")
    await matching_sas(a, b, (wan[0], wan[1]), keys_seen)
    assert [neighbour(a), neighbour(b)] == foreign

    note(f"5: failed closed, capture clean ({len(lines)} lines, {dropped} dropped), reopened")

    # 6. Shutdown with teardown: ours gone, the neighbour's untouched.
    psks = {lab.psk(n) for n in NAMES}
    for name in NAMES:
        assert await lab.daemons[name].stop(grace=180) == 0
    assert not ours(a) and not ours(b)
    assert our_policies(a) == our_policies(b) == 0
    assert [neighbour(a), neighbour(b)] == foreign
    note(f"6: torn down, ours only; ESP epochs {len(esp_epochs(lab, NAMES[0]))}, "
         f"{len(keys_seen)} distinct ESP keys seen in `ip xfrm state`")
    logs = "".join(lab.plan.by_name[n].log_path.read_text(errors="replace") for n in NAMES)
    return logs, psks


async def test_two_daemons_program_esp_next_to_wireguard_and_a_neighbour() -> None:
    keys_seen: set[str] = set()
    async with Lab(rekey_interval=INTERVAL, reject_after=REJECT_AFTER, kms_deadline=300) as lab:
        with keep_logs_on_failure(lab):
            logs, psks = await scenario(lab, keys_seen)
    assert keys_seen and psks
    for secret in (*keys_seen, *psks):
        assert secret not in logs and secret.upper() not in logs, "a key reached the log"
