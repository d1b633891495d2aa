"""Where vulnscope caches what it trains, and how a training recipe names its file.

Shared by :mod:`vulnscope.models` (reference classifiers) and :mod:`vulnscope.rbm` (deep
RBMs); :mod:`vulnscope.models.cache` re-exports the public names.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = ["CACHE_ENV", "cache_dir", "recipe_digest"]

CACHE_ENV = "VULNSCOPE_CACHE_DIR"
"""Environment variable that overrides the cache directory."""


def recipe_digest(recipe: Any) -> str:
    """12 hex digits of a hash of every field of a recipe dataclass (part of a cache key)."""
    return hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """``$VULNSCOPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/vulnscope``, else ``~/.cache/vulnscope``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vulnscope"
