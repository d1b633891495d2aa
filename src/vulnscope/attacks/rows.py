"""Per-sample attack state whose rows shrink as samples finish."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import TYPE_CHECKING, TypeVar

from torch import Tensor

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["keep_rows"]

State = TypeVar("State", bound="DataclassInstance")


def keep_rows(state: State, mask: Tensor) -> State:
    """``state`` with only the rows where ``mask`` (n,) is True, in every tensor field.

    ``state`` is a dataclass whose tensor fields all have one row per sample still
    running (fields that are None stay None).
    """
    rows = mask.nonzero()[:, 0]
    values = {f.name: getattr(state, f.name) for f in fields(state)}
    return replace(
        state, **{k: v.index_select(0, rows) for k, v in values.items() if v is not None}
    )
