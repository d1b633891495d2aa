"""Data sets: the embedded digits, installed well-known sets, and loaders for files.

The embedded 8x8 digits; MNIST, Fashion-MNIST and CIFAR-10 read from files installed on
the machine; loaders for IDX, ``.npz``, CIFAR-10 batches and image folders. Nothing here
downloads anything.
"""

from vulnscope.data.cifar import CIFAR10_CLASSES, load_cifar10_binary
from vulnscope.data.dataset import ImageData
from vulnscope.data.digits import DIGITS_TEST_SIZE, load_digits
from vulnscope.data.idx import load_idx, read_idx
from vulnscope.data.image_folder import IMAGE_EXTENSIONS, load_image_folder
from vulnscope.data.installed import (
    DATA_DIR_ENV,
    FASHION_MNIST_CLASSES,
    INSTALLED_DATASETS,
    SEARCH_PATH,
    data_dirs,
    known_dataset,
    load_installed,
)
from vulnscope.data.npz import load_npz
from vulnscope.data.resolve import load_data

__all__ = [
    "CIFAR10_CLASSES",
    "DATA_DIR_ENV",
    "DIGITS_TEST_SIZE",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "INSTALLED_DATASETS",
    "SEARCH_PATH",
    "ImageData",
    "data_dirs",
    "known_dataset",
    "load_cifar10_binary",
    "load_data",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "load_installed",
    "load_npz",
    "read_idx",
]
