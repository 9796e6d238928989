"""Equal values of many tunnels held once: what a 10,000-tunnel file repeats in every tunnel.

:func:`~gateway.config.load.validate_document` puts an empty table into the validation context
(``context["shared"]``); validators then hand out one object per distinct value instead of a
copy per tunnel:

* :func:`share_fields_set`: a frozen model's set of explicitly given field names (pydantic's
  ``__pydantic_fields_set__``, ~200-730 bytes per model) is the same set for every tunnel
  written the same way. Frozen models never change it (assignment raises first; copies copy
  it), so sharing it is safe;
* :func:`share_value`: an equal frozen sub-model (a tunnel's WireGuard ``private_key``, the
  same file in every tunnel of a hub: two paths, a private dict and a set, ~1.6 KB).

Only identities change: every value, message and check is the same as without the table (a
model validated without it, e.g. in a test, shares nothing).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationInfo

__all__ = ["SHARED", "share_fields_set", "share_value"]

#: The validation context's key of the table.
SHARED = "shared"

_T = TypeVar("_T")


def _table(info: ValidationInfo) -> dict[Any, Any] | None:
    context = info.context
    table = context.get(SHARED) if isinstance(context, dict) else None
    return table if isinstance(table, dict) else None


def share_fields_set(model: BaseModel, info: ValidationInfo) -> None:
    """Replace ``model``'s set of given field names by the table's equal one (frozen models)."""
    table = _table(info)
    if table is None or not model.model_config.get("frozen"):
        return
    given = model.__pydantic_fields_set__
    shared = table.setdefault(("fields_set", type(model), frozenset(given)), given)
    if shared is not given:
        object.__setattr__(model, "__pydantic_fields_set__", shared)


def share_value(value: _T, info: ValidationInfo) -> _T:
    """The table's object equal to ``value`` (a frozen model: same type, fields, private
    attributes and given fields), or ``value`` itself, which then becomes that object."""
    table = _table(info)
    if table is None or not isinstance(value, BaseModel) or not value.model_config.get("frozen"):
        return value
    try:
        key = ("value", type(value), frozenset(value.__pydantic_fields_set__), value,
               tuple(sorted((value.__pydantic_private__ or {}).items())))
        shared: _T = table.setdefault(key, value)
    except TypeError:  # a field that cannot be hashed (a list): not shared
        return value
    return shared
