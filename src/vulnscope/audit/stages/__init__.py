"""The audit's built-in stages, one file each, registered in the order they run.

Importing this package registers them; :func:`vulnscope.audit.register_stage` adds more.
"""

from vulnscope.audit.stages import (  # noqa: F401  (each module registers its stage)
    amplification,
    dangerous,
    l2,
    linf,
    minimal,
    rg,
    spectra,
)
