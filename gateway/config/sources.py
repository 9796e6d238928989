"""Where a private key comes from: a file, or a systemd credential. Never the YAML itself.

A secret written inline (``private_key: "base64..."``) is refused: configuration files get
copied, diffed, pasted into tickets and backed up; key files and credentials have their own
protection. The error says where the inline secret is, never what it is.

Systemd credentials (``LoadCredential=`` / ``LoadCredentialEncrypted=``) appear as files in
``$CREDENTIALS_DIRECTORY``; they are resolved at load time so a missing one is reported by
``check-config`` rather than discovered at the first rekey.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationInfo, model_validator

from gateway.config.errors import looks_like_key
from gateway.config.fields import PASTED, check_readable, fail, resolve_path

__all__ = ["GeneratedKey", "SecretSource"]

_FIX = "put the key in a file and write {file: PATH}, or use {credential: NAME} under systemd"


class SecretSource(BaseModel):
    """Exactly one of ``file`` (relative to the config file) or ``credential`` (a systemd
    credential name). After loading, :attr:`path` is the resolved file to read the key from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Path | None = None
    credential: str | None = None
    _path: Path = PrivateAttr(default=Path())
    _missing_fix: ClassVar[str] = "check the path (relative paths start at this file's folder)"

    @property
    def path(self) -> Path:
        """The file holding the key (checked to exist and be readable at load time)."""
        return self._path

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, data: Any) -> Any:
        if isinstance(data, str | bytes | int | float):
            raise fail("inline_secret", "a secret must not be written into the configuration",
                       _FIX)
        if not isinstance(data, dict):
            raise fail("secret_source", "expected {file: PATH} or {credential: NAME}", _FIX)
        return data

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> SecretSource:
        context = info.context if isinstance(info.context, dict) else {}
        if (self.file is None) == (self.credential is None):
            raise fail("secret_source", "give exactly one of 'file' or 'credential'", _FIX)
        if self.file is not None:
            base = Path(context.get("base_dir", Path.cwd()))
            path = resolve_path(self.file, base)
            field = "file"
            if check_readable(path) and looks_like_key(str(self.file)):
                # A key pasted as the path: every other message here would quote it.
                raise fail("inline_secret", PASTED, _FIX, field)
        else:
            assert self.credential is not None
            field = "credential"
            creds = context.get("credentials_dir")
            if looks_like_key(self.credential) and not (
                    creds and (Path(creds) / self.credential).is_file()):
                raise fail("inline_secret", "no such credential, and this looks like key "
                           "material rather than a name (not shown)", _FIX, field)
            if "/" in self.credential or self.credential in ("", ".", ".."):
                raise fail("credential", "a credential name cannot contain '/'",
                           "use the name given to LoadCredential=NAME:PATH", field)
            creds = context.get("credentials_dir")
            if not creds:
                raise fail("credential",
                           f"credential '{self.credential}' needs $CREDENTIALS_DIRECTORY, "
                           "which is not set",
                           f"run under systemd with LoadCredential={self.credential}:PATH, "
                           "or use {file: PATH}", field)
            path = Path(creds) / self.credential
        reason = check_readable(path)
        if reason:
            raise fail("file", reason, self._missing_fix, field)
        if field == "file":
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                # Same rule as ssh: a private key others can read is already compromised.
                raise fail("key_mode",
                           f"private key file {path} is readable by others (mode {mode:04o})",
                           f"run chmod 600 {path}", field)
        self._path = path
        return self


class GeneratedKey(SecretSource):
    """A private key that `qkd-gateway keygen` writes (identity or WireGuard)."""

    _missing_fix: ClassVar[str] = (
        "write it with `qkd-gateway keygen` (add --wireguard for a WireGuard key), or fix the "
        "path (relative paths start at this file's folder)"
    )


def credentials_dir(environ: dict[str, str] | None = None) -> str:
    """``$CREDENTIALS_DIRECTORY`` as systemd sets it, or empty."""
    env = os.environ if environ is None else environ
    return env.get("CREDENTIALS_DIRECTORY", "")
