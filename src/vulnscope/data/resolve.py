"""Turn a data specification from the command line into an :class:`ImageData`."""

from __future__ import annotations

from vulnscope.data.dataset import ImageData
from vulnscope.data.digits import load_digits
from vulnscope.data.idx import load_idx
from vulnscope.data.npz import load_npz
from vulnscope.errors import InvalidArgumentError

__all__ = ["load_data"]


def load_data(spec: str, *, seed: int = 0) -> ImageData:
    """Load the data set a specification names.

    Args:
        spec: ``"digits"`` (the embedded test split), ``"digits:train"``,
            ``"digits:all"``, a path to an ``.npz`` archive holding arrays ``x`` and
            ``y``, or ``"IMAGES,LABELS"``: two IDX files (plain or gzipped).
        seed: seed of the digits train/test split.

    Returns:
        :class:`ImageData`.

    """
    if spec == "digits" or spec.startswith("digits:"):
        split = spec.partition(":")[2] or "test"
        return load_digits(split, seed=seed)  # type: ignore[arg-type]
    if "," in spec:
        images, _, labels = spec.partition(",")
        return load_idx(images, labels)
    if spec.endswith(".npz"):
        return load_npz(spec)
    raise InvalidArgumentError(
        f"data must be 'digits', 'digits:train', an .npz file, or 'IMAGES,LABELS' IDX files, "
        f"got {spec!r}"
    )
