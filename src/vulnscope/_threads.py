"""Run a computation under a fixed number of intra-op threads, whatever the machine has.

PyTorch's CPU kernels split a reduction (a convolution's weight gradient, a matrix
product's sum) among its intra-op threads, and floating-point sums taken in another
order round differently: the same training run on 1, 2 or 16 cores ends with weights
that differ in the last bits, and after thirty epochs in the figures an audit prints.
Training an embedded reference model under :func:`fixed_threads` makes its weights the
same on every machine with the same CPU kernels, at any ``torch.set_num_threads``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from vulnscope._validation import check_int

__all__ = ["REFERENCE_THREADS", "fixed_threads"]

REFERENCE_THREADS = 1
"""Intra-op threads of every embedded model's training: one thread sums in one order on
any machine, and these small networks lose nothing by it. Measured on the 2-core CI
machine (busy), the digits CNN's 30 epochs: 7.3 s on one thread against 61 s on two; 9.3 s
pinned against 221 s unpinned on two, under a load of 10."""


@contextmanager
def fixed_threads(count: int = REFERENCE_THREADS) -> Iterator[None]:
    """Within the block, PyTorch uses ``count`` intra-op threads; the previous number after.

    Args:
        count: intra-op threads (>= 1).

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with fixed_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True

    """
    count = check_int(count, "count")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
