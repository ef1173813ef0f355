"""The compressor interface: three hook points, all no-ops by default.

1. ``in_tower``: inside the vision tower, per frame (e.g. STC-Cacher); the vision side
   asks ``wants_tower_hook`` first.
2. ``after_projector``: on the projected vision tokens, before the LLM (e.g. a pruner).
3. ``before_layer``: before LLM layer i on the whole prefill sequence (a
   ``bench.pipeline.TokenState``), for the layers in ``llm_layers``; it may shorten the
   sequence, keeping hidden states, positions and the vision span consistent.

Each compressor reports what it did (tokens kept per stage, parameters added, its own
time) through ``report``, which the runner puts in the record.
"""

from __future__ import annotations

from typing import Any

from bench.errors import UserError
from compressors import COMPRESSORS, register_compressor


class Compressor:
    name = "none"
    params: dict[str, Any] = {}  # accepted keys -> default values

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(self.params))
        if unknown:
            valid = ", ".join(self.params) or "none"
            raise UserError(f"compressor {self.name!r} has no key {unknown[0]!r}; valid keys: {valid}")
        self.settings = {**self.params, **kwargs}

    # hook 1: vision tower
    wants_tower_hook = False

    # hook 2: after the projector; vision tokens [batch, tokens, hidden]
    def after_projector(self, vision: Any) -> Any:
        return vision

    # hook 3: before LLM layers
    def llm_layers(self, backbone) -> frozenset[int]:
        return frozenset()

    def before_layer(self, i: int, state, backbone, cache) -> None:
        pass

    def check(self, backbone) -> None:
        """Raise UserError if this compressor cannot act on ``backbone`` as configured."""

    def report(self) -> dict[str, Any]:
        return {"added_params": 0, "stages": []}

    def __repr__(self) -> str:
        return format_spec(self.name, self.settings)


register_compressor("none")(Compressor)


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=value,key=value"`` -> (name, {key: value}); numbers are parsed."""
    name, _, rest = spec.strip().partition(":")
    if not name:
        raise UserError(f"malformed compressor spec {spec!r}: expected name[:key=value,...]")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise UserError(f"malformed compressor spec {spec!r}: {item!r} is not key=value")
        kwargs[key.strip()] = _parse_value(value.strip())
    return name, kwargs


def format_spec(name: str, settings: dict[str, Any]) -> str:
    return name + (":" + ",".join(f"{k}={v}" for k, v in settings.items()) if settings else "")


def make_compressor(spec: str) -> Compressor:
    name, kwargs = parse_spec(spec)
    return COMPRESSORS.get(name)(**kwargs)
