"""Local parsers under arbitrary input: the control socket's request line (served by the real
ControlServer over a Unix socket), wireguard-go's UAPI `get` answers, and the state files that
the daemon and `qkd-gateway failsafe` read back.

Contracts: the control server answers every line with one JSON object (``ok`` false and a
reason for a bad one) and calls the handler only with a dict holding a string ``cmd``; a UAPI
answer parses into a DeviceState or raises ValueError (DataplaneError/SpecError are
ValueErrors or caught as such by the backend); a state file loads or raises StateError."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.daemon.control import MAX_LINE, ControlServer
from gateway.daemon.state import StateError, StateStore, TunnelState
from gateway.dataplane.errors import DataplaneError
from gateway.dataplane.uapi import parse_get
from tests.fuzz.profiles import FUZZ

pytestmark = pytest.mark.fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)
lines = st.one_of(
    st.binary(max_size=200).filter(lambda b: b"\n" not in b),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["cmd", "tunnel", "x"]), json_values, max_size=3)
    .map(lambda d: json.dumps(d).encode()),
    st.integers(MAX_LINE - 8, MAX_LINE * 3).map(lambda n: b'{"cmd": "' + b"a" * n + b'"}'),
)


async def _exchange(server_path: Path, line: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(server_path), limit=1 << 20)
    try:
        writer.write(line + b"\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    except ConnectionError:
        return b""
    finally:
        writer.close()


@FUZZ
@given(st.lists(lines, min_size=1, max_size=5))
def test_control_request_lines(batch: list[bytes]) -> None:
    seen: list[dict[str, Any]] = []

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        seen.append(req)
        return {"ok": True}

    async def run() -> None:
        with tempfile.TemporaryDirectory() as d:
            server = ControlServer(Path(d) / "c.sock", handler)
            await server.start()
            try:
                for line in batch:
                    answer = await _exchange(Path(d) / "c.sock", line)
                    if not answer:
                        continue  # an oversized line may be cut off: a closed connection is fine
                    parsed = json.loads(answer)
                    assert isinstance(parsed, dict) and isinstance(parsed.get("ok"), bool)
                    if not parsed["ok"]:
                        assert "bad request" in parsed["error"]
            finally:
                await server.close()

    asyncio.run(run())
    assert all(isinstance(r, dict) and isinstance(r.get("cmd"), str) for r in seen)


uapi_keys = st.sampled_from([
    "private_key", "listen_port", "fwmark", "public_key", "preshared_key", "endpoint",
    "allowed_ip", "last_handshake_time_sec", "last_handshake_time_nsec", "rx_bytes", "tx_bytes",
    "persistent_keepalive_interval", "protocol_version", "errno", "bogus", ""])
uapi_values = st.one_of(
    st.sampled_from(["0", "-1", "51820", "99999999999999999999", "0" * 64, "f" * 64, "zz",
                     "10.0.0.1/32", "fd00::/64", "1.2.3.4:51820", "[::1]:1", "", "=", "a=b"]),
    st.text(max_size=70))


@FUZZ
@given(st.lists(st.tuples(uapi_keys, uapi_values).map(lambda kv: f"{kv[0]}={kv[1]}"),
                max_size=20))
def test_uapi_get_answers(answer: list[str]) -> None:
    try:
        parse_get(answer)
    except (ValueError, DataplaneError):
        return


def load_state(raw: bytes) -> TunnelState | None:
    with tempfile.TemporaryDirectory() as d:
        store = StateStore(Path(d))
        store.prepare()
        (Path(d) / "tunnels" / "wg-a.json").write_bytes(raw)
        return store.load("wg-a")


@pytest.mark.parametrize("raw", [b"null", b"1", b'"x"', b"true"])
def test_state_file_holding_a_json_scalar_is_a_state_error(raw: bytes) -> None:
    # Regression test: the fuzzer (test_state_files below) found AttributeError here; fixed
    # on main (StateStore.load checks the JSON is an object).
    with pytest.raises(StateError):
        load_state(raw)


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"version": st.sampled_from([1, 2, 3, "1", None])},
                          optional={k: json_values for k in (
                              "tunnel", "epoch", "activated_at", "key_ids", "policy",
                              "achieved", "boot_id", "activated_boot", "key_fingerprint",
                              "closed")}).map(lambda d: json.dumps(d).encode()),
))
def test_state_files(raw: bytes) -> None:
    try:
        state = load_state(raw)
    except StateError as exc:
        assert "wg-a" in str(exc)
        return
    assert state is None or isinstance(state, TunnelState)
