"""Typed conversion between frame dataclasses and msgpack maps, compiled once per class.

:func:`compile_classes` reads the type hints of each dataclass (and of every
dataclass its fields name) once, and builds two closures per class:

* a **reader** ``(value) -> instance`` that checks every field exactly as the
  wire contract says: ``int`` (not ``bool``), ``bool``, ``str``, ``bytes``,
  ``list[X]``, ``X | None``, nested dataclasses; unknown extra keys are
  ignored; a missing field without a default is an error;
* a **writer** ``(instance) -> dict`` that omits ``None`` fields.

So no typing introspection happens per frame: a field costs a dict lookup and a
type check (a closure call only for nested and container values). A mismatch
raises :class:`FieldError`, whose ``path`` (``recipients[0].copies[1].body``)
is assembled only on that error path. Pure Python, no I/O.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

Reader = Callable[[Any], Any]
Writer = Callable[[Any], Any]

_WANT = {int: "int", bool: "bool", str: "str", bytes: "bin"}


class FieldError(Exception):
    """A decoded value does not fit its declared field type.

    Attributes:
        want: what was expected (``"int"``, ``"array"``, ``"map"``, ...), or
            ``None`` when the field is missing.
        got: the type name of the value found (``""`` when missing).
    """

    def __init__(self, want: str | None, got: str, part: str = "") -> None:
        super().__init__(want, got)
        self.want = want
        self.got = got
        self._parts = [part] if part else []  # innermost first

    def within(self, part: str) -> FieldError:
        """Record that the failing value sits under ``part`` (``".name"`` or ``"[i]"``)."""
        self._parts.append(part)
        return self

    @property
    def path(self) -> str:
        """The dotted path of the failing field, e.g. ``recipients[0].user_id``."""
        return "".join(reversed(self._parts)).lstrip(".")


def _mismatch(want: str, value: Any) -> FieldError:
    return FieldError(want, type(value).__name__)


def _primitive_reader(tp: type) -> Reader:
    want = _WANT[tp]
    if tp is int or tp is bool:  # exact: bool is an int subclass, and not an int here
        def read_exact(value: Any) -> Any:
            if type(value) is tp:
                return value
            raise _mismatch(want, value)
        return read_exact

    def read_instance(value: Any) -> Any:
        if isinstance(value, tp):
            return value
        raise _mismatch(want, value)
    return read_instance


def _list_reader(inner_tp: Any, inner: Reader) -> Reader:
    if inner_tp in _WANT:
        exact = inner_tp if inner_tp in (int, bool) else None

        def read_primitives(value: Any) -> list:
            if not isinstance(value, list):
                raise _mismatch("array", value)
            for v in value:  # a plain loop: most lists here hold one or a few items
                if type(v) is not exact and (exact is not None or not isinstance(v, inner_tp)):
                    _locate(value, inner)
            return list(value)
        return read_primitives

    def read_list(value: Any) -> list:
        if not isinstance(value, list):
            raise _mismatch("array", value)
        try:
            return [inner(v) for v in value]
        except FieldError:
            _locate(value, inner)
            raise
    return read_list


def _locate(values: list, inner: Reader) -> None:
    """Error path only: raise the element's error with its index in the path."""
    for i, v in enumerate(values):
        try:
            inner(v)
        except FieldError as exc:
            raise exc.within(f"[{i}]") from None


def _optional_reader(inner: Reader) -> Reader:
    def read_optional(value: Any) -> Any:
        return None if value is None else inner(value)
    return read_optional


class _Compiler:
    """Builds and memoises the reader and writer of each dataclass it meets."""

    def __init__(self) -> None:
        self.readers: dict[type, Reader] = {}
        self.writers: dict[type, Writer] = {}

    def reader_for(self, tp: Any) -> Reader:
        origin = typing.get_origin(tp)
        if origin is types.UnionType or origin is typing.Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1 or type(None) not in typing.get_args(tp):
                raise TypeError(f"only X | None unions are supported, not {tp!r}")
            return _optional_reader(self.reader_for(args[0]))
        if origin is list:
            (inner,) = typing.get_args(tp)
            return _list_reader(inner, self.reader_for(inner))
        if dataclasses.is_dataclass(tp):
            self.add(tp)
            return self.readers[tp]
        if tp in _WANT:
            return _primitive_reader(tp)
        raise TypeError(f"unsupported field type {tp!r}")

    def writer_for(self, tp: Any) -> Writer | None:
        """``None`` when values of ``tp`` go on the wire as they are."""
        origin = typing.get_origin(tp)
        if origin is types.UnionType or origin is typing.Union:
            (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
            return self.writer_for(inner)  # None values never reach a writer
        if origin is list:
            (inner_tp,) = typing.get_args(tp)
            inner = self.writer_for(inner_tp)
            if inner is None:
                return None
            return lambda values: [inner(v) for v in values]
        if dataclasses.is_dataclass(tp):
            self.add(tp)
            return self.writers[tp]
        return None

    def add(self, cls: type) -> None:
        if cls in self.readers:
            return
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.init]
        # (name, ".name", exact type for the inline check or None, reader, default maker)
        read_specs = []
        for f in fields:
            tp = hints[f.name]
            fast = tp if tp in _WANT else None
            if f.default is not dataclasses.MISSING:
                default: Callable[[], Any] | None = _constant(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory
            else:
                default = None
            read_specs.append((f.name, "." + f.name, fast, self.reader_for(tp), default))
        write_specs = tuple((f.name, self.writer_for(hints[f.name])) for f in fields)
        self.readers[cls] = _dataclass_reader(cls, tuple(read_specs))
        self.writers[cls] = _dataclass_writer(cls, write_specs)


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


_MISSING = object()


def _dataclass_reader(cls: type, specs: tuple) -> Reader:
    def read_dataclass(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _mismatch("map", value)
        args = []  # positional, in field order: cheaper than keywords
        for name, part, fast, reader, default in specs:
            v = value.get(name, _MISSING)
            if type(v) is fast:
                args.append(v)
            elif v is _MISSING:
                if default is None:
                    raise FieldError(None, "", part)
                args.append(default())
            else:
                try:
                    args.append(reader(v))
                except FieldError as exc:
                    raise exc.within(part) from None
        return cls(*args)
    return read_dataclass


def _dataclass_writer(cls: type, specs: tuple) -> Writer:
    def write_dataclass(obj: Any) -> Any:
        if type(obj) is not cls:
            return plain(obj)  # not what the hint says: convert it generically
        out = {}
        for name, writer in specs:
            v = getattr(obj, name)
            if v is not None:
                out[name] = v if writer is None else writer(v)
        return out
    return write_dataclass


def plain(value: Any) -> Any:
    """Generic, uncompiled conversion of a dataclass (or list of them) to plain maps."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None
        }
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def compile_classes(classes: Iterable[type]) -> tuple[dict[type, Reader], dict[type, Writer]]:
    """Compile the reader and writer of every class in ``classes`` and of the
    dataclasses their fields name.

    Returns:
        ``(readers, writers)``: dicts from class to closure. A reader takes a
        decoded map and returns the instance or raises :class:`FieldError`; a
        writer takes an instance and returns its map without ``None`` fields.

    Raises:
        TypeError: a field type outside the supported set (a bug in a frame declaration).
    """
    compiler = _Compiler()
    for cls in classes:
        compiler.add(cls)
    return compiler.readers, compiler.writers
