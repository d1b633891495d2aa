"""Matplotlib without a display: new figures, and PNG files written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from vulnscope._io import write_bytes_atomic

__all__ = ["new_figure", "save_png"]


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.0, 4.0)) -> Any:
    """``(figure, axes)`` on the Agg backend; ``axes`` is always a 2-D array."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot.subplots(rows, cols, figsize=size, squeeze=False)


def save_png(figure: Any, path: str | Path) -> Path:
    """Lay out ``figure``, write it to ``path`` as a PNG atomically, and close it."""
    from matplotlib import pyplot

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot.close(figure)
    return write_bytes_atomic(path, buffer.getvalue())
