"""``load_config(path)``: read, parse, validate and cross-check one configuration file.

All checks run in one pass and every problem is reported together in a :class:`ConfigError`;
nothing half-valid is ever returned. Referenced files (key files, CA and certificate files,
public key files, systemd credentials) are checked at load time, so `check-config` and `run` see
the same problems.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from gateway.config.crosscheck import cross_check
from gateway.config.errors import ConfigError, Problem
from gateway.config.fields import SHARED
from gateway.config.loader import Document, read_yaml
from gateway.config.models import GatewayConfig
from gateway.config.translate import translate

__all__ = ["load_config", "validate_document"]


def validate_document(
    doc: Document, base_dir: Path, environ: Mapping[str, str] | None = None, source: str = ""
) -> GatewayConfig:
    """Validate an already parsed document (relative paths start at ``base_dir``)."""
    env = os.environ if environ is None else environ
    context = {"base_dir": base_dir, "credentials_dir": env.get("CREDENTIALS_DIRECTORY", ""),
               SHARED: {}}
    problems: list[Problem] = list(doc.problems)
    config: GatewayConfig | None = None
    if doc.data is None:
        problems.append(Problem("", 1, "the file is empty",
                                "start from an example in configs/ (see docs/config.md)"))
    elif not isinstance(doc.data, dict):
        problems.append(Problem("", doc.line_of(()), "the top level must be a mapping of keys",
                                "start with `site:` (see docs/config.md)"))
    else:
        try:
            config = GatewayConfig.model_validate(doc.data, context=context)
        except ValidationError as exc:
            problems += translate(GatewayConfig, doc, exc)
        problems += cross_check(doc)
    if problems or config is None:
        raise ConfigError(problems, source)
    return config


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """The validated configuration in ``path``, or :class:`ConfigError` listing every problem.

    ``environ`` (default ``os.environ``) supplies ``$CREDENTIALS_DIRECTORY`` for
    ``{credential: NAME}`` secret sources.
    """
    path = Path(path)
    doc = read_yaml(path)
    return validate_document(doc, path.resolve().parent, environ, str(path))
