"""The layering of docs/architecture.md, enforced: each package imports only what it may.

Parsed with ``ast`` (no import side effects). A new edge is a design decision: change the table
here and in docs/architecture.md together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent / "gateway"

# package -> the gateway packages/modules it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "keymaterial": set(),
    "identity": set(),
    "config": set(),
    "telemetry": {"keymaterial"},
    "kms": {"keymaterial"},
    "dataplane": {"keymaterial"},
    # The core may name the KMS interface's QKDKey type, nothing of its I/O.
    "protocol": {"keymaterial", "identity", "kms.types"},
    "daemon": {"keymaterial", "identity", "config", "telemetry", "kms", "dataplane", "protocol"},
    "demo": {"keymaterial", "identity", "kms"},
    "cli": {"keymaterial", "identity", "config", "telemetry", "kms", "dataplane", "protocol",
            "daemon", "demo"},
}
# Modules of the protocol package that may do I/O (everything else there must stay pure).
PROTOCOL_IO = {"transport.py"}
IO_LIBRARIES = {"asyncio", "socket", "aiohttp", "pyroute2", "ssl", "selectors", "subprocess"}


def _gateway_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gateway"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gateway"))
    return found


def _top_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
    return out


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _allowed(importer: str, target: str) -> bool:
    name = target.removeprefix("gateway").lstrip(".")
    if not name or name.split(".")[0] == importer:
        return True
    return any(name == a or name.startswith(a + ".") for a in ALLOWED[importer])


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layering(path: Path) -> None:
    pkg = _package_of(path)
    if pkg in ("__init__", "__main__"):
        return
    if pkg == "kms" and path.parent.name == "sim":
        allowed_extra = {"kms", "keymaterial"}  # the simulator serves the same wire format
        bad = [t for t in _gateway_imports(path)
               if not _allowed(pkg, t) and t.removeprefix("gateway.").split(".")[0]
               not in allowed_extra]
    else:
        bad = [t for t in _gateway_imports(path) if not _allowed(pkg, t)]
    assert not bad, f"{path.relative_to(ROOT)} ({pkg}) must not import {bad}"


def test_protocol_core_does_no_io() -> None:
    for path in sorted((ROOT / "protocol").glob("*.py")):
        if path.name in PROTOCOL_IO:
            continue
        used = _top_imports(path) & IO_LIBRARIES
        assert not used, f"protocol/{path.name} imports I/O libraries {used}"


def test_the_kms_package_does_not_depend_on_its_simulator() -> None:
    for path in sorted((ROOT / "kms").glob("*.py")):
        assert not [t for t in _gateway_imports(path) if t.startswith("gateway.kms.sim")], path
