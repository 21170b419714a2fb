"""Frozen slots dataclasses built without their generated ``__init__``, for the replay's hot path.

A frozen dataclass's ``__init__`` stores each field through ``object.__setattr__`` (its own
``__setattr__`` refuses), about 75 ns a field: the replay builds an ``Observation`` (17 fields)
and a ``RigView`` per cohort and tick, about a tenth of its time. With slots, each field is a
slot whose descriptor stores it directly; the functions made here take a new instance
(``object.__new__``) and fill every slot through those descriptors: the same object, about half
the cost. Only for classes whose ``__init__`` does nothing else (no ``__post_init__``, every
field an ``__init__`` argument): checked when made, equal objects tested
(tests/test_backtest_fast.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _slot_fields(cls: type[Any]) -> list[str]:
    """The fields of ``cls``, which must be a frozen slots dataclass built by its fields alone."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen slots dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__: build it with its __init__")
    fields = dataclasses.fields(cls)
    if not all(f.init for f in fields):
        raise TypeError(f"{cls.__name__} has fields its __init__ does not take")
    return [f.name for f in fields]


def _compile(cls: type[Any], name: str, args: str, values: dict[str, str]) -> Callable[..., Any]:
    names = list(values)
    lines = [f"def {name}({args}):", "    new = _new(_cls)"]
    lines += [f"    _set_{n}(new, {values[n]})" for n in names]
    lines.append("    return new")
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    scope.update({f"_set_{n}": cls.__dict__[n].__set__ for n in names})
    exec("\n".join(lines), scope)  # the source is built from the fields' names alone
    made: Callable[..., Any] = scope[name]
    return made


def maker(cls: type[T]) -> Callable[..., T]:
    """``cls(*values)``, every field given positionally in the fields' order."""
    fields = _slot_fields(cls)
    return _compile(cls, "make", ", ".join(fields), {n: n for n in fields})


def replacer(cls: type[T], field: str) -> Callable[[T, Any], T]:
    """``dataclasses.replace(obj, **{field: value})`` as ``(obj, value)``."""
    fields = _slot_fields(cls)
    if field not in fields:
        raise TypeError(f"{cls.__name__} has no field {field!r}")
    values = {n: "value" if n == field else f"obj.{n}" for n in fields}
    return _compile(cls, "replace", "obj, value", values)
