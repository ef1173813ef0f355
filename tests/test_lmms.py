"""lmms-eval's model ``viperbench`` on local tasks with tiny mp4s (extra ``lmms``; skipped without lmms-eval).

lmms-eval's own ``videomme`` task on a local Video-MME copy gives the prompt, output and score of
``viperbench eval --task videomme`` for every document (an own backbone and a real family); a
local open-ended task, every backbone kind and each family's checkpoint, with and without a
compressor; ``model_args`` checked to one line; images, several videos and loglikelihood refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from bench.cli import main  # noqa: E402
from bench.errors import UserError  # noqa: E402
from bench.evaluation.evaluate import evaluate  # noqa: E402
from bench.evaluation.lmms_model import ViperbenchLMMS  # noqa: E402
from bench.evaluation.lmms_tasks import write_local_task  # noqa: E402
from bench.spec import make_spec  # noqa: E402
from tasks import fixtures  # noqa: E402

FRAMES = 4
OPEN_TASK = """task: tiny_open
dataset_path: json
dataset_kwargs:
  data_files:
    test: docs.jsonl
test_split: test
output_type: generate_until
doc_to_visual: !function tiny_open_utils.doc_to_visual
doc_to_text: "{{question}}"
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 6
  until: ["\\n"]
process_results: !function tiny_open_utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
OPEN_UTILS = """def doc_to_visual(doc):
    return [doc["video"]]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}
"""


@pytest.fixture(scope="module")
def local(tmp_path_factory, monkeypatch_module):
    """A Video-MME copy (one video, three questions), lmms-eval's videomme on it, an open-ended task, and
    lmms-eval's task index over both (built once)."""
    root = tmp_path_factory.mktemp("lmms")
    monkeypatch_module.setenv("HF_HOME", str(root / "hf"))  # lmms-eval's dataset cache, offline
    monkeypatch_module.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    data = root / "videomme"
    fixtures.make_videomme(data, videos=1, seconds=2)
    tasks = root / "tasks"
    write_local_task("videomme", str(data), str(tasks))
    video = next((data / "data").glob("*.mp4"))
    (tasks / "docs.jsonl").write_text("".join(json.dumps({"video": str(video), "question": q, "answer": a}) + "\n"
                                              for q, a in [("What moves?", "squares"), ("How many?", "two")]))
    (tasks / "tiny_open.yaml").write_text(OPEN_TASK)
    (tasks / "tiny_open_utils.py").write_text(OPEN_UTILS)
    from lmms_eval.models import MODEL_REGISTRY_V2
    from lmms_eval.tasks import TaskManager

    from bench.evaluation.lmms_entry import MANIFEST

    MODEL_REGISTRY_V2.register_manifest(MANIFEST, overwrite=True)
    return {"data": data, "tasks": tasks, "index": TaskManager("WARNING", include_path=str(tasks),
                                                                model_name="viperbench")}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def lmms(local, model_args: str, task: str = "videomme_local", limit: int | None = None) -> dict:
    from lmms_eval import evaluator

    return evaluator.simple_evaluate(model="viperbench", model_args=model_args, tasks=[task],
                                     task_manager=local["index"], limit=limit, log_samples=True,
                                     verbosity="WARNING")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def per_document(samples: list[dict]) -> dict:
    """lmms-eval's samples, as it returns them -> {question_id: (prompt, output, score)}."""
    return {s["videomme_perception_score"]["question_id"]: (s["arguments"][0], s["resps"][0][0],
                                                            s["videomme_perception_score"]["score"])
            for s in samples}


def viperbench_eval(data: Path, log: Path, **cell) -> dict:
    evaluate(make_spec({"task": "videomme", "frames": FRAMES, "vision": "siglip", "warmup": 0, "repeats": 1,
                        **cell}), str(data), log=str(log))
    return {d["id"]: (d["prompt"], d["output"], float(d["score"]["correct"])) for d in lines(log)}


def test_lmms_eval_videomme_equals_viperbench_eval_through_the_command_line(local, tmp_path, capsys):
    """The own hybrid, through `viperbench lmms-eval` (lmms-eval's own command line, in this process)."""
    out = tmp_path / "out"
    code = main(["lmms-eval", "--model", "viperbench", "--model_args", f"arch=hybrid,preset=tiny,frames={FRAMES}",
                 "--tasks", "videomme_local", "--include_path", str(local["tasks"]), "--output_path", str(out),
                 "--log_samples", "--verbosity", "WARNING"])
    assert code == 0, capsys.readouterr().err
    samples = [json.loads(line) for f in out.rglob("*_samples_videomme_local.jsonl") for line in f.open()]
    ours = viperbench_eval(local["data"], tmp_path / "eval.jsonl", arch="hybrid", preset="tiny")
    docs = lines(out / "viperbench_docs.jsonl")  # next to lmms-eval's samples: outputs, token counts, stage times
    # the samples file keeps the output as lmms-eval filters it (whitespace stripped); the log keeps it whole
    assert {s["videomme_perception_score"]["question_id"]: (s["input"], d["output"], s["videomme_perception_score"]
                                                             ["score"]) for s, d in zip(samples, docs)} == ours
    assert [s["filtered_resps"] for s in samples] == [d["output"].strip() for d in docs] and len(ours) == 3
    assert [d["error"] for d in docs] == [None] * 3 and all(d["timings"]["prefill_s"] > 0 for d in docs)
    assert all(s["token_counts"][0]["input_tokens"] == d["tokens_in"] for s, d in zip(samples, docs))
    (record,) = lines(out / "viperbench.jsonl")
    assert record["kind"] == "eval" and record["task"]["name"] == "videomme_local"
    assert record["task"]["metrics"]["videomme_perception_score"] == pytest.approx(
        100 * sum(v[2] for v in ours.values()) / 3)
    assert record["metrics"]["input_tokens"] == docs[0]["tokens_in"] and record["spec"]["frames"] == FRAMES


def test_lmms_eval_videomme_equals_viperbench_eval_for_a_real_family(local, family_checkpoints, tmp_path):
    ckpt = family_checkpoints["qwen3_vl"]
    result = lmms(local, f"checkpoint={ckpt},frames={FRAMES}")
    ours = viperbench_eval(local["data"], tmp_path / "eval.jsonl", checkpoint=ckpt)
    assert per_document(result["samples"]["videomme_local"]) == ours


@pytest.mark.parametrize("args", ["arch=transformer,preset=tiny",
                                  "arch=mamba,preset=tiny,compressor=uniform:layer=1;p=0.5",
                                  "arch=hybrid,preset=tiny,compressor=transv:schedule=uni_2_0.5;init=random,fps=2"])
def test_every_backbone_kind_on_an_open_ended_task(local, tmp_path, args):
    log = tmp_path / "docs.jsonl"
    result = lmms(local, f"{args},frames={FRAMES},log={log}", task="tiny_open")
    assert 0 <= result["results"]["tiny_open"]["exact_match,none"] <= 1
    docs = lines(log)
    assert [d["error"] for d in docs] == [None, None] and all("\n" not in d["output"] for d in docs)
    if "compressor" in args:
        assert all(d["tokens_after_compression"] < d["tokens_in"] for d in docs)


@pytest.mark.parametrize("arch, compressor", [("qwen3_vl_moe", "fastv:layer=1;p=0.5"), ("nemotron_h_omni", "evs:p=0.5"),
                                              ("llava_onevision", "none")])
def test_each_family_checkpoint_on_videomme(local, family_checkpoints, tmp_path, arch, compressor):
    log = tmp_path / "docs.jsonl"
    lmms(local, f"checkpoint={family_checkpoints[arch]},frames={FRAMES},compressor={compressor},log={log}",
         limit=2)
    docs = lines(log)
    assert [d["error"] for d in docs] == [None, None]
    assert all(d["tokens_after_compression"] <= d["tokens_in"] for d in docs)


# --- model_args and what is refused ---------------------------------------------------------------

@pytest.mark.parametrize("model_args, needle", [
    ("arch=hybrid,fram=4", "unknown model_args key(s) 'fram'"),
    ("arch=hybrid,frames=0", "frames=0: must be an integer >= 1"),
    ("arch=hybrid,frames=2.5", "frames=2.5"),
    ("arch=hybrid,fps=fast", "fps='fast': must be a number > 0"),
    ("arch=hybrid,fps=0", "fps=0"),
    ("arch=hybrid,log=true", "log=True: must be a name or a path"),
    ("arch=hybrid,vision=clip", "unknown vision 'clip'"),
    ("arch=hybrid,compressor=nope", "nope"),
])
def test_model_args_errors_are_one_line(model_args, needle):
    with pytest.raises(UserError) as info:
        ViperbenchLMMS.create_from_arg_string(model_args, {"batch_size": 1, "device": None})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_images_several_videos_and_loglikelihood_are_refused(tmp_path):
    from PIL import Image

    model = ViperbenchLMMS.create_from_arg_string("arch=hybrid,preset=tiny,frames=2", {"device": "cpu"})
    model.task_dict = {"t": {"test": [{"v": 0}]}}
    for visuals, needle in [([Image.new("RGB", (8, 8))], r"has an image or other visual \(Image\)"),
                            (["a.mp4", "b.mp4"], "has 2 visuals"), ([], "has no video")]:
        with pytest.raises(UserError, match=needle):
            model._answer("Q", {}, lambda doc, v=visuals: v, 0, "t", "test")
    with pytest.raises(UserError, match="loglikelihood requests are not implemented"):
        model.loglikelihood([])


def test_entry_point_names_the_model(tmp_path, monkeypatch):
    """The entry point pyproject declares, as an installed distribution would carry it."""
    import tomllib

    from lmms_eval.models.registry_v2 import ModelRegistryV2

    declared = tomllib.loads(Path("pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    info = tmp_path / "viperbench_probe-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: viperbench-probe\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[lmms_eval.models]\n" + "".join(f"{k} = {v}\n" for k, v in declared.items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    assert registry.get_model_class("viperbench") is ViperbenchLMMS


def test_pass_through_turns_a_bad_model_arg_into_exit_2(local, capsys):
    code = main(["lmms-eval", "--model", "viperbench", "--model_args", "arch=hybrid,fram=4", "--tasks",
                 "videomme_local", "--include_path", str(local["tasks"]), "--limit", "1", "--verbosity", "ERROR"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("viperbench: error: unknown model_args key(s) 'fram'")


def test_local_task_needs_its_annotations(tmp_path):
    with pytest.raises(UserError, match="annotation file not found"):
        write_local_task("videomme", str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(UserError, match="no local lmms-eval task 'mlvu'"):
        write_local_task("mlvu", str(tmp_path), str(tmp_path / "out"))


@pytest.mark.parametrize("output, same", [("A", True), ("B.", True), ("(C) blue", True), ("The answer is D", True),
                                          ("d", False), ("Because it is red", False)])
def test_answer_extraction_against_lmms_evals(output, same):
    """Where the letter read from an output agrees with lmms-eval's videomme and where it differs by design."""
    from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer

    from tasks.videomme import VideoMME

    ours = VideoMME(".").parse(output)
    assert (ours == extract_mcq_answer(output, choices=list("ABCD"))) is same
