"""Real video LLMs from the command line: eval and run with --checkpoint, paper presets, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from architectures import ARCHITECTURES
from bench.cli import main
from tasks import fixtures
from tests.test_cli_errors import user_error
from tests.test_families import library_kwargs, library_model

FAMILIES = ["qwen3_vl", "qwen3_vl_moe", "nemotron_h_omni", "llava_onevision"]


@pytest.fixture(scope="session")
def ckpts(family_checkpoints):
    return family_checkpoints


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videomme")
    fixtures.make_videomme(root, videos=2)
    return root


@pytest.mark.parametrize("arch", FAMILIES)
def test_eval_videomme_equals_library_generate_per_document(arch, ckpts, data, tmp_path, capsys):
    from tasks.video import load_frames
    from tasks.videomme import VideoMME

    log = tmp_path / "docs.jsonl"
    argv = ["eval", "--task", "videomme", "--data", str(data), "--checkpoint", ckpts[arch], "--frames", "4",
            "--limit", "3", "--log", str(log)]
    assert main(argv) == 0, capsys.readouterr().err
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    task = VideoMME(str(data))
    docs = {d.id: d for d in task.docs()}
    bb = ARCHITECTURES.get(arch).build(checkpoint=ckpts[arch])
    lib = library_model(arch, ckpts[arch])
    assert len(entries) == 3
    for entry in entries:
        assert entry["error"] is None
        doc = docs[entry["id"]]
        inputs = bb.processor_inputs(load_frames(data / doc.video, frames=4), doc.prompt)
        with torch.inference_mode():
            out = lib.generate(**library_kwargs(arch, lib, inputs), max_new_tokens=task.max_new_tokens,
                               do_sample=False)
        text = bb.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert entry["output"] == text


@pytest.mark.parametrize("arch", FAMILIES)
def test_run_with_a_checkpoint_and_a_compressor(arch, ckpts, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    argv = ["run", "--checkpoint", ckpts[arch], "--compressor", "fastv:layer=1,p=0.5", "--frames", "4",
            "--prompt-tokens", "4", "--new-tokens", "2", "--warmup", "0", "--repeats", "1", "--output", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    record = json.loads(out.read_text().splitlines()[0])
    assert record["status"] == "ok", record["error"]
    m = record["metrics"]
    assert record["spec"]["arch"] == arch
    assert 0 < m["vision_tokens"] < m["input_tokens"]
    assert m["tokens_after_compression"] == m["input_tokens"] - m["vision_tokens"] // 2


def test_run_preset_of_each_family(tmp_path, capsys):
    for arch in ("qwen3_vl_moe", "nemotron_h_omni"):
        out = tmp_path / f"{arch}.jsonl"
        argv = ["run", "--arch", arch, "--preset", "tiny", "--compressor", "visionzip:dominant=2,contextual=1",
                "--frames", "4", "--prompt-tokens", "4", "--new-tokens", "2", "--warmup", "0", "--repeats", "1",
                "--output", str(out)]
        assert main(argv) == 0, capsys.readouterr().err
        record = json.loads(out.read_text().splitlines()[0])
        assert record["metrics"]["tokens_after_compression"] < record["metrics"]["input_tokens"]


@pytest.mark.parametrize("arch, total, active", [("qwen3_vl_moe", (30.5e9, 31.5e9), (3.0e9, 4.5e9)),
                                                 ("nemotron_h_omni", (31e9, 33e9), (3.0e9, 4.5e9))])
def test_paper_presets_count_total_and_active_parameters_on_meta(arch, total, active):
    counts = ARCHITECTURES.get(arch).param_counts("paper")
    assert total[0] < counts["total"] < total[1]
    assert active[0] < counts["active"] < active[1]


# --- bad input: one line, exit 2, before anything runs ----------------------------------------

def _copy(ckpt, tmp_path, name="c"):
    dst = tmp_path / name
    shutil.copytree(ckpt, dst)
    return dst


def _run(path, *extra):
    return ["run", "--checkpoint", str(path), "--frames", "4", "--warmup", "0", "--repeats", "1", *extra]


def test_unsupported_model_type_lists_the_supported(ckpts, tmp_path, capsys):
    dst = _copy(ckpts["qwen3_vl"], tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_type"] = "gemma3"
    (dst / "config.json").write_text(json.dumps(cfg))
    user_error(capsys, _run(dst), "unsupported model_type 'gemma3'", "qwen3_vl", "llava_onevision", "nemotron_h_omni")


def test_remote_code_is_refused(ckpts, tmp_path, capsys):
    dst = _copy(ckpts["qwen3_vl"], tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_x.X"}
    (dst / "config.json").write_text(json.dumps(cfg))
    user_error(capsys, _run(dst), "needs remote code", "refused")


@pytest.mark.parametrize("missing, needle", [("model.safetensors", "weights"), ("tokenizer.json", "tokenizer"),
                                             ("processor_config.json", "processor"),
                                             ("chat_template.jinja", "chat template")])
def test_missing_files_are_named(ckpts, tmp_path, capsys, missing, needle):
    dst = _copy(ckpts["llava_onevision"], tmp_path)
    (dst / missing).unlink()
    user_error(capsys, _run(dst), needle, missing)


@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen3_vl_moe"])
@pytest.mark.parametrize("spec, needle", [("uniform:layer=99,p=0.5", "layer 99"),
                                          ("stc_cacher", "own-layout vision tower")])
def test_compressor_that_cannot_apply(ckpts, capsys, arch, spec, needle):
    user_error(capsys, _run(ckpts[arch], "--compressor", spec), needle)


def test_one_video_per_batch(ckpts, capsys):
    user_error(capsys, _run(ckpts["nemotron_h_omni"], "--batch", "2"), "one video per batch")


def test_checkpoint_chat_template_gives_ids_not_keys(ckpts):
    """Fix: apply_chat_template(tokenize=True) returns a BatchEncoding; the prompt ids are its input_ids."""
    from transformers import AutoTokenizer

    from architectures.tokenizer import CheckpointTokenizer

    path = ckpts["llava_onevision"]
    tok = CheckpointTokenizer(path)
    raw = AutoTokenizer.from_pretrained(path)
    raw.chat_template = (raw.chat_template or
                         "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    tok.tok = raw
    ids = tok.encode_prompt("what is in the video ?")
    assert ids and all(isinstance(i, int) for i in ids)
    text = raw.apply_chat_template([{"role": "user", "content": "what is in the video ?"}],
                                   add_generation_prompt=True, tokenize=False)
    assert ids == raw(text, add_special_tokens=False)["input_ids"]
