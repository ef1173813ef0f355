"""Start-up check: the transformers layer API the harness's own layer loop relies on is there.

The harness calls decoder blocks one by one with the library's cache, so a transformers
release that renames a block's arguments, a cache method or a kernel binding would make
it fail deep inside a pass, or worse, silently run another code path. Each adapter calls
``require`` at import; a mismatch is one line naming what is missing and the tested
version (exit 2 from the CLI).
"""

from __future__ import annotations

import inspect
import types

from bench.errors import UserError

TESTED_TRANSFORMERS = "5.23.0"


def _fail(what: str) -> None:
    import transformers

    raise UserError(f"transformers {transformers.__version__} lacks {what}, which viperbench's layer loop calls; "
                    f"viperbench is tested with transformers=={TESTED_TRANSFORMERS}")


def require(module: types.ModuleType, *, block: str, params: tuple[str, ...] = (), globals_: tuple[str, ...] = (),
            cache_methods: tuple[str, ...] = ()) -> None:
    """Check that ``module.block.forward`` takes ``params``, the module defines ``globals_``, and
    ``DynamicCache`` has ``cache_methods``."""
    from transformers import DynamicCache

    cls = getattr(module, block, None)
    if cls is None:
        _fail(f"{module.__name__}.{block}")
    accepted = inspect.signature(cls.forward).parameters
    for name in params:
        if name not in accepted:
            _fail(f"the {name!r} argument of {block}.forward")
    for name in globals_:
        if not hasattr(module, name):
            _fail(f"{module.__name__}.{name}")
    for name in cache_methods:
        if not hasattr(DynamicCache, name):
            _fail(f"DynamicCache.{name}")
