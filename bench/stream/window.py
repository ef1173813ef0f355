"""Bounded attention memory for a stream: a sliding window over frames, and ReKV-style retrieval.

``Window(frames=W)``: after each chunk, every attention layer's KV keeps the sinks (BOS and the first
frame's tokens) and the last W frames; older frames leave the cache (at chunk granularity: a chunk's
tokens attend to the sinks, the window before it and the chunk itself). Mamba-2 layers keep their
conv/SSM state as it is: it does not grow with the stream, and a window means nothing for it (no
window is faked there). With W at least the stream's frames nothing leaves, so the stream equals one
without a window.

``offload="cpu" | "disk"``: the KV of frames that leave the window is moved off the device (a CPU copy,
or one file per layer and frame in a temporary folder) and indexed by each frame's mean key (heads
concatenated). ``retrieve=K``: at a question, before each attention layer, the question's mean query
(its rotated queries, averaged over its tokens, heads concatenated) is compared (cosine) with each
stored frame's mean key (repeated to the query heads), and the K most similar frames (ties: the earlier
frame) are loaded back between the sinks and the window for that layer, so each layer may retrieve
different frames. The question and its answer then attend to them; the stream's cache is put back
afterwards (``bench.stream.session``). Retrieval time, bytes moved and the store's size are recorded.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


class Window:
    def __init__(self, backbone, frames: int, offload: str | None = None, retrieve: int | None = None):
        self.frames, self.offload, self.retrieve = frames, offload, retrieve
        self.layers = backbone.attention_layers()
        self.resident: list[tuple[int, int]] = []  # (frame, tokens) of the window's frames, in order
        self.sink_tokens = 1  # BOS, then the first frame's tokens
        self.evicted_tokens = 0
        self.store: dict[int, dict[int, object]] = {i: {} for i in self.layers}  # layer -> frame -> KV or file
        self.mean_keys: dict[int, dict[int, torch.Tensor]] = {i: {} for i in self.layers}
        self.store_bytes = self.moved_bytes = 0
        self.offload_s = 0.0
        self._dir = tempfile.TemporaryDirectory(prefix="viperbench-kv-") if offload == "disk" else None

    def resident_tokens(self, position: int) -> int:
        return position - self.evicted_tokens

    def after_chunk(self, cache, first_frame: int, frames: int, tokens: int) -> None:
        """The chunk's frames join the window (the stream's first frame becomes a sink); the oldest leave.
        The chunk's tokens split evenly into its frames (every streaming compressor keeps as many per frame)."""
        per = tokens // frames if frames else 0
        for f in range(first_frame, first_frame + frames):
            if f == 0:
                self.sink_tokens += per
            else:
                self.resident.append((f, per))
        leaving = self.resident[:max(0, len(self.resident) - self.frames)]
        if not leaving:
            return
        self.resident = self.resident[len(leaving):]
        start, n = self.sink_tokens, sum(t for _, t in leaving)
        t0 = time.perf_counter()
        for i in self.layers:
            layer = cache.layers[i]
            keys, values = layer.keys, layer.values
            if self.offload:
                at = start
                for f, t in leaving:
                    k, v = keys[..., at:at + t, :], values[..., at:at + t, :]
                    self.mean_keys[i][f] = k.float().mean(dim=2).flatten()  # [batch * kv heads * head dim]
                    self._put(i, f, k, v)
                    at += t
            layer.keys = torch.cat([keys[..., :start, :], keys[..., start + n:, :]], dim=2)
            layer.values = torch.cat([values[..., :start, :], values[..., start + n:, :]], dim=2)
        self.offload_s += time.perf_counter() - t0
        self.evicted_tokens += n

    def _put(self, i: int, f: int, k: torch.Tensor, v: torch.Tensor) -> None:
        size = k.numel() * k.element_size() * 2
        self.store_bytes += size
        self.moved_bytes += size
        if self.offload == "disk":
            path = Path(self._dir.name) / f"layer{i}-frame{f}.pt"
            torch.save({"k": k.cpu().clone(), "v": v.cpu().clone()}, path)
            self.store[i][f] = path
        else:
            self.store[i][f] = (k.to("cpu", copy=True), v.to("cpu", copy=True))

    def _get(self, i: int, f: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.store[i][f]
        if isinstance(item, Path):
            item = torch.load(item)
            item = (item["k"], item["v"])
        return item[0].to(device), item[1].to(device)

    def store_report(self) -> dict:
        return {"offloaded_bytes": self.store_bytes, "offloaded_frames": len(next(iter(self.store.values()), {})),
                "window_resident_frames": len(self.resident), "window_sink_tokens": self.sink_tokens}

    def retriever(self, backbone):
        """The question's hook (None without retrieval or with nothing stored)."""
        if not self.retrieve or not self.offload or not any(self.store.values()):
            return None
        return Retriever(self, backbone)


class Retriever:
    """A prefill hook at the attention layers (``llm_layers``/``before_layer``, as a compressor's hook 3):
    before layer i it loads that layer's K most relevant stored frames into the cache."""

    def __init__(self, window: Window, backbone):
        self.window, self.backbone = window, backbone
        self.time_s, self.loaded_bytes, self.frames_by_layer = 0.0, 0, {}

    def llm_layers(self, backbone) -> frozenset[int]:
        """The question's prefill only: decode steps run no hook, and the loaded frames stay for the answer."""
        return frozenset(self.window.layers)

    def before_layer(self, i: int, state, backbone, cache) -> None:
        t0 = time.perf_counter()
        w = self.window
        frames = sorted(w.mean_keys[i])
        queries = torch.arange(state.length, device=state.hidden.device)
        q, _, _ = backbone._queries_keys(i, state.hidden, state.positions, queries)  # [b, heads, n, hd]
        query = q.float().mean(dim=2)  # [b, heads, hd]
        stored = torch.stack([w.mean_keys[i][f] for f in frames])  # [frames, b * kv heads * hd]
        repeat = query.shape[1] // (stored.shape[1] // (query.shape[0] * query.shape[2]))
        stored = stored.view(len(frames), query.shape[0], -1, query.shape[2]).repeat_interleave(repeat, dim=2)
        similarity = F.cosine_similarity(stored.flatten(1), query.flatten()[None], dim=-1)
        order = similarity.argsort(descending=True, stable=True)[: w.retrieve].sort().values
        chosen = [frames[j] for j in order.tolist()]
        layer = cache.layers[i]
        pairs = [w._get(i, f, layer.keys.device) for f in chosen]
        s = w.sink_tokens
        layer.keys = torch.cat([layer.keys[..., :s, :], *(k for k, _ in pairs), layer.keys[..., s:, :]], dim=2)
        layer.values = torch.cat([layer.values[..., :s, :], *(v for _, v in pairs), layer.values[..., s:, :]], dim=2)
        self.loaded_bytes += sum(k.numel() * k.element_size() * 2 for k, _ in pairs)
        self.frames_by_layer[i] = chosen
        self.time_s += time.perf_counter() - t0

    def report(self) -> dict:
        return {"retrieval_s": self.time_s, "loaded_bytes": self.loaded_bytes,
                "store_bytes": self.window.store_bytes, "frames_by_layer": {str(k): v for k, v in
                                                                            self.frames_by_layer.items()}}
