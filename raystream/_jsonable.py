"""Values to and from JSON for checkpoints, without pickle.

A checkpoint folder may be writable by others (a shared S3 prefix), so what
is read back from it must never be able to run code. Split payloads are
therefore stored as JSON: JSON's own values, plus tuples, dicts with string
keys and frozen dataclasses. A dataclass is rebuilt only when its class is in
the list the reader allows (a source's ``payload_types``), so a tampered file
can at worst hold wrong values, which the checks around it refuse, never an
object of a type nobody asked for.

The format tags what JSON cannot say on its own::

    [1, 2]                                  a list
    {"tuple": [1, 2]}                       a tuple
    {"dict": {"a": 1}}                      a dict with string keys
    {"type": "_Partition", "fields": {...}} a dataclass of an allowed type
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from raystream.errors import RaystreamError

__all__ = ["JsonableError", "from_json", "to_json"]


class JsonableError(RaystreamError, TypeError):
    """A value cannot be stored as JSON, or stored JSON is not what was written."""


def to_json(value: Any, types: Sequence[type] = (), where: str = "value") -> Any:
    """Encode ``value`` as JSON-able data that :func:`from_json` turns back into an equal value.

    Args:
        value: None, a bool, int, float or string, a list, tuple or dict with
            string keys of such values, or a dataclass instance of one of ``types``.
        types: The dataclasses that may appear.
        where: What the value is, for the error message.

    Raises:
        JsonableError: naming the first part of ``value`` that cannot be stored.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [to_json(v, types, where) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [to_json(v, types, where) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise JsonableError(f"{where}: a dict with keys that are not strings cannot be stored as JSON")
        return {"dict": {k: to_json(v, types, where) for k, v in value.items()}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and type(value) in types:
        fields = {f.name: to_json(getattr(value, f.name), types, where) for f in dataclasses.fields(value)}
        return {"type": type(value).__qualname__, "fields": fields}
    raise JsonableError(
        f"{where}: a {type(value).__qualname__} cannot be stored as JSON; use JSON values, tuples, dicts with "
        "string keys, or a dataclass named in the source's payload_types"
    )


def from_json(data: Any, types: Sequence[type] = (), where: str = "value") -> Any:
    """Decode what :func:`to_json` made; only dataclasses of ``types`` are rebuilt.

    Raises:
        JsonableError: when ``data`` is not in the format, or names a type that is not allowed.
    """
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [from_json(v, types, where) for v in data]
    if isinstance(data, dict):
        if set(data) == {"tuple"} and isinstance(data["tuple"], list):
            return tuple(from_json(v, types, where) for v in data["tuple"])
        if set(data) == {"dict"} and isinstance(data["dict"], dict):
            return {str(k): from_json(v, types, where) for k, v in data["dict"].items()}
        if set(data) == {"type", "fields"} and isinstance(data["fields"], dict):
            allowed = {t.__qualname__: t for t in types}
            cls = allowed.get(data["type"]) if isinstance(data["type"], str) else None
            if cls is None:
                raise JsonableError(f"{where}: type {data['type']!r} is not one that may be stored here")
            names = {f.name for f in dataclasses.fields(cls)}
            if set(data["fields"]) != names:
                raise JsonableError(f"{where}: the fields of {data['type']} are not {', '.join(sorted(names))}")
            return cls(**{k: from_json(v, types, where) for k, v in data["fields"].items()})
    raise JsonableError(f"{where}: {str(data)[:80]!r} is not a stored value")
