"""Structured logging: one structlog pipeline for our events and for stdlib loggers (aiohttp,
asyncio), rendered as JSON lines (journald, log shippers) or for a human at a terminal.

Event names are stable snake_case (``rekey_completed``); context is bound as keys (``tunnel``,
``peer``, ``key_id``, ``epoch``, ``spi``) with :func:`structlog.contextvars.bind_contextvars` or
``log.bind(...)``. Key material cannot be logged:

* :func:`redact_secrets_processor` runs early and replaces every Secret, nested too;
* exceptions are rendered here with :mod:`traceback` (which never prints frame locals) instead of
  a pretty printer that might (``show_locals``);
* :func:`reject_raw_values` runs last before the renderer: raw bytes anywhere, and bytes literals
  inside any text (exception messages, stdlib ``%r`` arguments), become ``<bytes redacted>`` and
  the line gets ``log_redaction_violation: true`` so the leak attempt is itself visible.

Two doors, one stream, one lock: our events are rendered at the end of structlog's chain and
written by :class:`_LineLogger` straight to the stream; stdlib records (libraries) go through
the root logger's handler and the same processors in its formatter. Each line passes the
redaction once. The daemon logs an event per rekey (at 10,000 tunnels every 120 s, ~80 lines a
second); routing our events through stdlib as well made two LogRecords per line and cost
~half of each line (bench/telemetry_cost.py).
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway.telemetry.redact import VIOLATION_KEY, Redaction, redact_secrets, to_safe

__all__ = [
    "LogFormat",
    "configure_logging",
    "redact_secrets_processor",
    "reject_raw_values",
    "render_exception",
]

LogFormat = Literal["auto", "json", "console"]

_LEVELS = ("debug", "info", "warning", "error", "critical")
# Marks the handler we install, so configuring twice replaces it instead of doubling every line.
_HANDLER_MARK = "_qkd_gateway_handler"
_RECORD_FLAG = "_qkd_redaction_violation"
_LEADING_KEYS = ("timestamp", "level", "logger", "event")


_PLAIN = (str, int, float, bool, type(None))


def redact_secrets_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Replace every Secret anywhere in the event (nested containers too) by its redacted text."""
    return {key: value if type(value) in _PLAIN else redact_secrets(value)
            for key, value in event_dict.items()}


def render_exception(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Turn ``exc_info`` into an ``exception`` string with the stdlib formatter (no locals)."""
    exc_info = event_dict.pop("exc_info", None)
    if not exc_info:
        return event_dict
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    elif not isinstance(exc_info, tuple):
        exc_info = sys.exc_info()
    if exc_info[0] is None:
        return event_dict
    event_dict["exception"] = "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    return event_dict


def reject_raw_values(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Final step before rendering: only JSON-safe values leave; raw bytes are refused."""
    report = Redaction()
    safe: EventDict = {}
    # Fixed leading keys make raw JSON lines easy to read and to grep.
    ordered = [k for k in _LEADING_KEYS if k in event_dict]
    ordered += [k for k in event_dict if k not in _LEADING_KEYS]
    for key in ordered:
        safe[str(key)] = to_safe(event_dict[key], report, str(key))
    if report.violation or event_dict.get(VIOLATION_KEY):
        safe[VIOLATION_KEY] = True
    return safe


# ProcessorFormatter's own entries in the event dict (removed before rendering).
_META = ("_record", "_from_structlog")


def _reject_raw_values_foreign(logger: WrappedLogger, name: str,
                               event_dict: EventDict) -> EventDict:
    """:func:`reject_raw_values` for a stdlib record's event, leaving the formatter's entries."""
    meta = {k: event_dict.pop(k) for k in _META if k in event_dict}
    safe = reject_raw_values(logger, name, event_dict)
    safe.update(meta)
    return safe


def _flag_from_record(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    if record is not None and getattr(record, _RECORD_FLAG, False):
        event_dict[VIOLATION_KEY] = True
    return event_dict


class _SanitizeForeignRecord(logging.Filter):
    """Sanitise stdlib records *before* ``%`` formatting bakes their arguments into the message.

    ProcessorFormatter calls ``record.getMessage()`` first, so a ``log.info("%r", key)`` from a
    library would already be text by the time our processors see it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        report = Redaction()
        if not isinstance(record.msg, str):
            record.msg = to_safe(record.msg, report, "msg")
            if not isinstance(record.msg, str):
                record.msg = str(record.msg)
        if record.args:
            args = to_safe(record.args, report, "args")
            record.args = tuple(args) if isinstance(args, list) else args
        if report.violation:
            setattr(record, _RECORD_FLAG, True)
        return True


def _resolve_format(format: LogFormat, stream: TextIO) -> Literal["json", "console"]:
    if format == "auto":
        isatty = getattr(stream, "isatty", None)
        return "console" if callable(isatty) and isatty() else "json"
    if format in ("json", "console"):
        return format
    raise ValueError(f"log format {format!r} is not one of auto, json, console")


def configure_logging(
    format: LogFormat = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Install the logging pipeline for the whole process.

    Args:
        format: ``json`` (one object per line, for journald), ``console`` (aligned key=value,
            colours when ``stream`` is a TTY) or ``auto`` (console on a TTY, else JSON).
        level: ``debug``, ``info``, ``warning``, ``error`` or ``critical`` (any case).
        stream: where lines go; standard error when ``None``.
    """
    level_name = level.lower()
    if level_name not in _LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(_LEVELS)}")
    out = sys.stderr if stream is None else stream
    kind = _resolve_format(format, out)

    shared: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets_processor,
    ]
    renderer: Processor
    if kind == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        isatty = getattr(out, "isatty", None)
        renderer = structlog.dev.ConsoleRenderer(
            colors=bool(callable(isatty) and isatty()),
            exception_formatter=structlog.dev.plain_traceback,
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        # Only stdlib records come here (our events are written by _LineLogger).
        foreign_pre_chain=[*shared, _flag_from_record, render_exception,
                           _reject_raw_values_foreign],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(_SanitizeForeignRecord())
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_name.upper())
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.StackInfoRenderer(),
            render_exception,
            reject_raw_values,
            renderer,
        ],
        logger_factory=_LineLoggerFactory(handler),
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name.upper())),
        # Not cached: configure_logging() may run again (tests, SIGHUP re-reading the level).
        cache_logger_on_first_use=False,
    )


class _LineLogger:
    """Writes our rendered events to the stream of the handler stdlib records go through, under
    that handler's lock (a line is never cut by another thread's). A failing stream (a closed
    journal pipe) loses the line, never the caller's work: logging does not raise."""

    def __init__(self, name: str, handler: logging.StreamHandler[TextIO]) -> None:
        self.name = name  # the "logger" field (structlog.stdlib.add_logger_name)
        self._handler = handler

    def msg(self, line: str) -> None:
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(line + "\n")
            handler.stream.flush()
        except (OSError, ValueError):
            pass
        finally:
            handler.release()

    debug = info = warning = error = critical = exception = log = msg


class _LineLoggerFactory:
    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self._handler = handler

    def __call__(self, *args: Any) -> _LineLogger:
        return _LineLogger(str(args[0]) if args else "", self._handler)
