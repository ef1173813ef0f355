"""Probe passes through the harness's own prefill: plain, under a knockout, or recording every layer.

``layer_states`` watches the layer loop at its hook before each layer (the place compressors act:
``llm_layers``/``before_layer``), changing nothing, and reads the last layer's output from the state
the loop leaves behind: hidden states entering each layer, plus the final ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.engine.pipeline import prefill
from bench.probes.prompts import ProbeDoc


class _Watcher:
    """At the hook before every layer: keep the hidden states (and positions) entering it."""

    def __init__(self, num_layers: int):
        self.inputs: list[torch.Tensor] = [None] * num_layers  # type: ignore[list-item]
        self.positions: list[torch.Tensor] = [None] * num_layers  # type: ignore[list-item]

    def llm_layers(self, backbone) -> frozenset[int]:
        return frozenset(range(backbone.num_layers))

    def before_layer(self, i: int, state, backbone, cache) -> None:
        self.inputs[i] = state.hidden
        self.positions[i] = state.positions


@dataclass
class LayerStates:
    inputs: list[torch.Tensor]  # [1, length, hidden] entering layer i
    positions: torch.Tensor
    final: torch.Tensor  # [1, length, hidden] leaving the last layer (before the final norm)
    logits: torch.Tensor  # [1, vocab] the model's own last-token logits

    def after(self, i: int) -> torch.Tensor:
        """Hidden states leaving layer i."""
        return self.inputs[i + 1] if i + 1 < len(self.inputs) else self.final


def last_logits(backbone, pdoc: ProbeDoc, knockout=None, chunk: int | None = None) -> torch.Tensor:
    """[vocab] float32 logits of the next token after the prompt, optionally under a knockout."""
    state = pdoc.fresh()
    kwargs = {} if knockout is None else {"knockout": knockout}
    logits, _ = prefill(backbone, state.hidden, state=state, chunk=chunk, **kwargs)
    return logits[0].float()


def layer_states(backbone, pdoc: ProbeDoc) -> LayerStates:
    """Every layer's input hidden states and the last layer's output, in one unablated pass."""
    state = pdoc.fresh()
    watcher = _Watcher(backbone.num_layers)
    logits, _ = prefill(backbone, state.hidden, state=state, compressor=watcher)
    return LayerStates(watcher.inputs, state.positions, state.hidden, logits.float())
