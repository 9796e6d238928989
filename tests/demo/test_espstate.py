"""The demo's ESP verdict: `ip -s xfrm state` as the kernel lab printed it (the data plane's
fixture, captured once in the lab), parsed, keys compared per direction, never shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.demo.espstate import ESP_SUITE, EspSa, compare_direction, parse_states
from gateway.demo.report import DemoReport, TunnelReport

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).parent.parent / "dataplane" / "xfrm" / "fixtures" / "iproute2.json"


def _captured() -> tuple[str, str]:
    data = json.loads(FIXTURE.read_text())
    return data["ip_state_list"], data["key_hex"]


def test_the_kernels_own_listing_parses_with_suite_spi_and_a_digest_of_the_key() -> None:
    text, key_hex = _captured()
    sas = parse_states(text)
    assert [(sa.src, sa.dst, sa.spi) for sa in sas] == [
        ("192.0.2.1", "192.0.2.2", 0x1000), ("192.0.2.2", "192.0.2.1", 0x0C7C7E90),
        ("2001:db8::1", "2001:db8::2", 0x2000)]
    keyed, larval, v6 = sas
    assert keyed.suite_ok and (keyed.alg, keyed.key_bits, keyed.icv_bits) == ESP_SUITE
    assert keyed.reqid == 1372585985 and keyed.packets == 0
    assert not larval.keyed and not larval.suite_ok  # an allocated SPI, no key yet
    assert v6.key_digest == keyed.key_digest  # the fixture installed one key twice
    assert key_hex not in repr(sas) and key_hex[:16] not in repr(sas)
    # Without -s, ip prints no "(288 bits)": the length comes from the key itself.
    plain = text.replace(" (288 bits)", "")
    assert parse_states(plain)[0].key_bits == 288


def _sa(spi: int, key: bytes | None, src: str = "198.18.0.10", dst: str = "198.18.0.11",
        suite: tuple[str, int, int] = ESP_SUITE) -> EspSa:
    return EspSa(src, dst, spi, 1, suite[0], suite[1], suite[2], 0, key)


def test_each_direction_needs_the_senders_spi_and_key_at_the_receiver() -> None:
    a, b = "198.18.0.10", "198.18.0.11"
    out = [_sa(0x1234, b"k1"), _sa(0x9999, b"in", src=b, dst=a)]
    same = [_sa(0x1234, b"k1"), _sa(0x1111, b"old")]
    ok = compare_direction("hub", "spoke", a, b, out, same)
    assert ok.ok and ok.name == "hub->spoke" and "0x00001234" in ok.detail
    cases = [
        ([_sa(0x1234, b"k2")], "the two ends hold different keys"),
        ([_sa(0x1235, b"k1")], "spoke has no SA with SPI 0x00001234"),
        ([_sa(0x1234, None)], "spoke has no SA with SPI 0x00001234"),  # larval: not keyed
    ]
    for receiver, message in cases:
        bad = compare_direction("hub", "spoke", a, b, out, receiver)
        assert not bad.ok and message in bad.detail
    weak = [_sa(0x1234, b"k1", suite=("rfc4106(gcm(aes))", 160, 64))]
    bad = compare_direction("hub", "spoke", a, b, weak, weak)
    assert not bad.ok and "160-bit key and a 64-bit ICV" in bad.detail
    none = compare_direction("spoke", "hub", b, a, same, out)
    assert not none.ok and "spoke holds no keyed SA 198.18.0.11->198.18.0.10" in none.detail


def test_esp_tunnels_are_judged_on_keys_and_kernel_rollovers() -> None:
    a, b = "198.18.0.10", "198.18.0.11"
    good = [compare_direction("bucharest", "cluj-napoca", a, b, [_sa(1, b"x")], [_sa(1, b"x")]),
            compare_direction("cluj-napoca", "bucharest", b, a, [_sa(2, b"y", b, a)],
                              [_sa(2, b"y", b, a)])]
    esp = TunnelReport("bucharest--cluj-napoca", "bucharest", "10.77.1.2", sent=800,
                       received=800, rotations=8, dataplane="esp", esp_directions=good,
                       esp_outbound_sas=8)
    wg = TunnelReport("bucharest--iasi", "bucharest", "10.77.2.2", sent=800, received=799,
                      lost=1, rotations=8, psk_match=True)
    report = DemoReport("qgd1a", lab_only=False, tunnels=[esp])
    assert report.ok and esp.keys_match and esp.kernel_rollovers == 7
    table = report.table()
    assert "bucharest--cluj-napoca ESP bucharest->cluj-napoca: ok" in table
    assert "8 outbound SAs seen in bucharest's kernel (7 rollovers)" in table
    assert table.splitlines()[-1] == (
        "verdict: PASS: 1 tunnel(s) (1 ESP); keys equal at both ends: ESP 2 of 2 directions "
        "(ip xfrm state); 0 of 800 pings lost; 8 rotations (7 ESP rollovers in the hubs' "
        "kernels)")
    mixed = DemoReport("qgd1a", lab_only=False, tunnels=[esp, wg])
    assert not mixed.ok
    assert mixed.table().splitlines()[-1].startswith(
        "verdict: FAIL: 2 tunnel(s) (1 ESP, 1 WireGuard); keys equal at both ends: ESP 2 of 2 "
        "directions (ip xfrm state), WireGuard 1 of 1 (wg show); 1 of 1600 pings lost")
    unseen = TunnelReport("t", "a", "x", sent=40, received=40, rotations=3, dataplane="esp")
    assert "t: the ESP keys were not compared" in DemoReport("q", False, tunnels=[unseen]).problems
    stuck = TunnelReport("t", "a", "x", sent=40, received=40, rotations=3, dataplane="esp",
                         esp_directions=good, esp_outbound_sas=2)
    assert DemoReport("q", False, tunnels=[stuck]).problems == [
        "t: the hub's kernel switched its outbound SA 1 time(s) (`ip xfrm state`); need 2"]
    differ = [good[0], compare_direction("cluj-napoca", "bucharest", b, a, [_sa(2, b"y", b, a)],
                                         [_sa(2, b"z", b, a)])]
    bad = DemoReport("q", False, tunnels=[TunnelReport(
        "t", "a", "x", sent=40, received=40, rotations=3, dataplane="esp",
        esp_directions=differ, esp_outbound_sas=4)])
    assert bad.problems == ["t: ESP cluj-napoca->bucharest: SPI 0x00000002: the two ends hold "
                            "different keys"]
    assert " DIFFER " in bad.table()
