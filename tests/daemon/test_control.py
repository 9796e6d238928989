import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon.control import MAX_LINE, ControlError, ControlServer, request

pytestmark = pytest.mark.unit


async def _handler(req: dict[str, Any]) -> dict[str, Any]:
    if req["cmd"] == "status":
        return {"ok": True, "tunnels": {"t": {"epoch": 3}}}
    return {"ok": False, "error": f"unknown command {req['cmd']!r}"}


async def test_status_round_trip_and_socket_mode(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.sock"
    server = ControlServer(path, _handler)
    await server.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert await request(path, {"cmd": "status"}) == {"ok": True, "tunnels": {"t": {"epoch": 3}}}
        answer = await request(path, {"cmd": "nope"})
        assert answer["ok"] is False
    finally:
        await server.close()
    assert not path.exists()


@pytest.mark.parametrize("payload", [b"not json\n", b"[1,2]\n", b'{"cmd": 5}\n', b"x" * (MAX_LINE * 2)])
async def test_bad_requests_get_an_error_and_the_server_survives(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "c.sock"
    server = ControlServer(path, _handler)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(payload)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert b'"ok": false' in line
        assert (await request(path, {"cmd": "status"}))["ok"] is True
    finally:
        await server.close()


async def test_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="is `qkd-gateway run`"):
        await request(tmp_path / "absent.sock", {"cmd": "status"})


async def _big(req: dict[str, Any]) -> dict[str, Any]:
    tunnels = {f"t{i}": {"epoch": i, "closed": i % 3 == 0, "low_stock": i == 5,
                         "session_up": True, "keys_installed": 1, "key_ids": ["k" * 400]}
               for i in range(10_000)}
    return {"ok": True, "site": "alpha", "tunnels": tunnels}


async def test_status_of_ten_thousand_tunnels_in_full_in_part_and_summarised(
        tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    server = ControlServer(path, _big)
    await server.start()
    try:
        full = await request(path, {"cmd": "status"})  # ~5 MB: over the former 1 MiB limit
        assert len(full["tunnels"]) == 10_000
        some = await request(path, {"cmd": "status", "tunnels": ["t1", "t2", "nope"]})
        assert sorted(some["tunnels"]) == ["t1", "t2"] and some["site"] == "alpha"
        summary = await request(path, {"cmd": "status", "summary": True})
        assert summary["tunnels"]["count"] == 10_000
        assert summary["tunnels"]["failed_closed"] == 3334
        assert summary["tunnels"]["low_stock"] == 1
        assert summary["tunnels"]["keys_installed"] == 10_000
        assert len(summary["tunnels"]["failed_closed_names"]) == 100
        bad = await request(path, {"cmd": "status", "tunnels": "t1"})
        assert bad["ok"] is False and "list of tunnel names" in bad["error"]
    finally:
        await server.close()


async def test_an_answer_past_the_client_limit_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.daemon import control
    monkeypatch.setattr(control, "MAX_REPLY", 1 << 16)
    path = tmp_path / "c.sock"
    server = ControlServer(path, _big)
    await server.start()
    try:
        with pytest.raises(ControlError, match="ask for a summary"):
            await request(path, {"cmd": "status"})
    finally:
        await server.close()
