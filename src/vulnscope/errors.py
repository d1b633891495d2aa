"""The library's exceptions and warnings.

Every error vulnscope raises on purpose is a :class:`VulnscopeError`, and each one is also
a subclass of the builtin a caller would otherwise catch (``ValueError``, ``TypeError``,
``FileNotFoundError``), so ``except ValueError`` keeps working. The command line turns any
:class:`VulnscopeError` into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "MissingFileError",
    "ModelError",
    "SingularMatrixError",
    "VulnscopeError",
    "VulnscopeWarning",
]


class VulnscopeError(Exception):
    """Base class of every error vulnscope raises on purpose."""


class InvalidArgumentError(VulnscopeError, ValueError):
    """An argument has the right type but a wrong value, shape or range."""


class InvalidTypeError(VulnscopeError, TypeError):
    """An argument has the wrong type or dtype."""


class MissingFileError(VulnscopeError, FileNotFoundError):
    """A file named by the user does not exist."""


class DataError(VulnscopeError, ValueError):
    """A data file exists but cannot be read as the data set it claims to be."""


class ModelError(VulnscopeError, ValueError):
    """A model cannot be built, loaded, or called as a classifier."""


class SingularMatrixError(VulnscopeError, ArithmeticError):
    """A linear system is singular or too ill-conditioned to solve reliably.

    Attributes:
        condition_number: the 2-norm condition number of the matrix (``inf`` if singular).

    """

    def __init__(self, message: str, condition_number: float) -> None:
        super().__init__(message)
        self.condition_number = condition_number


class VulnscopeWarning(UserWarning):
    """Something suspicious that does not stop the run (gradient masking, training mode...)."""
