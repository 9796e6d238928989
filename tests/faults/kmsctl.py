"""The embedded KME network as a process, with a control socket for fault injection.

``python -m tests.faults.kmsctl --control SOCK <qkd-gateway kms-sim arguments>`` runs the same
:class:`~gateway.kms.sim.KmeNetwork` as ``qkd-gateway kms-sim`` and also serves JSON lines on the
Unix socket SOCK, one request and one answer per line, so a test can change a running KME:

    {"op": "faults", "kme": ID, "latency": 3, "error_503_rate": 1, "drop_rate": 0, "paused": false}
    {"op": "stop", "kme": ID} / {"op": "start", "kme": ID}      the KME's port closes / reopens
    {"op": "forget", "kme": ID}       the KME loses every parked key (key IDs become unknown)
    {"op": "new_store"}               every KME restarts over an empty key store: parked keys
                                      gone, link pools refilled (a KMS reinstalled)
    {"op": "cert", "kme": ID, "kind": "rotated" | "expired" | "other_id"}
                                      reissue the KME's server certificate from the same CA
                                      (same ID, or already expired, or naming another KME ID)
                                      and restart the KME with it
    {"op": "drain", "kme_a": A, "kme_b": B, "keep": N}   leave N keys in the link's pool
    {"op": "info"}                    requests seen and link stock per KME

Answers are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. This is test tooling
(it reaches into the simulator's internals), never shipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.cli.kms_sim import _configure_logs, _kme, _link, _sae
from gateway.kms.sim import KmeNetwork, parse_fluctuation
from gateway.kms.sim.pki import KME_ID_URI_PREFIX

__all__ = ["issue_kme_cert", "main"]


def issue_kme_cert(pki_dir: Path, kme_id: str, hosts: list[str], out: Path, *,
                   expired: bool = False, name_as: str | None = None) -> tuple[Path, Path]:
    """A new KME server certificate from the lab CA: fresh key, CN/SAN naming ``name_as`` (or
    ``kme_id``), valid now (or expired yesterday). Returns (cert, key) paths under ``out``."""
    ca_cert = x509.load_pem_x509_certificate((pki_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    ident = name_as or kme_id
    now = dt.datetime.now(dt.UTC)
    start, end = ((now - dt.timedelta(days=30), now - dt.timedelta(days=1)) if expired
                  else (now - dt.timedelta(minutes=5), now + dt.timedelta(days=30)))
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(KME_ID_URI_PREFIX + ident)]
    for h in dict.fromkeys(["127.0.0.1", *hosts]):
        import ipaddress
        sans.append(x509.IPAddress(ipaddress.ip_address(h)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ident)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{kme_id}.crt", out / f"{kme_id}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


class Controller:
    def __init__(self, net: KmeNetwork, pki_dir: Path, hosts: dict[str, str]) -> None:
        self.net, self.pki_dir, self.hosts = net, pki_dir, hosts

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        net = self.net
        if op == "faults":
            f = net.faults(req["kme"])
            for name in ("latency", "error_503_rate", "drop_rate", "paused"):
                if name in req:
                    setattr(f, name, req[name])
            return {"ok": True}
        if op == "stop":
            await net.stop_kme(req["kme"])
            return {"ok": True}
        if op == "start":
            await net.start_kme(req["kme"])
            return {"ok": True}
        if op == "forget":
            net.model._state[req["kme"]].parked.clear()
            return {"ok": True}
        if op == "new_store":
            kmes = list(net.model.kmes)
            for k in kmes:
                await net.stop_kme(k)
            for k in kmes:
                net.model._state[k].parked.clear()
            for pool in net.model.pools.values():
                pool._bits = float(pool.capacity_bits)
            for k in kmes:
                await net.start_kme(k)
            return {"ok": True}
        if op == "cert":
            kme_id, kind = req["kme"], req["kind"]
            other = next(k for k in net.model.kmes if k != kme_id)
            cert, key = issue_kme_cert(
                self.pki_dir, kme_id, [self.hosts[kme_id]], self.pki_dir / "rotated",
                expired=kind == "expired", name_as=other if kind == "other_id" else None)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(self.pki_dir / "ca.crt"))
            ctx.load_cert_chain(str(cert), str(key))
            kme = net._get(kme_id)
            await net.stop_kme(kme_id)
            kme.tls = ctx
            await net.start_kme(kme_id)
            return {"ok": True}
        if op == "drain":
            pool = next(p for p in net.model.pools.values()
                        if set(p.name) == {req["kme_a"], req["kme_b"]})
            keep_bits = int(req["keep"]) * pool.key_size
            pool._refill()
            pool._bits = min(pool._bits, float(keep_bits))
            return {"ok": True}
        if op == "info":
            return {"ok": True,
                    "requests": {k: net.faults(k).requests for k in net.model.kmes},
                    "stock": {":".join(p.name): p.stock_keys
                              for p in net.model.pools.values()}}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def serve_client(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = await self.handle(json.loads(line))
                except Exception as exc:
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()


async def _serve(net: KmeNetwork, control: Path, pki_dir: Path, hosts: dict[str, str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ctl = Controller(net, pki_dir, hosts)
    with contextlib.suppress(FileNotFoundError):
        control.unlink()
    server = await asyncio.start_unix_server(ctl.serve_client, path=str(control))
    async with net, server:
        print(json.dumps({"event": "kms_sim_ready", "control": str(control)}), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kmsctl")
    p.add_argument("--control", type=Path, required=True)
    p.add_argument("--pki-dir", type=Path, required=True)
    p.add_argument("--kme", type=_kme, action="append", required=True)
    p.add_argument("--link", type=_link, action="append", default=[])
    p.add_argument("--sae", type=_sae, action="append", default=[])
    p.add_argument("--key-rate", type=float, default=0.0)
    p.add_argument("--max-key-count", type=int, default=1000)
    p.add_argument("--log-format", default="json")
    # As `qkd-gateway kms-sim` takes them (the lab's plan passes them): rate fluctuation model.
    p.add_argument("--fluctuation", default="none")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    _configure_logs(args.log_format)
    kmes = dict(args.kme)
    net = KmeNetwork(args.pki_dir, kmes=kmes, links=list(args.link), saes=dict(args.sae),
                     key_rate=args.key_rate, max_key_count=args.max_key_count,
                     fluctuation=parse_fluctuation(args.fluctuation, args.seed))
    asyncio.run(_serve(net, args.control, args.pki_dir, {k: h for k, (h, _) in kmes.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
