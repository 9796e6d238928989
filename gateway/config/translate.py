"""Pydantic's validation errors, said in an operator's words with a fix, at the right line.

Pydantic reports a location tuple (``('tunnels', 1, 'rekey_interval')``) and a message written
for programmers. Here each error class gets a sentence and a fix; our own validators already
raise ``cfg_*`` errors that carry both. A quoted value is quoted as the operator wrote it
(``yes``, not ``True``). Input values are quoted only for scalar type errors
(names, numbers, choices): mappings and text given where a mapping belongs are described, not
quoted, because that is exactly where a pasted secret would be.
"""

from __future__ import annotations

import difflib
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from gateway.config.errors import Problem, render_path, show
from gateway.config.loader import Document, Loc

__all__ = ["translate"]


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc``, to list its allowed keys."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            if get_origin(tp) is not list:
                return None
            tp = get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"yes/no value {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return f"the number {value}"
    return "text"


_TYPE_ERRORS = {
    # pydantic type -> (what was expected, how to fix)
    "int_type": ("a whole number", "write e.g. 64"),
    "int_parsing": ("a whole number", "write e.g. 64"),
    "int_from_float": ("a whole number", "write e.g. 64"),
    "float_type": ("a number", "write e.g. 1.5"),
    "float_parsing": ("a number", "write e.g. 1.5"),
    "bool_type": ("true or false", "write true or false"),
    "bool_parsing": ("true or false", "write true or false"),
    "string_type": ("text", "put the value in quotes"),
    "path_type": ("a file path", "write a path, e.g. ../keys/site/ed25519.key"),
    "list_type": ("a list", "write [a, b] or one '- item' per line"),
    "model_type": ("a mapping", "write indented key: value lines below this key"),
    "model_attributes_type": ("a mapping", "write indented key: value lines below this key"),
    "dict_type": ("a mapping", "write indented key: value lines below this key"),
}

_LIMITS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}


def _one(root: type[BaseModel], doc: Document, err: Any) -> Problem:
    loc: Loc = tuple(err["loc"])
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    message, fix = str(err["msg"]), ""
    if kind.startswith("cfg_"):
        message, fix = str(ctx["message"]), str(ctx["fix"])
        if ctx.get("field"):
            loc = (*loc, str(ctx["field"]))
        elif value is None:
            message = "has no value"  # `key:` with nothing after it reads as null
    elif kind == "missing":
        message, fix = "required key is missing", f"add {loc[-1]}: (see docs/config.md)"
    elif kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        allowed = list(model.model_fields) if model else []
        message = f"unknown key {show(loc[-1])}"
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        fix = f"did you mean '{close[0]}'? " if close else ""
        fix += f"allowed here: {', '.join(allowed)}" if allowed else "remove it"
    elif kind in _TYPE_ERRORS:
        expected, fix = _TYPE_ERRORS[kind]
        if value is None:
            message, fix = "has no value", f"write {expected} after the ':'"
        elif kind.startswith(("int", "float", "bool")) and not isinstance(value, dict | list):
            message = f"{show(value)} is not {expected}"
        else:
            message = f"expected {expected}, found {_describe(value)}"
    elif kind == "literal_error":
        message = f"{show(value)} is not a valid choice"
        fix = f"write one of: {ctx.get('expected', '')}"
    elif kind in _LIMITS:
        key, words = _LIMITS[kind]
        message, fix = f"{show(value)} is too {'small' if 'greater' in kind else 'large'}", \
            f"write a number {words} {ctx.get(key)}"
    elif kind == "too_short":
        message, fix = "the list is empty", "add at least one entry"
    elif kind == "string_too_short":
        message, fix = "must not be empty", "write a value"
    # Quote the value as written: `rekey_interval: yes` is "'yes' is not a duration", since
    # 'True' is a word the operator never typed.
    raw = doc.raw.get(tuple(err["loc"]))
    if raw is not None and not isinstance(value, dict | list):
        message = message.replace(show(value), show(raw), 1)
    return Problem(render_path(loc), doc.line_of(loc), message, fix)


def translate(root: type[BaseModel], doc: Document, exc: ValidationError) -> list[Problem]:
    """One :class:`Problem` per pydantic error, duplicates removed."""
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        problem = _one(root, doc, err)
        if problem not in out:
            out.append(problem)
    return out
