"""Mangled files: only ever a ConfigError (never a traceback), always with a located problem,
never quoting a private key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, load_config
from tests.config.sitefiles import BASE, assert_no_secrets

pytestmark = pytest.mark.fuzz

LINES = BASE.splitlines(keepends=True)
JUNK = st.sampled_from(["", "x", "5x", "-1", "[", "]", "{", ": :", "null", "yes", "0.5",
                        "'quoted'", "[a, b]", "{file: nope}", "999999", "\t", "- item", "&a", "*a",
                        "!!binary AAAA", "2001:db8::1", "10.0.0.0/33", "!!int x", "!!float x",
                        "!!timestamp x", "!!bool x", "!foo [1]", "!!python/name:os.system",
                        "&b [*b]", "*undefined", "2024-13-45", "0", "0x10", "yes"])


@st.composite
def mangled(draw: st.DrawFn) -> str:
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "value", "indent", "append"]))
        if action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "value" and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {draw(JUNK)}\n"
        elif action == "indent":
            lines[i] = " " + lines[i]
        else:
            lines[i] = lines[i].rstrip("\n") + draw(JUNK) + "\n"
        if not lines:
            break
    return "".join(lines)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mangled())
def test_mangled_file_is_reported_not_crashed(
    write_config: Callable[[str], Path], site_dir: Path, text: str
) -> None:
    try:
        load_config(write_config(text))
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.line > 0, problem
            assert problem.message
        assert_no_secrets(str(exc), [site_dir])
