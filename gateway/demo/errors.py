"""Errors of the demo lab. Each message names what failed and what the operator can do.

Exception tree::

    DemoError                      anything the lab could not do; the CLI prints it, exit 2
    ├── ToolMissing                a required program or kernel feature is absent (install hint)
    ├── NetnsError                 an `ip` command or a namespace operation failed
    ├── LabProcessError            a lab process could not start or died early
    ├── KmsUnreachable             the KME network did not answer from a site namespace
    └── Interrupted                stopped (SIGINT/SIGTERM) before the pings started
"""

from __future__ import annotations

__all__ = [
    "DemoError",
    "Interrupted",
    "KmsUnreachable",
    "LabProcessError",
    "NetnsError",
    "ToolMissing",
]


class DemoError(Exception):
    """Base of every error the demo lab raises."""


class ToolMissing(DemoError):
    """A program or kernel feature the lab needs is not there."""


class NetnsError(DemoError):
    """Building, changing or removing a network namespace or link failed."""


class LabProcessError(DemoError):
    """A process of the lab (KME network, site daemon) failed to start or exited early."""


class KmsUnreachable(DemoError):
    """The KME network did not answer a status request over mutual TLS in time."""


class Interrupted(DemoError):
    """A stop was requested while the lab was still being set up; it has been torn down."""
