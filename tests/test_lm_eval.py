"""The lm-eval adapter: scores equal the library's, and a local-data task runs end to end offline."""

from __future__ import annotations

import json
import types
from unittest import mock

import pytest
import torch

pytest.importorskip("lm_eval")

from bench.cli import main  # noqa: E402
from bench.errors import UserError  # noqa: E402
from bench.evaluation.lm_eval_model import MODEL_ARGS, ViperbenchLM, with_default_device  # noqa: E402


@pytest.fixture(scope="module")
def lm():
    return ViperbenchLM(arch="hybrid", preset="tiny")


def request(*args):
    return types.SimpleNamespace(args=args)


def test_loglikelihood_equals_the_library_forward(lm):
    context, continuation = "The video shows", " a red card"
    (score, greedy), = lm.loglikelihood([request(context, continuation)])
    ctx = [lm.tok.bos_id] + lm.tok.encode_prompt(context)
    cont = lm.tok.encode_prompt(continuation)
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logp = lm.backbone.model(input_ids=ids).logits[0].float().log_softmax(-1)
    expected = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
    assert score == pytest.approx(expected, abs=1e-3)
    assert greedy == all(int(logp[len(ctx) - 1 + k].argmax()) == t for k, t in enumerate(cont))


def test_rolling_is_the_loglikelihood_of_the_text_after_bos(lm):
    text = "hello world, hello video"
    (rolling,) = lm.loglikelihood_rolling([request(text)])
    ((direct, _),) = lm.loglikelihood([request("", text)])
    assert rolling == pytest.approx(direct, abs=1e-3)
    lm.max_length = 8  # windows: every token still scored once
    try:
        (windowed,) = lm.loglikelihood_rolling([request(text)])
    finally:
        lm.max_length = 4096
    assert windowed < 0 and windowed != rolling


def test_generate_until_is_greedy_and_stops(lm):
    (free,) = lm.generate_until([request("Once", {"max_gen_toks": 6})])
    assert len(lm.tok.encode_prompt(free)) <= 6
    if free[2:3]:
        (cut,) = lm.generate_until([request("Once", {"max_gen_toks": 6, "until": [free[2]]})])
        assert cut == free.split(free[2])[0]


def _local_tasks(root):
    rows = {
        "mc": [{"question": f"2+{i}=", "choices": [str(2 + i), "x", "y"], "answer": 0} for i in range(3)],
        "gen": [{"question": f"say {i}", "answer": str(i)} for i in range(2)],
        "text": [{"text": "hello world " * (i + 1)} for i in range(2)],
    }
    for name, items in rows.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    head = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n"
    (root / "mc.yaml").write_text("task: vb_mc\n" + head.format(path=root / "mc.jsonl") + (
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n"))
    (root / "gen.yaml").write_text("task: vb_gen\n" + head.format(path=root / "gen.jsonl") + (
        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 3\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"))
    (root / "text.yaml").write_text("task: vb_text\n" + head.format(path=root / "text.jsonl") + (
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n"))


def test_local_task_through_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _local_tasks(tasks)
    out = tmp_path / "results"
    code = main(["lm-eval", "--model", "viperbench", "--model_args",
                 "arch=transformer,preset=tiny,compressor=uniform:p=0.5", "--tasks", "vb_mc,vb_gen,vb_text",
                 "--include_path", str(tasks), "--output_path", str(out)])  # no --device: the one that exists
    assert code == 0
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert 0.0 <= results["vb_mc"]["acc,none"] <= 1.0
    assert 0.0 <= results["vb_gen"]["exact_match,none"] <= 1.0
    assert results["vb_text"]["word_perplexity,none"] > 1.0


# --- model_args: every key checked, lm-eval's own device merged ---------------------------------

LM_EVAL_EXTRAS = {"batch_size": 1, "max_batch_size": None, "device": None}  # what lm-eval passes every model


@pytest.mark.parametrize("model_args, needle", [
    ("arch=transformer,compresor=uniform:p=0.5", "unknown model_args key(s) 'compresor'"),
    ("arch=transformer,pretrained=x,trust_remote_code=true", "'pretrained', 'trust_remote_code'"),
    ("arch=transformer,max_length=abc", "max_length='abc': must be an integer >= 1"),
    ("arch=transformer,max_length=0", "max_length=0: must be an integer >= 1"),
    ("arch=transformer,max_length=2.5", "max_length=2.5"),
    ("arch=transformer,max_length=true", "max_length=True"),
    ("arch=transformer,prefill_chunk=x", "prefill_chunk='x'"),
    ("arch=transformer,prefill_chunk=-4", "prefill_chunk=-4"),
    ("arch=transformer,seed=-1", "seed=-1: must be an integer >= 0"),
    ("arch=transformer,seed=1.5", "seed=1.5"),
    ("arch=transformer,preset=false", "preset=False"),
    ("arch=transformer,preset=huge", "unknown preset 'huge'"),
])
def test_model_args_unknown_keys_and_wrong_types_are_one_line(model_args, needle):
    with pytest.raises(UserError) as info:
        ViperbenchLM.create_from_arg_string(model_args, LM_EVAL_EXTRAS)
    assert needle in str(info.value) and "\n" not in str(info.value)
    if "unknown model_args" in needle:
        assert f"valid: {', '.join(MODEL_ARGS)}" in str(info.value)


def test_model_args_typed_values_reach_the_model():
    lm = ViperbenchLM.create_from_arg_string("arch=transformer,preset=tiny,max_length=77,seed=3,prefill_chunk=8,"
                                             "compressor=uniform:p=0.5", LM_EVAL_EXTRAS)
    assert lm.max_length == 77 and lm.spec.seed == 3 and lm.spec.prefill_chunk == 8
    assert lm.compressor.name == "uniform"


@pytest.mark.parametrize("model_args, lm_eval_device, expected", [
    ("arch=transformer,device=cpu", None, "cpu"),  # was a TypeError: device given twice
    ("arch=transformer,device=cpu", "cuda:0", "cpu"),  # model_args wins
    ("arch=transformer", "cpu", "cpu"),  # lm-eval's --device
])
def test_device_from_model_args_or_lm_eval(model_args, lm_eval_device, expected):
    lm = ViperbenchLM.create_from_arg_string(model_args, {**LM_EVAL_EXTRAS, "device": lm_eval_device})
    assert lm.spec.device == expected


def test_default_device_is_the_one_that_exists():
    run = ["--model", "viperbench", "--tasks", "t"]
    with mock.patch("torch.cuda.is_available", return_value=False):
        assert with_default_device(run) == [*run, "--device", "cpu"]
        assert with_default_device(["run", *run]) == ["run", *run, "--device", "cpu"]
        assert with_default_device([*run, "--device", "cuda"]) == [*run, "--device", "cuda"]  # the user's choice
        assert with_default_device([*run, "--device=cuda:1"]) == [*run, "--device=cuda:1"]
        assert with_default_device(["ls", "tasks"]) == ["ls", "tasks"]  # not an evaluation
    with mock.patch("torch.cuda.is_available", return_value=True):
        assert with_default_device(run) == run  # lm-eval's own default, CUDA
