"""Streaming oracles (bench.stream): chunked equals one-shot equals offline, questions leave the stream
unchanged, the window and retrieval at their limits equal full attention; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch

from architectures import ARCHITECTURES
from architectures.vision import VisionSide
from bench.cli import main
from bench.engine.pipeline import prefill
from bench.stream.build import pixel_frames
from bench.stream.session import Stream
from bench.stream.window import Window
from compressors.base import make_compressor

ARCHS = ("transformer", "mamba", "hybrid")
FRAMES = 6
# the causal compressors: each chunk's output depends only on the frames so far
CAUSAL = ("none", "stc_cacher", "stc_pruner:tokens_per_frame=2", "stc:tokens_per_frame=2",
          "visionzip:dominant=2,contextual=1")
TOL = dict(atol=2e-5, rtol=1e-4)  # the Mamba-2 scan in chunks sums in another order


@pytest.fixture(scope="module")
def models():
    out = {}
    for arch in ARCHS:
        bb = ARCHITECTURES.get(arch).build("tiny")
        out[arch] = (bb, VisionSide("tiny", bb.hidden_size, 4))
    return out


@pytest.fixture(scope="module")
def frames():
    return pixel_frames(0, FRAMES, 64, seed=0)


def streamed(bb, vision, frames, chunk, compressor="none", window=None):
    stream = Stream(bb, vision, make_compressor(compressor), window=window)
    stream.start(1)
    chunks = [stream.feed(frames[i:i + chunk]) for i in range(0, frames.shape[0], chunk)]
    return stream, chunks


def offline_logits(bb, vision, frames, compressor="none"):
    comp = make_compressor(compressor)
    comp.new_video()
    with torch.inference_mode():
        tokens = comp.after_projector(vision(frames, comp)[None])
        embeds = torch.cat([bb.embed(torch.tensor([[1]])), tokens], dim=1)
        return prefill(bb, embeds, vision=(1, 1 + tokens.shape[1]))[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_one_chunk_equals_offline_prefill(models, frames, arch):
    bb, vision = models[arch]
    _, chunks = streamed(bb, vision, frames, FRAMES)
    torch.testing.assert_close(chunks[-1].logits, offline_logits(bb, vision, frames), **TOL)


@pytest.mark.parametrize("compressor", CAUSAL)
@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_equals_one_shot(models, frames, arch, compressor):
    bb, vision = models[arch]
    _, one = streamed(bb, vision, frames, FRAMES, compressor)
    _, chunked = streamed(bb, vision, frames, 2, compressor)
    torch.testing.assert_close(chunked[-1].logits, one[-1].logits, **TOL)
    torch.testing.assert_close(one[-1].logits, offline_logits(bb, vision, frames, compressor), **TOL)


def test_pruner_anchor_carried_across_chunks(models, frames):
    """The legitimate difference, named: STC-Pruner's temporal anchor is the running mean of *all* earlier
    frames. A stream carries it from chunk to chunk (``Compressor.streaming``); restarting it per chunk
    (what an offline call per chunk would do) ranks the chunk's first frame by its spatial term alone and
    keeps other tokens."""
    bb, vision = models["transformer"]
    spec = "stc_pruner:tokens_per_frame=2"
    carried, restarted = make_compressor(spec), make_compressor(spec)
    carried.streaming = True
    with torch.inference_mode():
        tokens = [vision(frames[i:i + 2])[None] for i in range(0, FRAMES, 2)]
        whole = make_compressor(spec).after_projector(torch.cat(tokens, dim=1))
        by_carried = torch.cat([carried.after_projector(t) for t in tokens], dim=1)
        by_restart = torch.cat([restarted.after_projector(t) for t in tokens], dim=1)
    torch.testing.assert_close(by_carried, whole)
    assert not torch.equal(by_restart, whole)


@pytest.mark.parametrize("arch", ARCHS)
def test_question_mid_stream_leaves_the_stream_unchanged(models, frames, arch):
    bb, vision = models[arch]
    plain, asked = (streamed(bb, vision, frames[:4], 2)[0] for _ in range(2))
    answer = asked.ask(torch.tensor([[5, 6, 7, 8]]), new_tokens=4)
    assert len(answer["answer_ids"]) == 4 and answer["context_tokens"] == asked.position
    after_plain, after_asked = plain.feed(frames[4:]), asked.feed(frames[4:])
    assert torch.equal(after_asked.logits, after_plain.logits)


@pytest.mark.parametrize("arch", ("transformer", "hybrid"))
def test_window_of_all_frames_equals_no_window(models, frames, arch):
    bb, vision = models[arch]
    _, full = streamed(bb, vision, frames, 2)
    _, windowed = streamed(bb, vision, frames, 2, window=Window(bb, FRAMES))
    assert torch.equal(windowed[-1].logits, full[-1].logits)
    _, short = streamed(bb, vision, frames, 2, window=Window(bb, 1))
    assert not torch.allclose(short[-1].logits, full[-1].logits)  # a real window: older frames left


@pytest.mark.parametrize("offload", ("cpu", "disk"))
def test_retrieval_of_all_frames_equals_full_attention_over_the_store(models, frames, offload):
    """K = all stored frames: the question attends to every token of the stream, as if nothing had left
    (the KV itself was encoded under the window, so the reference is that KV put back in order)."""
    bb, vision = models["hybrid"]
    question = torch.tensor([[5, 6, 7, 8]])
    stream, _ = streamed(bb, vision, frames, 2, window=Window(bb, 1, offload, retrieve=FRAMES))
    window = stream.window
    got = stream.ask(question, new_tokens=3)
    assert sorted(window.store[window.layers[0]]) == [1, 2, 3, 4]
    assert got["retrieval"]["loaded_bytes"] == window.store_bytes
    s = window.sink_tokens
    for i in window.layers:  # the reference: the stored frames back between the sinks and the window
        layer = stream.cache.layers[i]
        pairs = [window._get(i, f, "cpu") for f in sorted(window.store[i])]
        layer.keys = torch.cat([layer.keys[..., :s, :], *(k for k, _ in pairs), layer.keys[..., s:, :]], dim=2)
        layer.values = torch.cat([layer.values[..., :s, :], *(v for _, v in pairs), layer.values[..., s:, :]], dim=2)
    stream.window = None
    want = stream.ask(question, new_tokens=3)
    torch.testing.assert_close(got["first_logits"], want["first_logits"])
    assert got["answer_ids"] == want["answer_ids"]


def run_cli(*args):
    return main(["stream", "--preset", "tiny", "--tokens-per-frame", "4", *args])


def test_stream_records(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert run_cli("--arch", "hybrid", "--compressor", "stc:tokens_per_frame=2", "--fps", "2", "--chunk-frames", "3",
                   "--duration", "4", "--questions", "1.5,4", "--output", str(out)) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"stream"}
    kinds = [r["row"] for r in rows]
    assert kinds == ["chunk", "question", "chunk", "chunk", "question", "summary"]  # cut at the question's frame
    assert [r["metrics"]["frames"] for r in rows if r["row"] == "chunk"] == [3, 3, 2]
    summary = rows[-1]["metrics"]
    assert summary["real_time_factor"] > 0 and summary["memory_slope_bytes_per_s"] > 0
    assert rows[1]["metrics"]["context_tokens"] == 1 + 3 * 2


def test_memory_budget_records_the_length_reached(tmp_path, models):
    out = tmp_path / "s.jsonl"
    weights = sum(p.numel() * p.element_size() for p in models["transformer"][0].model.parameters())
    budget = weights + 100_000  # the tiny Transformer's KV grows 9 KiB per second at 1 fps: ~11 s fit
    assert run_cli("--arch", "transformer", "--vision", "synthetic", "--fps", "1", "--chunk-frames", "2",
                   "--frames", "40", "--memory-budget", str(budget), "--output", str(out)) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    summary = rows[-1]
    assert summary["status"] == "oom" and 0 < summary["metrics"]["oom_at_s"] < 40
    assert len([r for r in rows if r["row"] == "chunk"]) == summary["metrics"]["oom_at_s"] / 2


@pytest.mark.parametrize("args, needle", [
    (("--fps", "0"), "--fps"),
    (("--chunk-frames", "0"), "--chunk-frames"),
    (("--window-frames", "0"), "--window-frames"),
    (("--window-frames", "2", "--kv-offload", "cpu", "--retrieve-frames", "0"), "--retrieve-frames"),
    (("--questions", "30"), "beyond the stream"),
    (("--compressor", "td:schedule=uni_1_0.5"), "'td' cannot stream"),
    (("--compressor", "evs"), "'evs' cannot stream"),
])
def test_bad_input_is_one_line(capsys, args, needle):
    base = {"--fps": "1", "--chunk-frames": "2"}
    flags = dict(zip(args[::2], args[1::2]))
    argv = ["--arch", "transformer", "--vision", "synthetic", "--frames", "4",
            *(x for k, v in {**base, **flags}.items() for x in (k, v))]
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_window_refused_for_pure_mamba(capsys):
    assert run_cli("--arch", "mamba", "--vision", "synthetic", "--fps", "1", "--chunk-frames", "2", "--frames", "4",
                   "--window-frames", "2") == 2
    assert "a window means nothing" in capsys.readouterr().err


def test_plot_stream(tmp_path):
    from bench.reporting.stream_plots import plot_stream, stream_series

    def row(kind, spec, **m):
        return {"kind": "stream", "row": kind, "spec": spec, "metrics": {"row": kind, **m}}

    full, windowed = {"arch": "transformer", "compressor": "none"}, {"arch": "transformer", "compressor": "stc",
                                                                     "window_frames": 4}
    records = [row("chunk", full, stream_s=2, device_bytes=100, chunk_s=0.1),
               row("chunk", full, stream_s=4, device_bytes=200, chunk_s=0.2),
               row("summary", full, oom_at_s=4),
               row("chunk", windowed, stream_s=2, device_bytes=50, chunk_s=0.1)]
    series = stream_series(records)
    assert series["transformer / none"]["oom_at_s"] == 4
    assert series["transformer / stc / window 4"]["memory"] == [50]
    assert plot_stream(records, str(tmp_path / "s.png")) and (tmp_path / "s.png").stat().st_size > 0


def test_predicted_stream_slopes():
    """The memory slope on a GPU: KV per token x tokens per frame x fps; the paper-proportioned presets give
    the hybrid 1/9 of the Transformer's, the pure Mamba-2 none; STC-Pruner's 8 of 16 tokens halve it."""
    from bench.predict.stream import predict_stream

    got = {(a, c): predict_stream(a, "tiny", c, "h100", fps=2, chunk_frames=4)
           for a in ARCHS for c in ("none", "stc_pruner")}
    t, h = got["transformer", "none"]["memory_slope_bytes_per_s"], got["hybrid", "none"]["memory_slope_bytes_per_s"]
    assert t == 9 * h > 0 and got["mamba", "none"]["hours_that_fit"] is None
    assert got["hybrid", "stc_pruner"]["memory_slope_bytes_per_s"] * 2 == h
    assert got["hybrid", "none"]["hours_that_fit"] > got["transformer", "none"]["hours_that_fit"] > 0
