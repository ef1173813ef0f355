"""Bad numbers, bad TOML values and results files of the wrong shape: exit 2 (or a warning), one line.

The flag check is generated from the parser: every option of every command that takes a value is
either numeric, with a declared domain (a bench.flags type, or a cell setting's entry in
bench.spec.NUMBERS), or listed in TEXT_FLAGS; a new numeric flag without a domain fails the test.
Each numeric flag is then fed nan, inf, -inf, 0 and -1 where they are outside its domain (and the
extra values its type lists), in-process, before any model is built.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest

from bench import flags
from bench.cli import CELL_LABELS, build_parser, main
from bench.records import make_record
from bench.spec import NUMBERS, TEXT
from tests.bad_input import assert_one_line_error, user_error

PROBES = ("nan", "inf", "-inf", "0", "-1")  # fed to every numeric flag where outside its domain
# options whose values are names, paths or specs, not numbers
TEXT_FLAGS = {"--output", "--launcher", "--ray-address", "--gpu", "--mamba-kernels", "--data", "--judge", "--log", "--train",
              "--base", "--head", "--commit", "--store", "--cell",
              "--baseline", "--reference", "--kind", "--x", "--y", "--series", "--out", "--rows", "--cols",
              "--metric", "--format", "--preset", "--predictions", "--knockout", "--probe", "--edges",
              "--questions", "--clock", "--kv-offload",
              "--engine", "--engine-python", "--efficiency", "--calibrate", "--replay", "--kv-space", "--latency",
              *(CELL_LABELS[name] for name in TEXT)}
# a minimal valid rest of each command line (nothing is built: the bad value is refused first)
BASE = {
    "run": ["run", "--arch", "transformer"],
    "matrix": ["matrix", "--arch", "transformer", "--no-progress"],
    "maxframes": ["maxframes", "--arch", "transformer"],
    "predict": ["predict", "--arch", "transformer", "--no-max-frames"],
    "eval": ["eval", "--task", "vniah", "--arch", "transformer"],
    "flow": ["flow", "--task", "vniah", "--arch", "transformer", "--probe", "knockout"],
    "train": ["train", "--arch", "transformer", "--output", "never-written"],
    "compare": ["compare", "new.jsonl", "--baseline", "base.jsonl"],
    "score": ["score", "--task", "videomme", "--data", "d", "--predictions", "p.jsonl"],
    "table": ["table", "r.jsonl"], "plot": ["plot", "r.jsonl"], "report": ["report", "r.jsonl", "--out", "o"],
    "list": ["list"],
    "stream": ["stream", "--arch", "transformer", "--vision", "synthetic", "--fps", "1", "--chunk-frames", "2",
               "--frames", "4"],
    "ab": ["ab", "--base", "."],
    "serve": ["serve", "--arch", "transformer", "--preset", "tiny", "--input-len", "64"],
    "lmms-task": ["lmms-task", "videomme", "--data", "d", "--out", "o"],
    "history add": ["history", "add", "r.jsonl"], "history show": ["history", "show"],
    "history plot": ["history", "plot", "--metric", "decode_tok_s", "--out", "o.png"],
    "history html": ["history", "html", "--out", "o"],
}


def _commands(parser: argparse.ArgumentParser | None = None, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command that takes flags, nested ones as "history add"."""
    parser = parser or build_parser()
    out = {}
    for sub in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
        for name, p in sub.choices.items():
            if name in ("lm-eval", "lmms-eval"):  # their flags are their own
                continue
            nested = _commands(p, f"{prefix}{name} ")
            out.update(nested or {f"{prefix}{name}": p})
    return out


def _domain(command: str, action: argparse.Action) -> flags.FlagType | None:
    """The declared domain of a value-taking option; None for a text option; AssertionError if unclassified."""
    flag = action.option_strings[-1]
    if isinstance(action.type, flags.FlagType):
        return action.type
    assert action.type is None, f"{command} {flag}: type={action.type!r}; use a bench.flags type (its domain)"
    if CELL_LABELS.get(action.dest) == flag and action.dest in NUMBERS:
        return NUMBERS[action.dest]  # a cell setting: checked in bench.spec with the same parser
    assert flag in TEXT_FLAGS, f"{command} {flag}: unclassified; give it a bench.flags type or list it as text"
    return None


def numeric_flags() -> list[tuple[str, str, flags.FlagType]]:
    out = []
    for command, parser in _commands().items():
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:  # positionals (paths), --help, switches
                continue
            domain = _domain(command, action)
            if domain is not None:
                out.append((command, action.option_strings[-1], domain))
    return out


def refused(domain: flags.FlagType) -> list[str]:
    values = [v for v in dict.fromkeys((*PROBES, *domain.outside))]
    out = []
    for value in values:
        try:
            domain.parse(value)
        except flags.BadValue:
            out.append(value)
    return out


FLAG_CASES = [pytest.param(command, flag, value, id=f"{command} {flag}={value}")
              for command, flag, domain in numeric_flags() for value in refused(domain)]


def test_every_command_is_covered_and_every_domain_refuses_non_finite_and_negative():
    assert set(_commands()) == set(BASE), "give each new command a minimal valid command line in BASE"
    found = numeric_flags()
    assert {(c, f) for c, f, _ in found} >= {("run", "--frames"), ("predict", "--gpu-tflops"),
                                             ("eval", "--fps"), ("compare", "--tolerance"), ("train", "--seed")}
    for _, _, domain in found:
        assert {"nan", "inf", "-inf", "-1"} <= set(refused(domain)), domain
        assert set(domain.outside) <= set(refused(domain)), domain


@pytest.mark.parametrize("command, flag, value", FLAG_CASES)
def test_item11_every_numeric_flag_refuses_values_outside_its_domain(capfd, command, flag, value):
    user_error(capfd, [*BASE[command], f"{flag}={value}"], flag, repr(value))


# --- item 11 and 8: the values themselves ---------------------------------------------------------

@pytest.mark.parametrize("domain, text, value", [
    (flags.positive_int, "3", 3),
    (flags.nonnegative_int, "0", 0),
    (flags.seed, "4294967295", 2**32 - 1),
    (flags.positive_float, "1e-3", 1e-3),
    (flags.nonnegative_float, "0", 0.0),
    (flags.fraction, "0", 0.0),
    (flags.percent, "5%", 0.05),
    (flags.percent, "0.05", 0.05),
    (flags.percent, "1", 1.0),
    (flags.percent, "100%", 1.0),
    (flags.positive_size, "8GiB", 8 * 2**30),
    (flags.positive_size, "1.5GB", 1_500_000_000),
    (flags.nonnegative_size, "0", 0),
    (flags.positive_rate, "3.35TB/s", 3.35e12),
    (flags.positive_rate, "900GB/s", 9e11),
    (flags.positive_int_list, "4,8,16", (4, 8, 16)),
])
def test_values_inside_the_domain_are_read(domain, text, value):
    assert domain(text) == pytest.approx(value)


@pytest.mark.parametrize("argv, needles", [
    (["run", "--arch", "transformer", "--seed", "-1"], ("--seed", "'-1'", "4294967295")),
    (["run", "--arch", "transformer", "--seed", "4294967296"], ("--seed",)),
    (["train", "--arch", "transformer", "--output", "x", "--seed", "-1"], ("--seed", "'-1'")),
    (["eval", "--task", "vniah", "--arch", "transformer", "--fps", "inf"], ("--fps", "'inf'", "finite")),
    (["eval", "--task", "vniah", "--arch", "transformer", "--fps", "nan"], ("--fps", "'nan'")),
    (["predict", "--arch", "transformer", "--gpu-tflops", "nan"], ("--gpu-tflops", "'nan'")),
    (["predict", "--arch", "transformer", "--gpu-bandwidth", "inf"], ("--gpu-bandwidth", "'inf'")),
    (["predict", "--arch", "transformer", "--gpu-bandwidth", "infTB/s"], ("--gpu-bandwidth",)),
    (["matrix", "--arch", "transformer", "--frames", "2,nan", "--no-progress"], ("--frames", "'nan'")),
])
def test_item8_item11_seed_and_non_finite_values(capfd, argv, needles):
    user_error(capfd, argv, *needles)


# --- item 18: one rule for every tolerance / percent flag --------------------------------------------

PERCENT_FLAGS = [(c, f) for c, f, d in numeric_flags() if d is flags.percent]


def test_item18_the_percent_flags_are_the_tolerances_and_the_allocator_margin():
    assert set(PERCENT_FLAGS) == {("compare", "--tolerance"), ("compare", "--memory-tolerance"),
                                  ("predict", "--allocator-margin"), ("ab", "--tolerance"),
                                  *((f"history {c}", "--threshold") for c in ("show", "plot", "html"))}


@pytest.mark.parametrize("command, flag", PERCENT_FLAGS)
@pytest.mark.parametrize("value", ["5", "10", "1.5"])
def test_item18_a_bare_number_above_one_is_refused_with_the_percent_spelling(capfd, command, flag, value):
    user_error(capfd, [*BASE[command], flag, value], flag, repr(value), f"{value}%")


@pytest.mark.parametrize("command, flag", PERCENT_FLAGS)
def test_item18_percent_and_fraction_mean_the_same(command, flag):
    dest = flag.lstrip("-").replace("-", "_")
    read = [getattr(build_parser().parse_args([*BASE[command], flag, v]), dest) for v in ("5%", "0.05")]
    assert read[0] == pytest.approx(read[1]) == pytest.approx(0.05)


# --- item 5: wrongly typed TOML values, checked in one place (bench.spec) -----------------------------

TOML_CASES = [
    ('device = 0', ("device", "0 (an integer)", "expected a string")),
    ('compressor = 5', ("compressor", "5 (an integer)", "expected a string")),
    ('checkpoint = 5', ("checkpoint", "5 (an integer)", "expected a string")),
    ('preset = ["tiny", {a = 1}]', ("preset", "{'a': 1} (a table)", "expected a string")),
    ('preset = ["tiny", ["small"]]', ("preset", "['small'] (a list)")),
    ('task = true', ("task", "true (a boolean)")),
    ('frames = true', ("frames", "true (a boolean)", "positive integer")),
    ('warmup = false', ("warmup", "false (a boolean)")),
    ('frames = 2.5', ("frames", "2.5 (a number)", "positive integer")),
    ('frames = nan', ("frames", "nan (a number)")),
    ('frames = inf', ("frames", "inf (a number)")),
    ('seed = -1', ("seed", "-1 (an integer)", "4294967295")),
    ('memory_budget = true', ("memory_budget", "true (a boolean)")),
    ('memory_budget = 1.5', ("memory_budget", "1.5 (a number)")),
    ('memory_budget = "inf"', ("memory_budget", "'inf'")),
    ('[frames]\nx = 1', ("frames", "{'x': 1} (a table)")),
    ('[[arch]]\nx = 1', ("arch", "(a table)")),
]


@pytest.mark.parametrize("line, needles", TOML_CASES, ids=[c[0] for c in TOML_CASES])
def test_item5_wrongly_typed_toml_values(capfd, tmp_path, line, needles):
    path = tmp_path / "m.toml"
    header = {"arch": 'arch = "transformer"', "preset": 'preset = "tiny"'}
    given = re.match(r"\[*(\w+)", line).group(1)  # the key (or table) the line sets
    path.write_text("".join(f"{text}\n" for key, text in header.items() if key != given) + line + "\n")
    user_error(capfd, ["matrix", str(path), "--no-progress"], *needles)


@pytest.mark.parametrize("content, needles", [
    (b'arch = "transformer"\nframes = \xff\n', ("not UTF-8", "0xff")),
    (b'\xfe\xff\x00a', ("not UTF-8",)),
    (b'arch = "transformer"\ncompressor = "caf\xe9"\n', ("not UTF-8",)),
    (b'arch = = 1\n', ("malformed",)),
    (b'arch = ["transformer"\n', ("malformed",)),
    (b'arch = "transformer"\narch = "mamba"\n', ("malformed",)),
], ids=["latin1-byte", "utf16-bom", "latin1-string", "syntax", "open-list", "duplicate-key"])
def test_item5_toml_file_not_utf8_or_not_toml(capfd, tmp_path, content, needles):
    path = tmp_path / "m.toml"
    path.write_bytes(content)
    user_error(capfd, ["matrix", str(path), "--no-progress"], str(path), *needles)


def test_item5_nothing_runs_before_every_cell_is_checked(capfd, tmp_path, monkeypatch):
    import bench.measure.runner

    monkeypatch.setattr(bench.measure.runner, "run_cell", lambda *a, **k: pytest.fail("a cell ran"))
    path = tmp_path / "m.toml"
    path.write_text('arch = "transformer"\npreset = "tiny"\ndevice = ["cpu", 0]\n')
    user_error(capfd, ["matrix", str(path), "--no-progress"], "device", "0 (an integer)")


def test_item5_the_same_check_for_json_cells():
    from bench.errors import UserError
    from bench.spec import make_spec

    with pytest.raises(UserError, match=r"^compressor: expected a string, got \['none'\] \(a list\)$"):
        make_spec({"arch": "transformer", "compressor": ["none"]})
    with pytest.raises(UserError, match=r"^--frames: expected a positive integer, got 'nan'$"):
        make_spec({"arch": "transformer", "frames": "nan"}, CELL_LABELS)


# --- item 6: results files of valid JSON and the wrong shape ------------------------------------------

def _good() -> dict:
    spec = {"arch": "transformer", "preset": "tiny", "frames": 2, "compressor": "none", "task": "synthetic",
            "warmup": 1, "repeats": 1}
    return make_record(spec, {"device_name": "test"}, metrics={"prefill_tok_s": 10.0, "peak_mem_bytes": 2**20})


def _with(**changes) -> dict:
    record = _good()
    record.update(changes)
    return record


WRONG_SHAPES = [
    ("spec-null", _with(spec=None), "spec is null"),
    ("spec-missing", {k: v for k, v in _good().items() if k != "spec"}, "spec is missing"),
    ("spec-list", _with(spec=["arch"]), "spec is a list"),
    ("spec-value-object", _with(spec={**_good()["spec"], "frames": {"n": 2}}), "spec.frames is an object"),
    ("metrics-string", _with(metrics="oops"), "metrics is a string"),
    ("metrics-value-string", _with(metrics={"prefill_tok_s": "fast"}), "metrics.prefill_tok_s is a string"),
    ("task-null", _with(task=None), "task is null"),
    ("task-metrics-list", _with(task={"name": "x", "metrics": [1]}), "task.metrics is a list"),
    ("env-number", _with(env=3), "env is a number"),
    ("status-number", _with(status=5), "status is 5"),
    ("status-missing", {k: v for k, v in _good().items() if k != "status"}, "status is missing"),
    ("error-number", _with(error=7), "error is a number"),
    ("top-level-list", [1, 2], "a list, not an object"),
    ("top-level-number", 5, "a number, not an object"),
    ("top-level-string", "record", "a string, not an object"),
    ("top-level-null", None, "null, not an object"),
]
READERS = {
    "table": lambda f: ["table", f],
    "table-preset": lambda f: ["table", f, "--preset", "efficiency"],
    "compare": lambda f: ["compare", f, "--baseline", f],
    "plot": lambda f: ["plot", f, "--out", f + ".png"],
    "report": lambda f: ["report", f, "--out", f + ".report"],
}


def _results(tmp_path, bad, with_good: bool) -> str:
    path = tmp_path / "r.jsonl"
    lines = [json.dumps(_good())] if with_good else []
    path.write_text("\n".join([*lines, json.dumps(bad)]) + "\n")
    return str(path)


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name, bad, why", WRONG_SHAPES, ids=[w[0] for w in WRONG_SHAPES])
def test_item6_a_record_of_the_wrong_shape_is_skipped_with_its_line(capfd, tmp_path, reader, name, bad, why):
    path = _results(tmp_path, bad, with_good=True)
    capfd.readouterr()
    assert main(READERS[reader](path)) == 0
    _, err = capfd.readouterr()
    lines = err.splitlines(keepends=True)
    assert len(lines) == (2 if reader == "compare" else 1), err  # compare reads the file twice: new and baseline
    assert len(set(lines)) == 1
    assert_one_line_error(lines[0], f"{path}:2", "warning", why)


@pytest.mark.parametrize("name, bad, why", WRONG_SHAPES[:6], ids=[w[0] for w in WRONG_SHAPES[:6]])
def test_item6_a_file_of_only_wrong_shapes_is_bad_input(capfd, tmp_path, name, bad, why):
    path = _results(tmp_path, bad, with_good=False)
    capfd.readouterr()
    assert main(["table", path]) == 2
    _, err = capfd.readouterr()
    warning, error = err.splitlines()
    assert f"{path}:1" in warning and why in warning
    assert error == f"viperbench: error: no records in {path}"


# --- item 12: predict's GPU -------------------------------------------------------------------------

@pytest.mark.parametrize("gpu", ["", " ", "h1OO"])
def test_item12_an_empty_or_unknown_gpu_lists_the_gpus(capfd, gpu):
    user_error(capfd, ["predict", "--arch", "transformer", "--no-max-frames", "--gpu", gpu],
               "unknown GPU", "h100-80gb", "h200", "custom")
