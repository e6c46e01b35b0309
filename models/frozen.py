"""Copies and instances of the product's frozen models without pydantic's general paths.

The fold derives several states from each state per event (order recorded, instant moved,
segment decided). ``model_copy`` goes through ``copy.copy`` of every attribute dictionary and
checks for extra fields and private attributes, which none of these models have; ``evolve``
does what it does for such a model, and skips that work. ``build`` makes a model of values
the fold computed itself (figures, scores, causes, transitions, new states), already of the
fields' types, without validating them again. The unit tests check that both give equal
models with the same set fields as pydantic's own paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

M = TypeVar("M", bound=BaseModel)

_set = object.__setattr__


def evolve(model: M, /, **update: Any) -> M:
    """``model.model_copy(update=update)``: the values are not validated (the caller's own,
    of the fields' types); the model may have no extra fields and no private attributes."""
    cls = type(model)
    new = cls.__new__(cls)
    _set(new, "__dict__", {**model.__dict__, **update})
    _set(new, "__pydantic_fields_set__", model.__pydantic_fields_set__ | update.keys())
    _set(new, "__pydantic_extra__", None)
    _set(new, "__pydantic_private__", None)
    return new


class _Fields:
    """What ``build`` needs of a model class: every field in order with its default (required
    fields with none), the fields filled by a factory, the required fields."""

    __slots__ = ("defaults", "factories", "required")

    def __init__(self, cls: type[BaseModel]) -> None:
        self.defaults: dict[str, Any] = {}
        self.factories: list[tuple[str, Callable[[], Any]]] = []
        self.required: list[str] = []
        for name, info in cls.model_fields.items():
            self.defaults[name] = None if info.default is PydanticUndefined else info.default
            if info.default_factory is not None:
                self.factories.append((name, info.default_factory))  # type: ignore[arg-type]
            elif info.is_required():
                self.required.append(name)


_FIELDS: dict[type[BaseModel], _Fields] = {}


def build(cls: type[M], /, **values: Any) -> M:
    """``cls(**values)`` without validation: the values are the caller's own, already of the
    fields' types (as validation would leave them: tuples, not lists; floats, not ints); the
    model may have no extra fields, no private attributes and no validators that change a
    value. Raises ``TypeError`` for a missing required field."""
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = _Fields(cls)
    for name in fields.required:
        if name not in values:
            raise TypeError(f"{cls.__name__} needs {name}")
    data = {**fields.defaults, **values}
    for name, factory in fields.factories:
        if name not in values:
            data[name] = factory()
    new = cls.__new__(cls)
    _set(new, "__dict__", data)
    _set(new, "__pydantic_fields_set__", set(values))
    _set(new, "__pydantic_extra__", None)
    _set(new, "__pydantic_private__", None)
    return new
