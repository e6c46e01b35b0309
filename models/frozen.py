"""Copies of the product's frozen models without pydantic's general copy path.

The fold derives several states from each state per event (order recorded, instant moved,
segment decided). ``model_copy`` goes through ``copy.copy`` of every attribute dictionary and
checks for extra fields and private attributes, which none of these models have; ``evolve``
does what it does for such a model, and skips that work. The unit tests check that both
give equal models with the same set fields.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

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
