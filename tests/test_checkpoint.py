"""``--checkpoint DIR``: rebuilding a backbone from a local transformers checkpoint of its family."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from architectures import ARCHITECTURES
from bench.cli import main
from bench.errors import UserError
from bench.engine.pipeline import prefill

REPO = Path(__file__).resolve().parents[1]
ARCHS = ["transformer", "mamba", "hybrid"]
FAMILY = {"transformer": "qwen3", "mamba": "mamba2", "hybrid": "nemotron_h"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (original tiny backbone, its checkpoint directory)."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for name in ARCHS:
        bb = ARCHITECTURES.get(name).build("tiny", seed=1)
        path = root / name
        bb.model.save_pretrained(path)
        out[name] = (bb, path)
    return out


@pytest.mark.parametrize("name", ARCHS)
def test_rebuild_from_checkpoint(saved, name):
    original, path = saved[name]
    arch = ARCHITECTURES.get(name)
    bb = arch.build(None, checkpoint=str(path))
    assert isinstance(bb, arch)
    assert bb.checkpoint == str(path) and bb.preset is None
    assert bb.config.model_type == FAMILY[name] == arch.family
    assert bb.config._attn_implementation == (arch.attn_implementation or original.config._attn_implementation)
    assert bb.num_layers == original.num_layers and bb.layer_kinds() == original.layer_kinds()
    assert bb.dtype == torch.float32
    # same weights
    ours, theirs = dict(bb.model.named_parameters()), dict(original.model.named_parameters())
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    # same logits: library forward and harness prefill. Not bitwise: the loaded weights sit at other
    # memory alignments, and the CPU GEMV for a single row (the harness's last-position head, or the
    # library's own logits_to_keep=1) then sums in another order (last-bit differences).
    ids = torch.randint(3, bb.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(bb.model(input_ids=ids).logits, original.model(input_ids=ids).logits,
                                   atol=1e-6, rtol=1e-5)
    a, _ = prefill(bb, bb.embed(ids))
    b, _ = prefill(original, original.embed(ids))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name,other", [(n, o) for n in ARCHS for o in ARCHS if n != o])
def test_wrong_family(saved, name, other):
    _, path = saved[other]
    arch = ARCHITECTURES.get(name)
    with pytest.raises(UserError) as info:
        arch.build(None, checkpoint=str(path))
    msg = str(info.value)
    assert repr(FAMILY[other]) in msg and repr(FAMILY[name]) in msg and name in msg
    with pytest.raises(UserError):
        arch.check_checkpoint(str(path))


def test_qwen3_to_hybrid_message(saved):
    _, path = saved["transformer"]
    with pytest.raises(UserError, match=r"'qwen3'.*hybrid needs 'nemotron_h'"):
        ARCHITECTURES.get("hybrid").build(None, checkpoint=str(path))


@pytest.mark.parametrize("name", ARCHS)
def test_missing_directory(tmp_path, name):
    with pytest.raises(UserError, match="not found"):
        ARCHITECTURES.get(name).build(None, checkpoint=str(tmp_path / "nope"))


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "config.json"
    f.write_text("{}")
    with pytest.raises(UserError, match="not found"):
        ARCHITECTURES.get("transformer").build(None, checkpoint=str(f))


@pytest.mark.parametrize("name", ARCHS)
def test_directory_without_config(tmp_path, name):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="no config.json"):
        ARCHITECTURES.get(name).build(None, checkpoint=str(tmp_path))


@pytest.mark.parametrize("text", [
    "{not json",
    "",
    "[]",
    "null",
])
def test_unreadable_config(tmp_path, text):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(UserError):
        ARCHITECTURES.get("transformer").build(None, checkpoint=str(tmp_path))


def test_config_without_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(UserError, match="None"):
        ARCHITECTURES.get("transformer").build(None, checkpoint=str(tmp_path))


# --- through the CLI ---------------------------------------------------------------------------


def _run_args(arch, checkpoint):
    return ["run", "--arch", arch, "--checkpoint", str(checkpoint), "--repeats", "1", "--warmup", "0",
            "--frames", "2", "--new-tokens", "1"]


def test_cli_wrong_family_subprocess(saved):
    _, path = saved["transformer"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *_run_args("hybrid", path)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("viperbench: error:")
    assert "'qwen3'" in lines[0] and "'nemotron_h'" in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize("case", ["missing", "no-config", "wrong-family"])
def test_cli_bad_checkpoint_in_process(saved, tmp_path, capsys, case):
    if case == "missing":
        path, expect = tmp_path / "nope", "not found"
    elif case == "no-config":
        path, expect = tmp_path, "no config.json"
    else:
        path, expect = saved["mamba"][1], "'mamba2'"
    assert main(_run_args("transformer", path)) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("viperbench: error:") and expect in lines[0]
    assert captured.out == ""
