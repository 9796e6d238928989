"""The real-systemd tier: a Debian 12 root booted by systemd-nspawn (make test-systemd)."""

from __future__ import annotations

from tests.packaging.conftest import deb

__all__ = ["deb"]
