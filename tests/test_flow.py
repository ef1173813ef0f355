"""viperbench flow (issue 18): the knockout sweep, the logit lens and the mixing maps, end to end and their oracles."""

from __future__ import annotations

import json

import pytest
import torch

from architectures import ARCHITECTURES
from architectures.tokenizer import ByteTokenizer
from bench.errors import UserError
from bench.probes import mixing
from bench.probes.groups import PARTITION, query_groups
from bench.probes.logit_lens import answer_tokens
from bench.probes.passes import last_logits, layer_states
from bench.probes.prompts import ProbeDoc, own_layout
from bench.records import iter_records
from tasks.base import Doc
from tasks.vniah import Config, generate
from tests.bad_input import user_error

SMALL = Config(lengths=(4,), depths=(0.0, 1.0), per_cell=1, size=32, seed=5)
FAST = ["--preset", "tiny", "--vision", "synthetic", "--frames", "4", "--tokens-per-frame", "2", "--fps", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("vniah-flow"), SMALL)


def _probe_doc(arch: str, frames: int = 3, per: int = 2, seed: int = 0):
    bb = ARCHITECTURES.get(arch).build("tiny", seed=seed)
    tok = ByteTokenizer(bb.config.vocab_size)
    doc = Doc("d", "unused.mp4", "Colour of the card? A. red B. green C. blue D. yellow Answer:", "B",
              {"length": frames, "depth": 0.5})
    state, ids = own_layout(bb, None, None, torch.zeros(frames, 3, 8, 8), doc.prompt, tok, seed=seed,
                            tokens_per_frame=per)
    return bb, tok, ProbeDoc(doc, state, list(range(frames)), ids)


@pytest.mark.parametrize("arch", ["transformer", "hybrid"])
def test_flow_knockout_end_to_end_records_and_plot(data, tmp_path, capsys, arch):
    from bench.cli import main

    out = tmp_path / "flow.jsonl"
    assert main(["flow", "--arch", arch, *FAST, "--task", "vniah", "--data", str(data), "--probe", "knockout",
                 "--window", "4", "--edges", "video->last,frame->frame", "--output", str(out)]) == 0
    assert "video->last" in capsys.readouterr().out
    (record,) = list(iter_records(out))
    flow = record["flow"]
    assert record["kind"] == "flow" and flow["probe"] == "knockout" and record["task"]["n"] == 2
    layers = ARCHITECTURES.get(arch).skeleton("tiny").num_layers
    assert len(flow["rows"]) == 2 * (layers - 4 + 1)
    assert all(r["n"] == 2 and r["std"] >= 0 and 0 <= r["edges_off"] <= 1 for r in flow["rows"])
    for probe in ("logit-lens", "mixing"):
        assert main(["flow", "--arch", arch, *FAST, "--task", "vniah", "--data", str(data), "--probe", probe,
                     "--limit", "1", "--output", str(out)]) == 0
    assert [r["flow"]["probe"] for r in iter_records(out)] == ["knockout", "logit-lens", "mixing"]
    png = tmp_path / "flow.png"
    assert main(["plot", str(out), "--kind", "flow", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()


def test_a_sweep_blocking_attention_only_changes_nothing_in_mamba_windows():
    from bench.probes import knockout

    bb, tok, pdoc = _probe_doc("hybrid")
    result = knockout.run(bb, [pdoc], tok, window=1, edges=["video->text:kinds=attention", "video->text"])
    rows = {(r["edges"], r["start"]): r for r in result["rows"]}
    kinds = bb.layer_kinds()
    for i, kind in enumerate(kinds):
        attention_only = rows[("video->text:kinds=attention", i)]
        if kind != "attention":
            assert attention_only["mean"] == 0.0 and attention_only["edges_off"] == 0.0
        if kind == "mlp":
            assert rows[("video->text", i)]["mean"] == 0.0
    assert any(rows[("video->text", i)]["mean"] != 0.0 for i, k in enumerate(kinds) if k == "mamba")


@pytest.mark.parametrize("arch", ["transformer", "hybrid"])
def test_logit_lens_at_the_last_layer_is_the_models_own_last_token_logits(arch):
    bb, _, pdoc = _probe_doc(arch)
    states = layer_states(bb, pdoc)
    lens = bb.logits(states.after(bb.num_layers - 1))[0, -1]
    torch.testing.assert_close(lens, states.logits[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(states.logits[0], last_logits(bb, pdoc), rtol=0, atol=0)  # the watcher changes nothing


@pytest.mark.parametrize("arch", ["transformer", "hybrid", "mamba"])
def test_mixing_shares_sum_to_one_per_row(arch):
    bb, _, pdoc = _probe_doc(arch)
    rows = mixing.mixing_document(bb, pdoc)
    kinds = [k for k in bb.layer_kinds() if k != "mlp"]
    assert len(rows) == 2 * len(kinds)  # one row per mixing layer and query group (last, question)
    for row in rows:
        assert set(row["shares"]) == set(PARTITION)
        assert sum(row["shares"].values()) == pytest.approx(1.0, abs=1e-5)
        assert all(v >= 0 for v in row["shares"].values())


def test_attention_weights_last_row_is_attention_scores_and_rows_are_causal():
    bb, _, pdoc = _probe_doc("transformer")
    hidden, positions = pdoc.state.hidden, pdoc.state.positions
    n = hidden.shape[1]
    with torch.inference_mode():
        rows = bb.attention_weights(2, hidden, positions, torch.tensor([3, n - 1]))[0].mean(0)
        torch.testing.assert_close(rows[1], bb.attention_scores(2, hidden, positions)[0], rtol=0, atol=1e-6)
    assert float(rows[0, 4:].abs().sum()) == 0.0


def test_groups_partition_the_prompt():
    _, _, pdoc = _probe_doc("transformer")
    groups = query_groups(pdoc.state)
    assert int(sum(m.long() for m in groups.values()).min()) == 1 == int(sum(m.long() for m in groups.values()).max())
    assert int(groups["video"].sum()) == 6 and bool(groups["bos"][0]) and bool(groups["last"][-1])


def test_answer_tokens_are_the_letter_and_the_gold_options_first_token():
    _, tok, pdoc = _probe_doc("transformer")
    assert answer_tokens(pdoc, tok) == {"answer": tok.encode_prompt("B")[0], "option": tok.encode_prompt("g")[0]}
    pdoc.doc.target = None
    with pytest.raises(UserError, match="gold answers"):
        answer_tokens(pdoc, tok)


@pytest.mark.parametrize("extra, needles", [
    (["--probe", "attention"], ("--probe", "'attention'", "knockout")),
    (["--probe", "knockout", "--edges", "video->nowhere"], ("unknown group", "'nowhere'")),
    (["--probe", "knockout", "--edges", "video->last:layers=1-2"], ("--edges", "--window")),
    (["--probe", "knockout", "--window", "99"], ("--window 99", "layers")),
    (["--probe", "mixing", "--window", "2"], ("--window", "mixing")),
])
def test_bad_flow_input_is_one_line(capfd, data, extra, needles):
    user_error(capfd, ["flow", "--arch", "transformer", *FAST, "--task", "vniah", "--data", str(data), *extra],
               *needles)


def test_a_task_without_probes_is_one_line(capfd):
    user_error(capfd, ["flow", "--arch", "transformer", "--task", "charades", "--data", ".", "--probe", "mixing"],
               "--task vniah or videomme", "'charades'")
