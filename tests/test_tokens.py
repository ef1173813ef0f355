"""The token state: vision tokens as a mask; selecting tokens keeps everything aligned with them."""

import torch

from architectures.tokens import TokenState


def state(three_d: bool):
    n = 8
    vision = torch.tensor([0, 1, 1, 0, 1, 1, 0, 0], dtype=torch.bool)  # two groups split by a text token
    positions = torch.stack([torch.arange(n), torch.arange(n) + 10, torch.arange(n) + 20]) if three_d else torch.arange(n)
    frames = torch.tensor([-1, 0, 0, -1, 1, 1, -1, -1])
    deep = [torch.arange(4.0)[:, None] * 10 + torch.arange(2.0)]
    return TokenState(torch.arange(n, dtype=torch.float)[None, :, None].repeat(1, 1, 2), positions, vision, frames,
                      {"deepstack": deep})


def test_span_becomes_a_mask():
    assert TokenState.vision_mask(5, (1, 3), "cpu").tolist() == [False, True, True, False, False]


def test_drop_vision_keeps_positions_frames_and_per_vision_features():
    for three_d in (False, True):
        s = state(three_d)
        dropped = s.drop_vision(torch.tensor([0, 3]))  # keep the 1st and 4th vision tokens (seq 1 and 5)
        assert dropped[0, :, 0].tolist() == [2.0, 4.0]
        assert s.hidden[0, :, 0].tolist() == [0, 1, 3, 5, 6, 7]
        assert s.vision.tolist() == [False, True, False, True, False, False]
        assert s.frames.tolist() == [-1, 0, -1, 1, -1, -1]
        expect = torch.tensor([0, 1, 3, 5, 6, 7])
        assert torch.equal(s.positions, expect if not three_d else
                           torch.stack([expect, expect + 10, expect + 20]))
        assert s.per_vision["deepstack"][0][:, 0].tolist() == [0.0, 30.0]
