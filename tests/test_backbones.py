"""Correctness oracles for the backbone adapters: the harness's layer loop must reproduce the library.

Every test compares what ``bench.engine.pipeline`` computes (embed -> layer loop -> final norm ->
head, optionally chunked, with its own cache bookkeeping) against the transformers model's
own ``forward``/``generate`` on the same random-weight ``tiny`` model.
"""

from __future__ import annotations

import contextlib

import psutil
import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from architectures import ARCHITECTURES
from architectures import attention as attention_mod
from architectures.base import ATTENTION, MAMBA, MLP
from architectures.hybrid import PAPER_LAYOUT, Hybrid, timeviper_layout
from bench.engine.generate import greedy_generate
from bench.engine.pipeline import decode_step, prefill

ARCHS = ["transformer", "mamba", "hybrid"]
ATTN_ARCHS = ["transformer", "hybrid"]
VOCAB = 512  # tiny presets
ATOL, RTOL = 1e-5, 1e-4

_BUILT: dict[str, object] = {}


@pytest.fixture(params=ARCHS)
def bb(request):
    """The tiny backbone of each arch, built once per session (tests only read it)."""
    name = request.param
    if name not in _BUILT:
        _BUILT[name] = ARCHITECTURES.get(name).build("tiny")
    return _BUILT[name]


@pytest.fixture(params=ATTN_ARCHS)
def attn_bb(request):
    name = request.param
    if name not in _BUILT:
        _BUILT[name] = ARCHITECTURES.get(name).build("tiny")
    return _BUILT[name]


def _ids(length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    # ids 0-2 are pad/bos/eos in the tiny configs: keep them out so generate() infers no padding
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _library_last_logits(bb, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return bb.model(input_ids=ids).logits[:, -1].float()


def _all_configs(config):
    """The config and its sub-configs (recursively), each once."""
    seen, todo = [], [config]
    while todo:
        cfg = todo.pop()
        if any(cfg is s for s in seen):
            continue
        seen.append(cfg)
        for key in getattr(cfg, "sub_configs", {}) or {}:
            sub = getattr(cfg, key, None)
            if sub is not None and hasattr(sub, "_attn_implementation"):
                todo.append(sub)
    return seen


@contextlib.contextmanager
def _attn_implementation(bb, impl: str):
    """Temporarily switch the model's (and sub-configs') attention implementation."""
    configs = _all_configs(bb.model.config)
    saved = [cfg._attn_implementation for cfg in configs]
    try:
        for cfg in configs:
            cfg._attn_implementation = impl
        yield
    finally:
        for cfg, old in zip(configs, saved):
            cfg._attn_implementation = old


@contextlib.contextmanager
def _spy_attention():
    """Count calls to the stock "sdpa" and to "viperbench_sdpa" through transformers' attention registry."""
    mapping = type(ALL_ATTENTION_FUNCTIONS)._global_mapping
    assert not ALL_ATTENTION_FUNCTIONS._local_mapping, "a local override would bypass the spy"
    calls = {"sdpa": 0, attention_mod.NAME: 0}
    originals = {k: mapping[k] for k in calls}

    def wrap(key):
        def spy(*args, **kwargs):
            calls[key] += 1
            return originals[key](*args, **kwargs)

        return spy

    try:
        for key in calls:
            mapping[key] = wrap(key)
        yield calls
    finally:
        mapping.update(originals)


# --- harness forward == library forward -----------------------------------------------------


def test_registered_attention_is_used(bb):
    expected = None if bb.name == "mamba" else attention_mod.NAME
    assert bb.attn_implementation == expected
    if expected:
        assert all(cfg._attn_implementation == expected for cfg in _all_configs(bb.model.config))


def test_prefill_matches_library_forward(bb):
    ids = _ids(200)
    with _spy_attention() as calls:
        logits, _ = prefill(bb, bb.embed(ids))
        ref = _library_last_logits(bb, ids)
    n_attn = len(bb.attention_layers())
    # harness and library both ran the registered function, never the stock one
    assert calls == {"sdpa": 0, attention_mod.NAME: 2 * n_attn}
    assert logits.shape == (1, VOCAB) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=RTOL)


def test_prefill_matches_library_forward_with_stock_sdpa(attn_bb):
    bb = attn_bb
    ids = _ids(200, seed=1)
    logits, _ = prefill(bb, bb.embed(ids))
    with _attn_implementation(bb, "sdpa"), _spy_attention() as calls:
        ref = _library_last_logits(bb, ids)
    assert calls == {"sdpa": len(bb.attention_layers()), attention_mod.NAME: 0}
    assert bb.model.config._attn_implementation == attention_mod.NAME  # restored
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=RTOL)


def test_batch_of_two_prompts(bb):
    ids = torch.cat([_ids(160, seed=2), _ids(160, seed=3)])
    assert not torch.equal(ids[0], ids[1])
    logits, seq = prefill(bb, bb.embed(ids))
    assert logits.shape == (2, VOCAB)
    torch.testing.assert_close(logits, _library_last_logits(bb, ids), atol=ATOL, rtol=RTOL)
    # each row is also what that prompt gives alone
    for row in range(2):
        alone, _ = prefill(bb, bb.embed(ids[row : row + 1]))
        torch.testing.assert_close(logits[row : row + 1], alone, atol=ATOL, rtol=RTOL)
    assert not torch.allclose(logits[0], logits[1])
    # a decode step on the batch
    step = decode_step(bb, logits.argmax(-1, keepdim=True), seq)
    assert step.shape == (2, VOCAB)


# --- greedy decoding --------------------------------------------------------------------------


def test_greedy_generate_matches_library_generate(bb):
    ids = _ids(96, seed=4)
    ours = greedy_generate(bb, bb.embed(ids), 8)
    with torch.inference_mode():
        ref = bb.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                                do_sample=False)
    assert ours.shape == (1, 8)
    assert ours.tolist() == ref[:, ids.shape[1] :].tolist()


def test_decode_steps_match_library_forward(bb):
    """Each decode step's logits equal the library's full forward over prompt + generated tokens."""
    ids = _ids(64, seed=5)
    logits, seq = prefill(bb, bb.embed(ids))
    full = ids
    for _ in range(3):
        nxt = logits.argmax(-1, keepdim=True)
        full = torch.cat([full, nxt], dim=1)
        logits = decode_step(bb, nxt, seq)
        torch.testing.assert_close(logits, _library_last_logits(bb, full), atol=ATOL, rtol=RTOL)


# --- chunked prefill --------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [64, 100, 299, 1000])
def test_chunked_prefill_matches_one_shot(bb, chunk, monkeypatch):
    length = 300
    ids = _ids(length, seed=6)
    one_logits, one_seq = prefill(bb, bb.embed(ids))

    calls = []
    real = attention_mod.lower_right_causal
    monkeypatch.setattr(attention_mod, "lower_right_causal", lambda *a, **k: calls.append(1) or real(*a, **k))
    ch_logits, ch_seq = prefill(bb, bb.embed(ids), chunk=chunk)
    monkeypatch.undo()

    # the chunk-aware path runs for every chunk after the first (a 1-token chunk is plain SDPA: it sees
    # every key), in every attention layer
    later = [min(chunk, length - s) for s in range(chunk, length, chunk)]
    assert len(calls) == sum(n > 1 for n in later) * len(bb.attention_layers())
    torch.testing.assert_close(ch_logits, one_logits, atol=ATOL, rtol=RTOL)
    assert (ch_seq.length, ch_seq.next_position) == (one_seq.length, one_seq.next_position) == (length, length)

    # decoding continues identically from both caches
    tok = one_logits.argmax(-1, keepdim=True)
    for _ in range(3):
        a = decode_step(bb, tok, one_seq)
        b = decode_step(bb, tok, ch_seq)
        torch.testing.assert_close(b, a, atol=ATOL, rtol=RTOL)
        tok = a.argmax(-1, keepdim=True)


# --- bookkeeping -----------------------------------------------------------------------------


def test_sequence_bookkeeping(bb):
    length = 50
    ids = _ids(length, seed=7)
    logits, seq = prefill(bb, bb.embed(ids))
    assert seq.length == length and seq.next_position == length
    decode_step(bb, logits.argmax(-1, keepdim=True), seq)
    assert seq.length == length + 1 and seq.next_position == length + 1
    decode_step(bb, logits.argmax(-1, keepdim=True), seq)
    assert seq.length == length + 2 and seq.next_position == length + 2


def test_hook_at_every_layer_sees_the_whole_sequence(bb):
    """A no-op compressor hooked at every layer sees the full sequence and positions, and changes nothing."""
    from compressors.base import Compressor

    seen = {}

    class Probe(Compressor):
        name = "probe"

        def llm_layers(self, backbone):
            return frozenset(range(backbone.num_layers))

        def before_layer(self, i, state, backbone, cache):
            seen[i] = (state.hidden.shape[1], state.positions.tolist())

    length = 20
    ids = _ids(length, seed=8)
    logits, seq = prefill(bb, bb.embed(ids), compressor=Probe())
    assert sorted(seen) == list(range(bb.num_layers))
    for hid_len, positions in seen.values():
        assert hid_len == length and positions == list(range(length))
    assert (seq.length, seq.next_position) == (length, length)
    plain, _ = prefill(bb, bb.embed(ids))
    torch.testing.assert_close(logits, plain, atol=0, rtol=0)


# --- hybrid layout ---------------------------------------------------------------------------

PAPER_ATTENTION = (14, 21, 30, 39)


def _attention_at(layout: str) -> list[int]:
    return [k for k, c in enumerate(layout) if c == "*"]


def test_paper_layout():
    assert timeviper_layout(56) == PAPER_LAYOUT
    assert len(PAPER_LAYOUT) == 56
    assert _attention_at(PAPER_LAYOUT) == list(PAPER_ATTENTION)


def test_paper_preset_config_layout():
    kinds = Hybrid.make_config("paper").layers_block_type
    assert len(kinds) == 56
    assert [k for k, t in enumerate(kinds) if t == "full_attention"] == list(PAPER_ATTENTION)
    expected = {"M": "linear_attention", "*": "full_attention", "-": "mlp"}
    assert kinds == [expected[c] for c in PAPER_LAYOUT]


@pytest.mark.parametrize("depth", [14, 21, 28, 42])
def test_scaled_layout_keeps_the_papers_proportions(depth):
    layout = timeviper_layout(depth)
    assert len(layout) == depth
    attn = _attention_at(layout)
    # the paper's share of attention blocks (4 of 56), rounded half up: 1, 2, 2, 3
    assert len(attn) == {14: 1, 21: 2, 28: 2, 42: 3}[depth]
    assert abs(len(attn) / depth - 4 / 56) < 0.025
    # the paper's deepest attention blocks at scaled indices (round half up), never adjacent
    assert attn == sorted(int(i * depth / 56 + 0.5) for i in PAPER_ATTENTION[-len(attn):])
    assert all(b - a > 1 for a, b in zip(attn, attn[1:]))
    assert set(layout) == {"M", "-", "*"}
    others = [c for c in layout if c != "*"]
    assert others == ["M-"[k % 2] for k in range(len(others))]


def test_every_depth_has_attention_and_no_adjacent_attention_blocks():
    for depth in range(1, 57):
        attn = _attention_at(timeviper_layout(depth))
        assert len(timeviper_layout(depth)) == depth and attn, depth
        assert all(b - a > 1 for a, b in zip(attn, attn[1:])), depth


def test_tiny_hybrid_layer_kinds():
    bb = _BUILT.get("hybrid") or ARCHITECTURES.get("hybrid").build("tiny")
    kinds = bb.layer_kinds()
    assert len(kinds) == bb.num_layers == 14
    assert kinds.count(ATTENTION) == 1
    assert kinds.count(MAMBA) == 7
    assert kinds.count(MLP) == 6
    # the paper's attn_39 scaled to 14 blocks is layer 10: scaled schedules land on attention
    assert bb.attention_layers() == [10]


@pytest.mark.parametrize("preset", ["tiny", "small", "paper"])
def test_hybrid_kv_cache_is_a_ninth_of_the_transformers(preset):
    """Per token, the Transformer's KV cache is 9x the hybrid's at every preset, as in the paper."""
    from bench.measure.cost import kv_bytes_per_token

    def kv_per_token(arch):
        return kv_bytes_per_token(ARCHITECTURES.get(arch).skeleton(preset), 4)

    assert kv_per_token("hybrid") > 0
    assert kv_per_token("transformer") == 9 * kv_per_token("hybrid")


def test_tiny_pure_layer_kinds():
    t = ARCHITECTURES.get("transformer")
    m = ARCHITECTURES.get("mamba")
    tb = _BUILT.get("transformer") or t.build("tiny")
    mb = _BUILT.get("mamba") or m.build("tiny")
    assert tb.layer_kinds() == [ATTENTION] * 9
    assert mb.layer_kinds() == [MAMBA] * 14
    assert mb.attention_layers() == []


# --- parameter counts ------------------------------------------------------------------------


def test_paper_param_counts_on_meta_device():
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    counts = {name: ARCHITECTURES.get(name).param_count("paper") for name in ARCHS}
    grown = proc.memory_info().rss - rss0
    print(f"paper presets: {counts}; RSS grew {grown / 2**20:.0f} MiB")
    assert grown < 500 * 2**20
    assert abs(counts["transformer"] - 8.19e9) / 8.19e9 < 0.005  # Qwen3-8B: 8.19B
    assert abs(counts["hybrid"] - 8.89e9) / 8.89e9 < 0.005  # Nemotron-Nano-9B-v2 (LLM part): 8.89B
    assert 7e9 < counts["mamba"] < 10e9
    assert all(isinstance(n, int) for n in counts.values())


def test_tiny_param_count_matches_built_model(bb):
    assert type(bb).param_count("tiny") == sum(p.numel() for p in bb.model.parameters())
