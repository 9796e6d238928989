"""`status` and `rekey` find the control socket from the file alone: no secrets needed."""

from pathlib import Path

import pytest

from gateway.cli.main import main

pytestmark = pytest.mark.unit


def test_status_reads_only_the_socket_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    cfg = tmp_path / "gateway.yaml"
    # A credential reference without $CREDENTIALS_DIRECTORY would fail full validation.
    cfg.write_text("site: {name: a, sae_id: a, identity: {ed25519_key: {credential: x}, "
                   "mldsa65_key: {credential: y}}}\ncontrol_socket: ctl.sock\n")
    assert main(["status", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"no daemon is listening on {tmp_path / 'ctl.sock'}" in err
    assert main(["rekey", "t0", "--socket", str(tmp_path / "none.sock")]) == 1


def _tunnel(closed: bool) -> dict[str, object]:
    return {"epoch": 3, "closed": closed, "session_up": not closed, "key_age_s": 12.0,
            "expires_in_s": 168.0, "rekeys_completed": 3, "achieved": "qkd+pqc",
            "keys_installed": 3, "low_stock": False}


def test_summary_and_tunnel_narrow_the_answer(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """--tunnel and --summary go to a real control socket; the daemon's side narrows."""
    import asyncio
    import threading

    from gateway.daemon.control import ControlServer

    status = {"ok": True, "site": "a", "version": "0", "uptime_s": 1.0,
              "config": {"generation": 1}, "pools": {}, "alarms": [],
              "tunnels": {"t1": _tunnel(False), "t2": _tunnel(True), "t3": _tunnel(False)}}
    status["tunnels"]["t3"]["esp"] = {"key_in_use_epoch": 3, "spi_in": "0xc0000101",  # type: ignore[index]
                                      "spi_out": "0xc0000202"}

    async def handler(req: dict[str, object]) -> dict[str, object]:
        return status

    sock = tmp_path / "ctl.sock"
    loop = asyncio.new_event_loop()
    server = ControlServer(sock, handler)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert main(["status", "--socket", str(sock), "--summary"]) == 0
        out = capsys.readouterr().out
        assert "tunnels 3  failed closed 1 (t2)" in out and "keys installed 9" in out
        assert "t1 " not in out
        assert main(["status", "--socket", str(sock), "--tunnel", "t2", "--tunnel", "t3"]) == 0
        out = capsys.readouterr().out
        assert "t2 " in out and "t3 " in out and "t1 " not in out and "CLOSED" in out
        assert "in use: epoch 3, SPI out 0xc0000202 in 0xc0000101" in out
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
