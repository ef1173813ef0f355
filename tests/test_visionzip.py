"""VisionZip after the projector: dominant tokens by received attention, contextual group means."""

import pytest
import torch

from bench.errors import UserError
from compressors.base import make_compressor
from compressors.visionzip import VisionZip, received_attention


def test_registry_builds():
    comp = make_compressor("visionzip:dominant=6,contextual=2")
    assert type(comp) is VisionZip and comp.dominant == 6 and comp.contextual == 2
    assert not comp.wants_tower_hook and comp.added_params() == 0
    assert type(make_compressor("visionzip:contextual=0")) is VisionZip


@pytest.mark.parametrize("spec,key", [
    ("visionzip:dominant=0", "dominant"),
    ("visionzip:contextual=-1", "contextual"),
    ("visionzip:dominant=2.5", "dominant"),
    ("visionzip:ratio=0.5", "ratio"),
])
def test_bad_values(spec, key):
    with pytest.raises(UserError, match=key) as err:
        make_compressor(spec)
    assert "\n" not in str(err.value) and "visionzip" in str(err.value)


def test_received_attention_definition():
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    for n in range(3):
        logits = torch.stack([torch.stack([x[n, i] @ x[n, j] / 2.0 for j in range(5)]) for i in range(5)])
        assert torch.allclose(received_attention(x)[n], torch.softmax(logits, -1).mean(0), atol=1e-6)


@pytest.mark.parametrize("dominant,contextual", [(6, 2), (3, 0), (1, 4), (9, 0)])
def test_shapes_and_dominant_tokens(dominant, contextual):
    x = torch.randn(2, 3, 10, 16, generator=torch.Generator().manual_seed(dominant))
    comp = make_compressor(f"visionzip:dominant={dominant},contextual={contextual}")
    out = comp.after_projector(x)
    keep = dominant + contextual
    assert out.shape == (2, 3 * keep, 16) and out.dtype == x.dtype
    scores = received_attention(x.flatten(0, 1)).view(2, 3, 10)
    for b in range(2):
        for f in range(3):
            top = sorted(scores[b, f].topk(dominant).indices.tolist())
            assert torch.equal(out[b, f * keep:f * keep + dominant], x[b, f, top])
    assert comp.stages == [{"where": "projector", "layer": None, "tokens_in": 30, "tokens_out": 3 * keep}]


def test_hand_case():
    tokens = torch.tensor([[0.0, 1.0], [0.0, 1.1], [10.0, 0.0], [1.0, 0.0], [1.0, 0.1]])
    # The large token receives the most attention; the rest (m = 4) get centres at positions 0 and 2,
    # i.e. (0, 1) and (1, 0); (0, 1.1) joins the first, (1, 0.1) the second.
    assert int(received_attention(tokens[None])[0].argmax()) == 2
    out = make_compressor("visionzip:dominant=1,contextual=2").after_projector(tokens[None, None])
    expected = torch.tensor([[10.0, 0.0], [0.0, 1.05], [1.0, 0.05]])
    assert torch.allclose(out[0], expected)


def test_contextual_groups_are_means():
    # Two clear clusters among the non-dominant tokens: each contextual token is its cluster's mean.
    torch.manual_seed(0)
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    rest = [a + 0.05 * torch.randn(3) if i % 2 == 0 else b + 0.05 * torch.randn(3) for i in range(6)]
    big = torch.tensor([0.0, 0.0, 20.0])
    x = torch.stack([big] + rest)[None, None]
    out = make_compressor("visionzip:dominant=1,contextual=2").after_projector(x)[0]
    assert torch.equal(out[0], big)
    assert torch.allclose(out[1], torch.stack(rest[0::2]).mean(0))  # centre 0 = rest[0] (cluster a)
    assert torch.allclose(out[2], torch.stack(rest[1::2]).mean(0))  # centre 1 = rest[3] (cluster b)


@pytest.mark.parametrize("spec", ["visionzip:dominant=6,contextual=2", "visionzip:dominant=10,contextual=0",
                                  "visionzip:dominant=20,contextual=3"])
def test_keeps_all_when_budget_covers_frame(spec):
    x = torch.randn(2, 3, 8, 4)
    comp = make_compressor(spec)
    assert torch.equal(comp.after_projector(x), x.flatten(1, 2))
    assert comp.stages[0]["tokens_out"] == 3 * 8


def test_keeps_dtype_and_is_deterministic():
    x = torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    comp = make_compressor("visionzip:dominant=4,contextual=2")
    out = comp.after_projector(x)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 24, 16)
    assert torch.equal(out, comp.after_projector(x.clone()))
    ties = torch.ones(1, 1, 6, 4)  # all scores equal: the first tokens are dominant
    assert torch.equal(make_compressor("visionzip:dominant=2,contextual=1").after_projector(ties), ties[:, 0, :3])


def test_visionzip_through_the_runner():
    from bench.measure.runner import run_cell
    from bench.spec import make_spec

    spec = make_spec({"arch": "hybrid", "preset": "tiny", "vision": "synthetic",
                      "compressor": "visionzip:dominant=6,contextual=2", "frames": 4,
                      "prompt_tokens": 4, "new_tokens": 2, "warmup": 0, "repeats": 1})
    record = run_cell(spec)
    assert record["status"] == "ok", record.get("error")
    metrics = record["metrics"]
    assert metrics["tokens_after_compression"] == 1 + 4 * 8 + 4
    assert metrics["compressor"]["stages"] == [{"where": "projector", "layer": None,
                                                "tokens_in": 4 * spec.tokens_per_frame, "tokens_out": 4 * 8}]
