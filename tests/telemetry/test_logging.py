"""The log pipeline: JSON/console rendering, bound context, and that key bytes never get out."""

from __future__ import annotations

import io
import json
import logging
import os
import threading

import pytest
import structlog

from gateway.keymaterial import Secret
from gateway.telemetry import configure_logging
from tests.telemetry.leakscan import leaks, planted_key

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("restore_logging")]


def _raise_with_key_in_locals(key: bytes) -> None:
    # The key sits in locals (raw and wrapped) and in the exception's args: a renderer with
    # show_locals, or str(exc), would print it.
    raw_local = key
    wrapped_local = Secret(key)
    assert raw_local and wrapped_local
    raise RuntimeError("psk install failed", raw_local)


def _emit_everything(key: bytes) -> None:
    log = structlog.get_logger("gateway.test")
    structlog.contextvars.bind_contextvars(tunnel="wg-a", epoch=7)
    try:
        log.info("psk_installed", peer="site-b", key_id="k-1", spi=0x1234, psk=Secret(key))
        log.warning("raw_value_logged", psk=key, buf=bytearray(key), view=memoryview(key))
        log.info(
            "nested_values",
            detail={"keys": [Secret(key), key, {"deeper": (key, Secret(key))}]},
        )
        try:
            _raise_with_key_in_locals(key)
        except RuntimeError:
            log.exception("rekey_failed")
        try:
            _raise_with_key_in_locals(key)
        except RuntimeError as exc:
            log.error("rekey_failed_again", exc_info=exc)
        lib = logging.getLogger("aiohttp.server")
        lib.warning("library logged %r and %s", key, key)
        lib.error("library object %s", {"k": key})
        lib.warning(key)
    finally:
        structlog.contextvars.clear_contextvars()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_no_key_bytes_in_any_output(fmt: str, capfd: pytest.CaptureFixture[str]) -> None:
    key = planted_key()
    out = io.StringIO()
    configure_logging(fmt, "debug", out)  # type: ignore[arg-type]
    _emit_everything(key)
    text = out.getvalue() + "".join(capfd.readouterr())
    assert text.count("\n") >= 7
    assert leaks(text, key) == []
    assert "<bytes redacted>" in text
    assert "Secret(<redacted 32 bytes>)" in text
    assert "psk_installed" in text and "rekey_failed" in text
    assert "Traceback (most recent call last)" in text


def test_json_lines_carry_event_context_and_violation_flag() -> None:
    key = planted_key()
    out = io.StringIO()
    configure_logging("json", "debug", out)
    _emit_everything(key)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    by_event = {line["event"]: line for line in lines}

    installed = by_event["psk_installed"]
    assert installed["level"] == "info"
    assert installed["logger"] == "gateway.test"
    assert (installed["tunnel"], installed["epoch"], installed["peer"]) == ("wg-a", 7, "site-b")
    assert (installed["key_id"], installed["spi"]) == ("k-1", 0x1234)
    assert installed["psk"] == "Secret(<redacted 32 bytes>)"
    # A Secret is the expected way to carry a key: not a violation.
    assert "log_redaction_violation" not in installed

    raw = by_event["raw_value_logged"]
    assert raw["log_redaction_violation"] is True
    assert raw["psk"] == raw["buf"] == raw["view"] == "<bytes redacted>"

    nested = by_event["nested_values"]["detail"]["keys"]
    assert nested[0] == "Secret(<redacted 32 bytes>)"
    assert nested[1] == "<bytes redacted>"
    assert nested[2]["deeper"] == ["<bytes redacted>", "Secret(<redacted 32 bytes>)"]

    failed = by_event["rekey_failed"]
    assert failed["level"] == "error"
    assert "RuntimeError: ('psk install failed', <bytes redacted>)" in failed["exception"]
    assert "raw_local" in failed["exception"]  # the source line, not the value
    assert failed["log_redaction_violation"] is True
    assert "exception" in by_event["rekey_failed_again"]

    lib = [line for line in lines if line["logger"] == "aiohttp.server"]
    assert len(lib) == 3
    assert all(line["log_redaction_violation"] is True for line in lib)
    assert lib[0]["event"] == "library logged '<bytes redacted>' and <bytes redacted>"


def test_clean_events_are_not_flagged_and_level_filters() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", out)
    log = structlog.get_logger("gateway.test")
    log.debug("too_verbose")
    log.info("tunnel_up", tunnel="wg-a")
    logging.getLogger("asyncio").debug("also too verbose")
    logging.getLogger("asyncio").info("loop note %d", 3)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["tunnel_up", "loop note 3"]
    assert not any("log_redaction_violation" in line for line in lines)
    assert list(lines[0])[:4] == ["timestamp", "level", "logger", "event"]


def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", first)
    configure_logging("json", "info", second)
    structlog.get_logger().info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def test_a_broken_stream_loses_lines_not_the_callers_work() -> None:
    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")  # the journal went away

    configure_logging("json", "info", Closed())
    structlog.get_logger("gateway.test").info("tunnel_rekeyed", tunnel="wg-a")  # no raise


def test_our_lines_and_library_lines_share_one_lock() -> None:
    """Our events skip the stdlib handler but take its lock: a line is written whole."""
    seen: list[bool] = []
    handlers: list[logging.Handler] = []

    class Probe(io.StringIO):
        def write(self, s: str) -> int:
            lock = handlers[0].lock
            assert lock is not None
            got: list[bool] = []

            def probe() -> None:  # another thread tries the lock, and gives it back at once
                if lock.acquire(blocking=False):
                    lock.release()
                    got.append(True)
                else:
                    got.append(False)

            t = threading.Thread(target=probe)
            t.start()
            t.join()
            seen.append(not got[0])
            return super().write(s)

    configure_logging("json", "info", Probe())
    handlers += [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
                 and getattr(h, "_qkd_gateway_handler", False)]
    structlog.get_logger("gateway.test").info("tunnel_up")
    logging.getLogger("aiohttp.server").warning("library line")
    assert seen and all(seen)


def test_auto_picks_console_on_a_tty_and_json_otherwise() -> None:
    pipe = io.StringIO()
    configure_logging("auto", "info", pipe)
    structlog.get_logger().info("auto_json", tunnel="wg-a")
    assert json.loads(pipe.getvalue())["event"] == "auto_json"

    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        configure_logging("auto", "info", tty)
        structlog.get_logger().info("auto_console", tunnel="wg-a")
        tty.flush()
        text = os.read(master, 4096).decode()
    os.close(master)
    assert "auto_console" in text and "tunnel" in text
    assert not text.lstrip().startswith("{")


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "verbose")])
def test_bad_settings_name_the_choices(fmt: str, level: str) -> None:
    with pytest.raises(ValueError, match="is not one of"):
        configure_logging(fmt, level, io.StringIO())  # type: ignore[arg-type]
