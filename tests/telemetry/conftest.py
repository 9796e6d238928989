"""Telemetry fixtures: a restorable logging setup and a real mosquitto broker."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.telemetry.broker import MOSQUITTO, Broker


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging() changes process-wide state; put it back for the rest of the suite."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed: `apt-get install mosquitto` (Debian package)")
    b = Broker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()
