"""Generate the combiner's known-answer vectors: tests/protocol/vectors/combiner.json.

Run from the repository root:  .venv/bin/python -m tests.protocol.gen_vectors

Every secret comes from a fixed seed: ML-KEM-768 keys via ``from_seed_bytes`` (64-byte seed
d || z), X25519 keys via ``from_private_bytes``, QKD keys and nonces from SHA-256 of a label.
ML-KEM encapsulation is randomised by the library, so the ciphertext is recorded once; the test
re-derives the shared secret by decapsulating it with the seeded key. Re-running this script
therefore changes only ``mlkem_ct``/``mlkem_ss`` and the outputs that depend on them; the
committed file is the reference.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from gateway.keymaterial import Secret
from gateway.protocol.combiner import CombinerSecrets, QkdSlot, RekeyTranscript, combine
from gateway.protocol.policy import Kind, Mode

OUT = Path(__file__).parent / "vectors" / "combiner.json"
RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def det(label: str, n: int = 32) -> bytes:
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"qkd-gateway kat {label} {i}".encode()).digest()
        i += 1
    return out[:n]


CASES: list[dict[str, Any]] = [
    {"name": "qkd+pqc two paths, wireguard", "mode": "QKD_PQC", "kind": "WIREGUARD",
     "paths": [("kms-a", True), ("kms-b", True)], "spi": (0, 0)},
    {"name": "qkd+pqc one path, esp", "mode": "QKD_PQC", "kind": "ESP",
     "paths": [("kms-a", True)], "spi": (0x1001, 0x2002)},
    {"name": "qkd only (ml-kem left out)", "mode": "QKD", "kind": "ESP",
     "paths": [("kms-a", True)], "spi": (300, 301)},
    {"name": "pqc only", "mode": "PQC", "kind": "WIREGUARD", "paths": [], "spi": (0, 0)},
    {"name": "any, second path missing", "mode": "ANY", "kind": "WIREGUARD",
     "paths": [("kms-a", True), ("kms-b", False)], "spi": (0, 0)},
]


def build(case: dict[str, Any], ct: bytes | None = None) -> dict[str, Any]:
    name = case["name"]
    mode, kind = Mode[case["mode"]], Kind[case["kind"]]
    use_kem = mode.uses_mlkem
    kem_seed = det(name + " mlkem seed", 64)
    kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(kem_seed)
    ek, ss_kem = b"", b""
    if use_kem:
        ek = kem.public_key().public_bytes(*RAW)
        if ct is None:
            ss_kem, ct = kem.public_key().encapsulate()
        ss_kem = kem.decapsulate(ct)
    ct = ct if use_kem and ct is not None else b""
    xi_priv, xr_priv = det(name + " x25519 i"), det(name + " x25519 r")
    xi = x25519.X25519PrivateKey.from_private_bytes(xi_priv)
    xr = x25519.X25519PrivateKey.from_private_bytes(xr_priv)
    ss_x = xi.exchange(xr.public_key())
    slots, qkd = [], []
    for i, (kms, present) in enumerate(case["paths"]):
        kid = f"00000000-0000-4000-8000-{i:012d}" if present else ""
        slots.append(QkdSlot(kms, kid))
        qkd.append(det(f"{name} qkd {i}") if present else None)
    t = RekeyTranscript(mode, kind, 7, "sae-alpha", "sae-beta", "tun-" + str(len(slots)),
                        tuple(slots), ek, ct, xi.public_key().public_bytes(*RAW),
                        xr.public_key().public_bytes(*RAW), case["spi"][0], case["spi"][1],
                        det(name + " nonce i"), det(name + " nonce r"))
    keys = combine(CombinerSecrets(Secret(ss_kem) if use_kem else None,
                                   tuple(Secret(q) if q else None for q in qkd), Secret(ss_x)), t)
    return {
        "name": name,
        "inputs": {
            "mode": case["mode"], "kind": case["kind"], "epoch": t.epoch,
            "initiator_sae": t.initiator_sae, "responder_sae": t.responder_sae,
            "tunnel": t.tunnel,
            "qkd": [{"kms": s.kms, "key_id": s.key_id, "key": q.hex() if q else None}
                    for s, q in zip(slots, qkd, strict=True)],
            "mlkem_seed": kem_seed.hex() if use_kem else None, "mlkem_ek": ek.hex(),
            "mlkem_ct": ct.hex(), "mlkem_ss": ss_kem.hex() if use_kem else None,
            "x25519_i_private": xi_priv.hex(), "x25519_r_private": xr_priv.hex(),
            "x25519_i": t.x25519_i.hex(), "x25519_r": t.x25519_r.hex(),
            "x25519_ss": ss_x.hex(), "spi_i": t.spi_i, "spi_r": t.spi_r,
            "nonce_i": t.nonce_i.hex(), "nonce_r": t.nonce_r.hex(),
        },
        "transcript": t.encode().hex(),
        "outputs": {
            "transcript_hash": keys.transcript_hash.hex(),
            "wg_psk": keys.wg_psk.reveal().hex(),
            "esp_i2r": keys.esp_i2r.reveal().hex(),
            "esp_r2i": keys.esp_r2i.reveal().hex(),
            "confirm_i": keys.confirm_i.reveal().hex(),
            "confirm_r": keys.confirm_r.reveal().hex(),
            "key_check": keys.key_check.hex(),
        },
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "description": "qkd-gateway/2 combiner known-answer vectors (one HKDF-Extract per "
                       "input, chained); generated by tests/protocol/gen_vectors.py (fixed "
                       "seeds, see its docstring)",
        "vectors": [build(c) for c in CASES],
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(doc['vectors'])} vectors to {OUT}")


if __name__ == "__main__":
    main()
