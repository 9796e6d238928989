"""`qkd-gateway kms-sim` as a real process: start, serve a request, stop on SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.cli import main as cli_main

pytestmark = pytest.mark.unit
START_TIMEOUT_S = 20.0

# Until the lead lists "kms_sim" in the CLI table, drive the same register()/run() directly.
_SHIM = (
    "import argparse, sys\n"
    "from gateway.cli import kms_sim\n"
    "p = argparse.ArgumentParser(prog='qkd-gateway')\n"
    "kms_sim.register(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


def _command(*args: str) -> list[str]:
    if "kms_sim" in cli_main._COMMANDS:
        return [sys.executable, "-m", "gateway", "kms-sim", *args]
    return [sys.executable, "-c", _SHIM, "kms-sim", *args]


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *_command(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2])


async def _ready(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=START_TIMEOUT_S)
        assert line, "kms-sim exited before it was ready"
        event: dict[str, Any] = json.loads(line)
        if event["event"] == "kms_sim_ready":
            return event


def _ctx(pki: Path, sae: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / f"{sae}.crt"), str(pki / f"{sae}.key"))
    return ctx


async def _post(url: str, ctx: ssl.SSLContext, body: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                              timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.post(url, json=body) as resp,
    ):
        return resp.status, await resp.json()


async def test_cli_serves_keys_and_stops_on_sigterm(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    proc = await _spawn(
        "--pki-dir", str(pki), "--kme", "KME_A=127.0.0.1:0", "--kme", "KME_B=127.0.0.1:0",
        "--link", "KME_A:KME_B", "--sae", "SAE_A@KME_A", "--sae", "SAE_B@KME_B",
        "--key-rate", "1000", "--max-key-count", "10", "--log-format", "json")
    try:
        ready = await _ready(proc)
        urls = ready["kmes"]
        for name in ("ca.crt", "kme-KME_A.crt", "kme-KME_B.key", "SAE_A.crt", "SAE_B.key"):
            assert (pki / name).exists(), name
        for key in ("ca.key", "kme-KME_A.key", "SAE_A.key", "SAE_B.key"):
            assert stat.S_IMODE(os.stat(pki / key).st_mode) == 0o600, key
        status, body = await _post(urls["KME_A"] + "/api/v1/keys/SAE_B/enc_keys",
                                   _ctx(pki, "SAE_A"), {"number": 2})
        assert status == 200 and len(body["keys"]) == 2
        status, got = await _post(urls["KME_B"] + "/api/v1/keys/SAE_A/dec_keys",
                                  _ctx(pki, "SAE_B"),
                                  {"key_IDs": [{"key_ID": k["key_ID"]} for k in body["keys"]]})
        assert status == 200 and got["keys"] == body["keys"]
        status, err = await _post(urls["KME_A"] + "/api/v1/keys/SAE_B/enc_keys",
                                  _ctx(pki, "SAE_A"), {"number": 11})
        assert status == 503 and err["message"].startswith("not enough key material")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, errout = await asyncio.wait_for(proc.communicate(), timeout=START_TIMEOUT_S)
    assert proc.returncode == 0, errout.decode()
    events = [json.loads(line)["event"] for line in out.decode().splitlines()]
    assert events[-3:] == ["kms_sim_stopping", "kme_stopped", "kme_stopped"]
    assert "kme_keys_issued" in events and "kme_keys_delivered" in events
    text = out.decode() + errout.decode()
    for k in body["keys"]:
        assert k["key"] not in text and base64.b64decode(k["key"]).hex() not in text


@pytest.mark.parametrize(("args", "message"), [
    (["--kme", "KME_A"], "--kme 'KME_A': expected ID=HOST:PORT, e.g. KME_A=127.0.0.1:8443"),
    (["--kme", "KME_A=127.0.0.1:70000"], "--kme 'KME_A=127.0.0.1:70000': port must be 0-65535"),
    (["--kme", "KME_A=127.0.0.1:0", "--link", "KME_A:KME_Z"],
     "link KME_A:KME_Z names unknown KME 'KME_Z'; declare it first"),
    (["--kme", "KME_A=127.0.0.1:0", "--sae", "SAE_A"], "--sae 'SAE_A': expected SAE_ID@KME_ID"),
])
async def test_cli_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    proc = await _spawn("--pki-dir", str(tmp_path / "pki"), *args)
    _, errout = await asyncio.wait_for(proc.communicate(), timeout=START_TIMEOUT_S)
    assert proc.returncode == 2
    assert message in errout.decode()


async def test_cli_port_in_use_exits_1(tmp_path: Path) -> None:
    holder = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = holder.sockets[0].getsockname()[1]
    try:
        proc = await _spawn("--pki-dir", str(tmp_path / "pki"),
                            "--kme", f"KME_A=127.0.0.1:{port}")
        _, errout = await asyncio.wait_for(proc.communicate(), timeout=START_TIMEOUT_S)
    finally:
        holder.close()
    assert proc.returncode == 1
    assert "kms-sim: error: cannot listen:" in errout.decode()
    assert "pick another --kme port" in errout.decode()


async def test_cli_per_link_rates_start_stock_and_stock_reports(tmp_path: Path) -> None:
    proc = await _spawn(
        "--pki-dir", str(tmp_path / "pki"), "--kme", "KME_A=127.0.0.1:0",
        "--kme", "KME_R=127.0.0.1:0", "--kme", "KME_B=127.0.0.1:0",
        "--link", "KME_A:KME_R@25600", "--link", "KME_R:KME_B@512,start=1",
        "--sae", "SAE_A@KME_A", "--sae", "SAE_B@KME_B", "--max-key-count", "10",
        "--fluctuation", "walk:0.2", "--seed", "3", "--report-interval", "0.2",
        "--log-format", "json")
    assert proc.stdout is not None
    reports: list[dict[str, Any]] = []
    try:
        await _ready(proc)
        while len(reports) < 3:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=START_TIMEOUT_S)
            event = json.loads(line)
            if event["event"] == "kms_link_stock":
                reports.append({tuple(r["link"]): r for r in event["links"]})
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), timeout=START_TIMEOUT_S)
    assert proc.returncode == 0
    fast, slow = reports[-1][("KME_A", "KME_R")], reports[-1][("KME_B", "KME_R")]
    assert fast["mean_rate_bps"] == 25600.0 and slow["mean_rate_bps"] == 512.0
    assert 0.8 * 512 <= slow["rate_bps"] <= 1.2 * 512
    assert fast["keys"] == 10  # started full, capped at capacity
    # Started with 1 key and makes 2 a second: it grows, but the capacity is not reached yet.
    assert 1 <= reports[0][("KME_B", "KME_R")]["keys"] <= slow["keys"] < 10


@pytest.mark.parametrize(("args", "message"), [
    (["--link", "KME_A:KME_B@fast"], "the rate after @ must be a number of bits/s >= 0"),
    (["--link", "KME_A:KME_B@-5"], "the rate after @ must be a number of bits/s >= 0"),
    (["--link", "KME_A:KME_B@"], "expected KME_ID1:KME_ID2[@BITS_PER_S][,start=KEYS]"),
    (["--link", "KME_A:KME_B,start=x"], "start= takes a whole number of keys"),
    (["--link", "KME_A:KME_B,stop=1"], "start= takes a whole number of keys"),
    (["--link", "KME_A:KME_B,start=2000"], "link KME_A:KME_B: initial_keys must lie in [0, max_key_count 1000]"),
    (["--fluctuation", "walk:2"], "random-walk spread must lie in [0, 1)"),
    (["--fluctuation", "brown"], "use none, walk:SPREAD[:STEP_S]"),
    (["--report-interval", "-1"], "--report-interval must be >= 0 seconds"),
])
async def test_cli_rejects_bad_link_and_rate_arguments(tmp_path: Path, args: list[str],
                                                       message: str) -> None:
    proc = await _spawn("--pki-dir", str(tmp_path / "pki"), "--kme", "KME_A=127.0.0.1:0",
                        "--kme", "KME_B=127.0.0.1:0", *args)
    _, errout = await asyncio.wait_for(proc.communicate(), timeout=START_TIMEOUT_S)
    assert proc.returncode == 2
    assert message in errout.decode()
