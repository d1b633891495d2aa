"""The library's exceptions and warnings.

Every error vulnscope raises on purpose is a :class:`VulnscopeError`, and each one is also
a subclass of the builtin a caller would otherwise catch (``ValueError``, ``TypeError``,
``FileNotFoundError``, ``ConnectionError``...), so ``except ValueError`` keeps working.
The command line turns any :class:`VulnscopeError` into one line on stderr and a non-zero
exit.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DataError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "MissingFileError",
    "ModelError",
    "PeerLostError",
    "PluginError",
    "SingularMatrixError",
    "VulnscopeError",
    "VulnscopeWarning",
    "WorkerFailedError",
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


class CheckpointError(VulnscopeError, ValueError):
    """A checkpoint that cannot be resumed: made with other settings, or a damaged file.

    A ``ValueError`` like :class:`DataError`: the files are there, but what they hold does
    not fit the run asked for (settings that differ from the given ones, or JSON that does
    not parse, which :mod:`json` itself reports as a ``ValueError``).
    """


class WorkerFailedError(VulnscopeError, ChildProcessError):
    """A worker process stopped with an error or a signal; the others were stopped.

    A ``ChildProcessError``: the failure is that of a child process this one started
    (:func:`vulnscope.launch.run_local_workers`), reported with its rank and its cause.
    """


class PeerLostError(VulnscopeError, ConnectionError):
    """Another rank stopped (killed, out of memory, lost machine) before the job ended.

    A ``ConnectionError``: this rank learns of it as a collective whose peer went away
    (the process group's transport reports the connection closed or reset).
    """


class PluginError(VulnscopeError, ImportError):
    """An installed package's audit stage cannot be loaded or registered."""


class VulnscopeWarning(UserWarning):
    """Something suspicious that does not stop the run (gradient masking, training mode...)."""
