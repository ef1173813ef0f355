"""The compressor interface: three hook points, all no-ops by default.

1. ``tower_features``: inside the vision tower, on a batch of consecutive frames (e.g.
   STC-Cacher); used when ``wants_tower_hook`` is true.
2. ``after_projector``: on the projected vision tokens [batch, frames, tokens, hidden],
   before the LLM (e.g. STC-Pruner, VisionZip); returns [batch, tokens', hidden].
3. ``before_layer``: before LLM layer i on the whole prefill sequence (a
   ``bench.engine.pipeline.TokenState``), for the layers in ``llm_layers``; it may shorten the
   sequence, keeping hidden states, positions and the vision span consistent.

Each compressor accounts for what it did during a pass (``record``: tokens in and out per
stage, ``timed``: its own time) and reports it with the parameters it adds (``report``).
The runner calls ``reset`` before every pass.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

import torch

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
        self.reset()

    # --- accounting ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the previous pass's accounting (and any per-video state)."""
        self.stages: list[dict[str, Any]] = []
        self.time_s = 0.0

    def record(self, where: str, tokens_in: int, tokens_out: int, layer: int | None = None, **extra) -> None:
        self.stages.append({"where": where, "layer": layer, "tokens_in": tokens_in, "tokens_out": tokens_out,
                            **extra})

    @contextmanager
    def timed(self):
        """Adds the wall time of the block to ``time_s`` (device synchronised at both ends)."""
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize()
            self.time_s += time.perf_counter() - t0

    def added_params(self) -> int:
        """Parameters the compressor adds to the model (e.g. TransV's cross-attention)."""
        return 0

    def report(self) -> dict[str, Any]:
        return {"spec": repr(self), "added_params": self.added_params(), "time_s": self.time_s,
                "stages": list(self.stages)}

    # --- streaming (bench.stream) ---------------------------------------------------------
    # A stream feeds frames chunk by chunk: a compressor streams when each chunk's output depends only on
    # the frames so far (per-video state carried across calls until ``new_video``). ``cannot_stream``
    # says why one does not, in a few words (shown in the one-line error).
    cannot_stream: str | None = None
    # Set by a stream: hook 2 then carries its per-video state (STC-Pruner's temporal anchor) from one
    # ``after_projector`` call to the next, as hook 1 always does across batches of frames.
    streaming = False

    # --- hook 1: vision tower -------------------------------------------------------------
    wants_tower_hook = False

    def new_video(self) -> None:
        """The next frames belong to a new video: drop per-video state (not the accounting)."""

    def tower_features(self, vision_side, pixels: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] consecutive frames -> [n, patches, dim] tower features."""
        return vision_side.tower_features(pixels)

    # --- hooks 2 and 3: frames -------------------------------------------------------------
    # True for compressors that regroup the vision tokens per frame ([frames, tokens per frame, hidden]):
    # they need the same number of tokens in every frame (a backbone that prunes frames unevenly refuses them).
    regroups_frames = False

    # --- hook 2: after the projector --------------------------------------------------------
    kept_slots: torch.Tensor | None = None  # [frames, k] per-frame slots the last after_projector kept, if known

    def after_projector(self, vision: torch.Tensor) -> torch.Tensor:
        """[batch, frames, tokens, hidden] -> [batch, tokens', hidden]."""
        return vision.flatten(1, 2)

    # --- hook 3: before LLM layers -----------------------------------------------------------
    def llm_layers(self, backbone) -> frozenset[int]:
        return frozenset()

    def before_layer(self, i: int, state, backbone, cache) -> None:
        pass

    def check(self, backbone) -> None:
        """Raise UserError if this compressor cannot act on ``backbone`` as configured (structure only)."""

    def prepare(self, backbone) -> None:
        """Build what the compressor adds to ``backbone`` (weights on its device and dtype)."""

    def __repr__(self) -> str:
        return format_spec(self.name, self.settings)


register_compressor("none")(Compressor)


def check_rate(name: str, key: str, p: Any) -> float:
    """A drop rate: the fraction of the vision tokens present that is removed, in [0, 1)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise UserError(f"compressor {name!r}: {key}={p!r} must be a drop rate in [0, 1)")
    return float(p)


def check_count(name: str, key: str, n: Any, minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise UserError(f"compressor {name!r}: {key}={n!r} must be an integer >= {minimum}")
    return n


def kept_count(n: int, p: float) -> int:
    """How many of ``n`` tokens survive drop rate ``p`` (at least one)."""
    return max(1, min(n, int(n * (1.0 - p) + 0.5)))


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
