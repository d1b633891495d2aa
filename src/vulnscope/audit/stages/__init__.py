"""The audit's built-in stages, one file each, registered in the order they run.

Importing this package registers them in :data:`BUILTIN` order (the order the audit runs
them, and each stage after those it reads); :func:`vulnscope.audit.register_stage` adds more.
"""

from importlib import import_module

__all__ = ["BUILTIN"]

BUILTIN = (
    "linf",
    "l2",
    "certified",
    "minimal",
    "spectra",
    "amplification",
    "dangerous",
    "beyond_lp",
    "explain",
    "detect",
    "rg",
)
"""The built-in stages' modules, in the order they run (each stage is named after its
module, with a hyphen for the underscore: ``beyond_lp.py`` holds ``beyond-lp``)."""

for _module in BUILTIN:
    import_module(f"{__name__}.{_module}")  # each module registers its stage
