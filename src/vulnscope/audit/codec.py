"""Typed results to JSON and back: the one place the audit turns dataclasses into strings.

Stage results and pieces are frozen dataclasses whose fields are JSON's own kinds (``int``,
``float``, ``str``, ``bool``, ``None``), lists, tuples, string-keyed dicts and other such
dataclasses. :func:`to_json` writes one as the dict ``results.json`` and the checkpoint
hold; :func:`from_json` reads it back into the same type, guided by the type hints (a type
with its own ``to_json``/``from_json`` methods reads and writes itself), so a
piece that went through a checkpoint equals the one that did not (Python writes floats
with enough digits to read back exactly). A field whose metadata says
``{"json": False}`` stays in memory only and comes back as its default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, TypeVar

from vulnscope.errors import DataError

__all__ = ["IN_MEMORY", "from_json", "to_json"]

T = TypeVar("T")

IN_MEMORY: Mapping[str, Any] = types.MappingProxyType({"json": False})
"""``dataclasses.field(metadata=IN_MEMORY)``: a field that is never written to JSON."""


def _written(field: dataclasses.Field[Any]) -> bool:
    return bool(field.metadata.get("json", True))


def to_json(value: Any) -> Any:
    """``value`` as JSON-ready lists, dicts and scalars (dataclasses by field, in order).

    A value with its own ``to_json()`` method (the evaluation's pieces, say) writes itself.
    """
    if callable(getattr(value, "to_json", None)) and not isinstance(value, type):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_json(getattr(value, field.name))
            for field in dataclasses.fields(value)
            if _written(field)
        }
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_json(kind: type[T] | Any, data: Any, *, where: str = "record") -> T:
    """``data`` (as :func:`to_json` wrote it) read back as ``kind``.

    Raises:
        DataError: ``data`` does not have the layout of ``kind``; the message names where.

    """
    return typing.cast(T, _read(kind, data, where))


def _read(kind: Any, data: Any, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return data
    if isinstance(kind, type) and callable(getattr(kind, "from_json", None)):
        try:  # a type that reads itself (and names what is wrong in its own words)
            return getattr(kind, "from_json")(data)  # noqa: B009
        except (ValueError, TypeError, KeyError) as error:
            raise DataError(f"{where}: {error}") from None
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(data, Mapping):
            raise DataError(f"{where}: expected an object, got {type(data).__name__}")
        hints, values = _hints(kind), {}
        for field in dataclasses.fields(kind):
            if not field.init or not _written(field):
                continue
            if field.name not in data:
                if field.default is not dataclasses.MISSING or (
                    field.default_factory is not dataclasses.MISSING
                ):
                    continue
                raise DataError(f"{where}: the field {field.name!r} is missing")
            values[field.name] = _read(hints[field.name], data[field.name], f"{where}.{field.name}")
        return kind(**values)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _read(option, data, where)
            except DataError:
                continue
        raise DataError(f"{where}: {data!r} is none of {kind}")
    if origin in (list, Sequence, tuple):
        if not isinstance(data, list | tuple):
            raise DataError(f"{where}: expected a list, got {type(data).__name__}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return tuple(
                _read(a, v, f"{where}[{i}]")
                for i, (a, v) in enumerate(zip(args, data, strict=True))
            )
        item = args[0] if args else Any
        items = [_read(item, value, f"{where}[{index}]") for index, value in enumerate(data)]
        return items if origin is not tuple else tuple(items)
    if origin in (dict, Mapping):
        if not isinstance(data, Mapping):
            raise DataError(f"{where}: expected an object, got {type(data).__name__}")
        item = args[1] if args else Any
        return {str(key): _read(item, value, f"{where}[{key!r}]") for key, value in data.items()}
    if kind is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise DataError(f"{where}: expected a number, got {data!r}")
        return float(data)
    if kind in (int, str, bool):
        if not isinstance(data, kind) or (kind is int and isinstance(data, bool)):
            raise DataError(f"{where}: expected {kind.__name__}, got {data!r}")
        return data
    raise DataError(f"{where}: cannot read a {kind!r} from JSON")
