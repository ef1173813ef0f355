"""Plugin registries: built-ins by name (lazy), plus third-party entry points.

A registry maps a name to an object (a class or factory). Built-ins are listed in
the package's ``__init__`` as ``name -> (module, description)`` so that listing them
imports nothing heavy; the module registers its object with the ``register`` decorator
when it is first imported. Third-party packages add names through the entry-point group
(``viperbench.architectures``, ``viperbench.compressors`` or ``viperbench.tasks``).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable

from bench.errors import UserError


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].strip() if (text or "").strip() else ""


class Registry:
    def __init__(self, kind: str, group: str, builtins: dict[str, tuple[str, str]]):
        self.kind = kind  # "architecture", "compressor", "task"
        self.group = group  # entry-point group
        self._builtins = dict(builtins)
        self._loaded: dict[str, Any] = {}
        self._plugins: dict[str, Any] | None = None

    # --- registration -------------------------------------------------------------
    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: ``@ARCHITECTURES.register("transformer")``."""

        def deco(obj: Any) -> Any:
            self._loaded[name] = obj
            return obj

        return deco

    # --- discovery ----------------------------------------------------------------
    def _entry_points(self) -> dict[str, Any]:
        if self._plugins is None:
            self._plugins = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._plugins

    def names(self) -> list[str]:
        extra = [n for n in list(self._entry_points()) + list(self._loaded) if n not in self._builtins]
        return list(self._builtins) + sorted(set(extra))

    def describe(self) -> dict[str, str]:
        """Name -> one-line description. Built-ins need no import; plugins are loaded."""
        out = {}
        for name in self.names():
            if name in self._builtins:
                out[name] = self._builtins[name][1]
            else:
                try:
                    obj = self.get(name)
                    out[name] = getattr(obj, "description", None) or _first_line(obj.__doc__)
                except Exception as exc:  # a broken plugin must not break `list`
                    out[name] = f"(failed to load: {exc})"
        return out

    def get(self, name: str) -> Any:
        if name in self._loaded:
            return self._loaded[name]
        if name in self._builtins:
            module = self._builtins[name][0]
            importlib.import_module(module)
            if name not in self._loaded:
                raise RuntimeError(f"{module} does not register the {self.kind} {name!r}")
            return self._loaded[name]
        elif name in self._entry_points():
            obj = self._entry_points()[name].load()
        else:
            raise UserError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        self._loaded[name] = obj
        return obj
