"""The core stays pure: only transport.py may import an I/O library, and no module reads time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gateway.protocol

PKG = Path(gateway.protocol.__file__).parent
IO_MODULES = {"asyncio", "socket", "selectors", "ssl", "aiohttp", "pyroute2", "aiomqtt", "time",
              "threading", "subprocess"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.unit
def test_only_the_transport_does_io() -> None:
    core = [p for p in PKG.glob("*.py") if p.name not in ("transport.py", "__init__.py")]
    assert len(core) >= 12
    for path in core:
        assert not (_imports(path) & IO_MODULES), f"{path.name} imports an I/O module"


@pytest.mark.unit
def test_modules_stay_small() -> None:
    for path in PKG.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name
