"""Run the gateway's code paths under MemoryDenyWriteExecute semantics; print a JSON verdict.

Executed as ``python -m tests.telemetry.mdwe_probe`` by test_systemd_unit.py. It switches on
the kernel's PR_SET_MDWE (Linux >= 6.3; the same rule systemd enforces for
``MemoryDenyWriteExecute=yes``: no mapping may become writable and executable), proves the rule
is active, then imports every gateway module and exercises crypto, TLS, YAML, asyncio, aiohttp
and the logging pipeline. Exit 0 with ``"ok": true`` only if all of that worked.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def _enable_mdwe() -> str | None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        return f"prctl(PR_SET_MDWE) failed, errno {ctypes.get_errno()}"
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        return None
    return "a writable+executable mapping was still allowed"


def _workload() -> dict[str, object]:
    import asyncio
    import importlib
    import io
    import pkgutil
    import ssl

    import aiohttp
    import structlog
    import yaml
    from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    import gateway
    from gateway.telemetry import GatewayMetrics, MetricsServer, configure_logging

    names = [
        m.name
        for m in pkgutil.walk_packages(gateway.__path__, "gateway.")
        if not m.name.endswith("__main__")
    ]
    for name in names:
        importlib.import_module(name)

    kem = mlkem.MLKEM768PrivateKey.generate()
    shared, ct = kem.public_key().encapsulate()
    assert kem.decapsulate(ct) == shared
    a, b = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    assert a.exchange(b.public_key()) == b.exchange(a.public_key())
    ed = ed25519.Ed25519PrivateKey.generate()
    ed.public_key().verify(ed.sign(b"m"), b"m")
    ml = mldsa.MLDSA65PrivateKey.generate()
    ml.public_key().verify(ml.sign(b"m"), b"m")
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    assert aead.decrypt(b"\0" * 12, aead.encrypt(b"\0" * 12, b"p", None), None) == b"p"
    ssl.create_default_context().set_ciphers("ECDHE+AESGCM")
    assert yaml.safe_load("a: [1, 2]") == {"a": [1, 2]}

    out = io.StringIO()
    configure_logging("json", "info", out)
    structlog.get_logger().info("probe_event", n=1)
    assert json.loads(out.getvalue())["event"] == "probe_event"

    async def scrape() -> str:
        metrics = GatewayMetrics()
        server = MetricsServer(metrics.registry, "127.0.0.1", 0)
        await server.start()
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            url = f"http://127.0.0.1:{server.port}/metrics"
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as resp,
            ):
                return await resp.text()
        finally:
            await server.stop()

    assert "qkd_gateway_info" in asyncio.run(scrape())
    return {"modules": len(names)}


def main() -> int:
    problem = _enable_mdwe()
    if problem is not None:
        print(json.dumps({"ok": False, "mdwe": False, "error": problem}))
        return 2
    try:
        result = _workload()
    except Exception as exc:
        print(json.dumps({"ok": False, "mdwe": True, "error": repr(exc)}))
        return 1
    print(json.dumps({"ok": True, "mdwe": True, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
