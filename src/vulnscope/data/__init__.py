"""Data sets: the embedded 8x8 digits, and loaders for IDX, ``.npz`` and image folders.

Nothing here downloads anything.
"""

from vulnscope.data.dataset import ImageData
from vulnscope.data.digits import DIGITS_TEST_SIZE, load_digits
from vulnscope.data.idx import load_idx, read_idx
from vulnscope.data.image_folder import IMAGE_EXTENSIONS, load_image_folder
from vulnscope.data.npz import load_npz
from vulnscope.data.resolve import load_data

__all__ = [
    "DIGITS_TEST_SIZE",
    "IMAGE_EXTENSIONS",
    "ImageData",
    "load_data",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "load_npz",
    "read_idx",
]
