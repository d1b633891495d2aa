"""Progress of a long audit: a tqdm bar per stage, advanced chunk by chunk."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["StageProgress"]


class StageProgress:
    """Progress bars on stderr, one per stage.

    Args:
        enabled: ``True`` always draws, ``False`` never, ``None`` only when stderr is a
            terminal (so logs and CI output stay clean).

    """

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = enabled

    @contextmanager
    def stage(self, description: str, total: int) -> Iterator[Any]:
        """A bar of ``total`` steps for one stage; call ``.update(1)`` after each step."""
        from tqdm.auto import tqdm

        disable = None if self.enabled is None else not self.enabled
        with tqdm(
            total=total,
            desc=description,
            unit="step",
            file=sys.stderr,
            disable=disable,
            leave=True,
            dynamic_ncols=True,
            mininterval=0,
        ) as bar:
            yield bar
