"""viperbench's cache directory: measured device peaks, generated evaluation sets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """viperbench's cache: $VIPERBENCH_CACHE_DIR, else $XDG_CACHE_HOME/viperbench, else ~/.cache/viperbench."""
    base = os.environ.get("VIPERBENCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "viperbench")
    return Path(base)
