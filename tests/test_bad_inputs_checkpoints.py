"""Bad checkpoints and bad lm-eval model_args: exit 2, one stderr line naming the problem, no traceback.

Issue 15, items 3 (corrupt weights in any part, through every command that loads a checkpoint),
4 (config.json of the wrong type or shape), 16 (remote code refused the same way whether the
arch is detected or given), 14 (missing tokenizer, a missing video's path, the V-NIAH cache),
15 (only the error line on stderr, in a child process) and 10 (lm-eval model_args).
Every row copies a small checkpoint written by the library's own ``save_pretrained`` (or by
``viperbench train``), breaks one file, and runs one command on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from architectures import ARCHITECTURES
from architectures.families.offline import write_checkpoint
from bench.train import TrainSettings, train
from tests.bad_input import child_user_error, user_error

TRANSV = "transv:schedule=uni_1_0.5"
TRAIN = dict(arch="transformer", steps=1, batch=1, lengths=(2,), save_every=1)  # what TRAIN_ARGV asks for


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """kind -> a checkpoint directory: trained (own layout, TransV too), sharded, bare (no tokenizer), family."""
    root = tmp_path_factory.mktemp("ckpts")
    train(TrainSettings(output=str(root / "trained"), **TRAIN), progress=False)
    train(TrainSettings(output=str(root / "transv"), checkpoint=str(root / "trained"), train="transv",
                        compressor=TRANSV, **TRAIN), progress=False)
    bb = ARCHITECTURES.get("transformer").build("tiny", seed=1)
    bb.model.save_pretrained(root / "sharded", max_shard_size="200KB")
    bare = root / "bare"
    shutil.copytree(root / "trained", bare)
    (bare / "byte_tokenizer.json").unlink()
    write_checkpoint("qwen3_vl", "tiny", root / "family")
    return {p.name: p for p in root.iterdir()}


@pytest.fixture(scope="module")
def lm_tasks(tmp_path_factory):
    pytest.importorskip("lm_eval")
    from tests.test_lm_eval import _local_tasks

    root = tmp_path_factory.mktemp("lm_tasks")
    _local_tasks(root)
    return root


@pytest.fixture(autouse=True)
def offline_cache(tmp_path_factory, monkeypatch):
    """V-NIAH's generated data and lm-eval's datasets under one test cache, nothing fetched."""
    cache = tmp_path_factory.getbasetemp() / "viperbench-cache"
    monkeypatch.setenv("VIPERBENCH_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    from tasks.vniah import VNIAH

    VNIAH.default_data(0)  # generated once, before a test reads stderr


# --- ways to break a file ------------------------------------------------------------------------

def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 16)


def empty(path: Path) -> None:
    path.write_bytes(b"")


def last_shard(root: Path) -> Path:
    return sorted(root.glob("model-*.safetensors"))[-1]


def edit_json(path: Path, change) -> None:
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def drop_a_tensor(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    del tensors[sorted(tensors)[3]]
    save_file(tensors, str(path), metadata={"format": "pt"})


# --- commands ----------------------------------------------------------------------------------

def run_argv(ckpt, lm_tasks, *extra):
    return ["run", "--checkpoint", str(ckpt), "--frames", "2", "--warmup", "0", "--repeats", "1",
            "--new-tokens", "1", *extra]


def eval_argv(ckpt, lm_tasks, *extra):
    return ["eval", "--task", "vniah", "--checkpoint", str(ckpt), "--frames", "2", "--limit", "1",
            "--tokens-per-frame", "4", *extra]


def train_resume_argv(ckpt, lm_tasks):  # the same settings as the fixture's run, two steps: a resume
    return ["train", "--arch", "transformer", "--output", str(ckpt), "--steps", "2", "--batch", "1",
            "--save-every", "1", "--lengths", "2", "--no-progress"]


def train_from_argv(ckpt, lm_tasks):
    return ["train", "--arch", "transformer", "--checkpoint", str(ckpt), "--train", "transv", "--compressor", TRANSV,
            "--output", str(Path(ckpt).parent / "out"), "--steps", "1", "--batch", "1", "--lengths", "2",
            "--no-progress"]


def lm_eval_argv(ckpt, lm_tasks, model_args=None):
    return ["lm-eval", "--model", "viperbench", "--model_args", model_args or f"checkpoint={ckpt}",
            "--tasks", "vb_mc", "--include_path", str(lm_tasks)]


COMMANDS = {"run": run_argv, "run-siglip": lambda c, t: run_argv(c, t, "--vision", "siglip"),
            "run-transv": lambda c, t: run_argv(c, t, "--compressor", TRANSV), "eval": eval_argv,
            "eval-transv": lambda c, t: eval_argv(c, t, "--compressor", TRANSV), "train-resume": train_resume_argv,
            "train-from": train_from_argv, "lm-eval": lm_eval_argv}


def broken(ckpts, tmp_path, kind: str, part: str, damage) -> Path:
    dst = tmp_path / kind
    shutil.copytree(ckpts[kind], dst)
    damage(last_shard(dst) if part == "shard" else dst / part)
    return dst


def needs_lm_tasks(request, command):
    return request.getfixturevalue("lm_tasks") if command == "lm-eval" else None


# --- item 3: corrupt weights in any part, through every command ------------------------------------

CORRUPT = [  # (checkpoint, part, damage, command)
    ("trained", "model.safetensors", truncate, "run"),
    ("trained", "model.safetensors", garbage, "eval"),
    ("trained", "model.safetensors", empty, "run"),
    ("trained", "model.safetensors", truncate, "train-resume"),
    ("trained", "model.safetensors", garbage, "train-from"),
    ("sharded", "shard", truncate, "run"),
    ("sharded", "shard", garbage, "lm-eval"),
    ("trained", "vision/model.safetensors", truncate, "run-siglip"),
    ("trained", "vision/model.safetensors", garbage, "eval"),
    ("trained", "vision/model.safetensors", empty, "train-from"),
    ("trained", "projector.safetensors", truncate, "eval"),
    ("trained", "projector.safetensors", garbage, "train-resume"),
    ("transv", "transv.safetensors", truncate, "run-transv"),
    ("transv", "transv.safetensors", garbage, "eval-transv"),
    ("family", "model.safetensors", truncate, "run"),
    ("family", "model.safetensors", garbage, "eval"),
]


@pytest.mark.parametrize("kind, part, damage, command", CORRUPT,
                         ids=[f"{k}-{p}-{d.__name__}-{c}" for k, p, d, c in CORRUPT])
def test_corrupt_weights_name_the_file(ckpts, tmp_path, capfd, request, kind, part, damage, command):
    dst = broken(ckpts, tmp_path, kind, part, damage)
    name = last_shard(dst).name if part == "shard" else part
    user_error(capfd, COMMANDS[command](dst, needs_lm_tasks(request, command)), "cannot read weights file", name)


WEIGHTS_INDEX = [  # (damage of the index or its shards, needles)
    (garbage, ("model.safetensors.index.json",)),
    (lambda p: edit_json(p, lambda raw: raw["weight_map"].update({"x": "model-09-of-09.safetensors"})),
     ("model-09-of-09.safetensors", "missing")),
    (lambda p: edit_json(p, lambda raw: raw.pop("weight_map")), ("model.safetensors.index.json", "weight_map")),
]


@pytest.mark.parametrize("damage, needles", WEIGHTS_INDEX, ids=["garbage", "missing-shard", "no-weight-map"])
def test_bad_weights_index_is_named(ckpts, tmp_path, capfd, damage, needles):
    dst = broken(ckpts, tmp_path, "sharded", "model.safetensors.index.json", damage)
    user_error(capfd, run_argv(dst, None), *needles)


@pytest.mark.parametrize("kind, part, command", [("trained", "model.safetensors", "run"),
                                                 ("trained", "vision/model.safetensors", "run-siglip"),
                                                 ("family", "model.safetensors", "run")])
def test_weights_lacking_a_tensor_are_refused_not_filled_at_random(ckpts, tmp_path, capfd, kind, part, command):
    dst = broken(ckpts, tmp_path, kind, part, drop_a_tensor)
    user_error(capfd, COMMANDS[command](dst, None), "weights lack 1 tensor", "refused")


# --- item 4: config.json of the wrong type or shape ----------------------------------------------

def set_field(*keys, value="big"):
    def change(raw):
        for key in keys[:-1]:
            raw = raw[key]
        raw[keys[-1]] = value
    return lambda p: edit_json(p, change)


CONFIGS = [  # (checkpoint, config file, damage, command, needles)
    ("trained", "config.json", set_field("hidden_size"), "run", ("config.json", "'hidden_size'", "'big'")),
    ("trained", "config.json", set_field("num_hidden_layers", value=2.5), "train-resume",
     ("config.json", "'num_hidden_layers'")),
    ("trained", "config.json", set_field("rms_norm_eps", value="tiny"), "eval", ("config.json", "'rms_norm_eps'")),
    ("family", "config.json", set_field("text_config", "hidden_size"), "run", ("config.json", "hidden_size")),
    ("trained", "vision/config.json", set_field("hidden_size"), "eval", ("vision/config.json", "'hidden_size'")),
    ("trained", "vision/config.json", garbage, "run-siglip", ("vision/config.json",)),
    ("trained", "config.json", lambda p: p.write_text("{not json"), "run", ("config.json", "unreadable")),
    ("family", "config.json", lambda p: p.write_text("[1, 2]"), "eval", ("config.json", "not a JSON object")),
    ("trained", "config.json", lambda p: edit_json(p, lambda raw: raw.pop("model_type")), "run",
     ("config.json", "model_type")),
    ("family", "config.json", set_field("model_type", value=7), "run", ("config.json", "model_type")),
    ("trained", "config.json", set_field("hidden_size", value=-5), "run", ("config.json", "negative dimension")),
    ("trained", "config.json", set_field("hidden_size", value=48), "eval",
     ("config.json", "do not have the shapes", "[512, 48]")),
    ("family", "config.json", set_field("text_config", "intermediate_size", value=40), "run",
     ("config.json", "do not have the shapes")),
]


@pytest.mark.parametrize("kind, part, damage, command, needles", CONFIGS,
                         ids=[f"{k}-{p}-{i}-{c}" for i, (k, p, _, c, _) in enumerate(CONFIGS)])
def test_bad_config_names_the_file_and_field(ckpts, tmp_path, capfd, request, kind, part, damage, command, needles):
    dst = broken(ckpts, tmp_path, kind, part, damage)
    user_error(capfd, COMMANDS[command](dst, needs_lm_tasks(request, command)), *needles)


@pytest.mark.parametrize("arch", ["transformer", "mamba", "hybrid"])
def test_wrongly_typed_field_with_arch_given(tmp_path, capfd, arch):
    ARCHITECTURES.get(arch).build("tiny").model.save_pretrained(tmp_path / arch)
    edit_json(tmp_path / arch / "config.json", lambda raw: raw.update(hidden_size="big"))
    user_error(capfd, run_argv(tmp_path / arch, None, "--arch", arch), "config.json", "'hidden_size'")


# --- item 16: remote code, refused alike whether the arch is detected or given ---------------------

@pytest.mark.parametrize("kind, arch", [("trained", "transformer"), ("family", "qwen3_vl"), ("sharded", "transformer")])
def test_auto_map_is_refused_alike_detected_or_given(ckpts, tmp_path, capfd, kind, arch):
    dst = broken(ckpts, tmp_path, kind, "config.json",
                 lambda p: edit_json(p, lambda raw: raw.update(auto_map={"AutoModelForCausalLM": "modeling_x.X"})))
    detected = user_error(capfd, run_argv(dst, None), "needs remote code", "auto_map", "refused")
    given = user_error(capfd, run_argv(dst, None, "--arch", arch), "needs remote code", "auto_map", "refused")
    assert detected == given


# --- item 14: the missing tokenizer, a missing video, the V-NIAH cache ------------------------------

@pytest.mark.parametrize("command", ["eval"])  # lm-eval: test_child_lm_eval_bad_input_prints_one_line
def test_missing_tokenizer_names_the_files_looked_for(ckpts, capfd, request, command):
    user_error(capfd, COMMANDS[command](ckpts["bare"], needs_lm_tasks(request, command)), "has no tokenizer",
               "tokenizer.json", "tokenizer.model", "vocab.json", "byte_tokenizer.json")


def test_missing_video_path_is_printed_once(ckpts, tmp_path, capfd, monkeypatch):
    from tasks.vniah import Config, generate

    generate(tmp_path / "data", Config(lengths=(2,), depths=(0.0,), per_cell=1))
    video = next((tmp_path / "data").rglob("*.mp4"))
    video.unlink()
    monkeypatch.chdir(tmp_path)  # a relative --data, as a user types it
    from bench.cli import main

    assert main(eval_argv(ckpts["trained"], None, "--data", "data")) == 0
    warning = capfd.readouterr().err
    relative = str(video.relative_to(tmp_path))
    assert f"cannot read video {relative}: no such file" in warning, warning
    assert "data/data" not in warning


def test_generated_vniah_data_goes_under_viperbench_cache_dir(tmp_path, monkeypatch):
    from tasks import vniah

    monkeypatch.setenv("VIPERBENCH_CACHE_DIR", str(tmp_path / "vb"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(vniah, "generate", lambda root, config: Path(root))  # where, not what
    assert vniah.VNIAH.default_data(3) == str(tmp_path / "vb" / "vniah" / "seed-3")
    monkeypatch.delenv("VIPERBENCH_CACHE_DIR")
    assert vniah.VNIAH.default_data(3) == str(tmp_path / "xdg" / "viperbench" / "vniah" / "seed-3")


# --- item 15: only the error line on stderr, in a real process --------------------------------------

def test_child_load_failing_after_the_progress_bar_prints_one_line(ckpts, tmp_path):
    dst = broken(ckpts, tmp_path, "trained", "model.safetensors", drop_a_tensor)  # fails once every tensor is read
    child_user_error(run_argv(dst, None), "weights lack 1 tensor")
    dst = broken(ckpts, tmp_path, "sharded", "shard", truncate)
    child_user_error(run_argv(dst, None), "cannot read weights file", last_shard(dst).name)


def test_child_lm_eval_bad_input_prints_one_line(ckpts, lm_tasks, tmp_path):
    child_user_error(lm_eval_argv(None, lm_tasks, "arch=transformer,preset=tiny,compresor=uniform:p=0.5"),
                     "unknown model_args key(s) 'compresor'", "valid: arch")
    child_user_error(lm_eval_argv(ckpts["bare"], lm_tasks), "has no tokenizer")


# --- item 10: lm-eval model_args (through the command line; every key and type in tests/test_lm_eval.py) -----

MODEL_ARGS = [  # one row through the command line; the rest of the keys and types in tests/test_lm_eval.py
    ("arch=transformer,preset=tiny,max_length=abc", ("max_length='abc'", "integer")),
]


@pytest.mark.parametrize("model_args, needles", MODEL_ARGS, ids=[m.split(",")[-1] for m, _ in MODEL_ARGS])
def test_lm_eval_model_args_are_checked(lm_tasks, capfd, model_args, needles):
    user_error(capfd, lm_eval_argv(None, lm_tasks, model_args), *needles)


def test_lm_eval_unknown_task_is_one_line(lm_tasks, capfd):
    argv = lm_eval_argv(None, lm_tasks, "arch=transformer,preset=tiny")
    argv[argv.index("vb_mc")] = "vb_nosuch"
    user_error(capfd, argv, "lm-eval: Tasks not found", "vb_nosuch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_lm_eval_cuda_without_cuda_is_one_line(lm_tasks, capfd):
    user_error(capfd, [*lm_eval_argv(None, lm_tasks, "arch=transformer,preset=tiny"), "--device", "cuda"],
               "--device cuda", "no CUDA device")
