"""The docs stay true: every command line in README.md and docs/*.md parses with the current parser, the
commands of a block not marked illustrative are run here for real, and the site builds (mkdocs --strict).

A fenced ``bash`` or ``console`` block is run unless the line before it is ``<!-- illustrative -->``
(optionally with a reason: ``<!-- illustrative: takes minutes -->``); ``RUN`` lists the commands this
file runs and what their output must contain.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- illustrative(:[^>]*)? -->$")
FENCE = re.compile(r"^```(\w*)\s*$")
PROGRAMS = (("viperbench",), ("python", "-m", "bench.cli"))

# every command of a block that is not marked illustrative, with text its output must contain
RUN = {
    "viperbench list": ["hybrid", "transv", "vniah"],
    "viperbench table results/quickstart.jsonl --rows arch --cols frames --metric decode_tok_s":
        ["| transformer             |        90.6 |          21.9 |"],
    "viperbench table results/quickstart.jsonl --preset efficiency --reference arch=transformer --format latex":
        ["\\toprule", "\\textbf{"],
}


def blocks():
    """(page, line, illustrative, [command text]) for every fenced bash/console block of the docs."""
    for page in PAGES:
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            start, lang = i, m.group(1)
            i += 1
            body = []
            while i < len(lines) and not FENCE.match(lines[i]):
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence
            if lang not in ("bash", "console"):
                continue
            marked = start > 0 and bool(MARKER.match(lines[start - 1].strip()))
            yield page.relative_to(ROOT), start + 1, marked, commands("\n".join(body))


def commands(text: str) -> list[list[str]]:
    """The viperbench command lines in a shell snippet, each as argv (after the program's name)."""
    text = text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\$ ", "", line.strip())  # a console prompt
        line = re.sub(r"(^|\s)#.*$", "", line)  # a comment (a # inside a word, as in URL#MODEL, stays)
        try:
            words = shlex.split(line)
        except ValueError:  # an unbalanced quote: not a command line
            continue
        segment: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";", "|", "do", "then"):
                argv = _program_argv(segment)
                if argv is not None:
                    out.append(argv)
                segment = []
            else:
                segment.append(word)
    return out


def _program_argv(words: list[str]) -> list[str] | None:
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # VAR=value prefixes
        words = words[1:]
    for program in PROGRAMS:
        if tuple(words[:len(program)]) == program:
            return words[len(program):]
    return None


ALL = list(blocks())
COMMANDS = [(f"{page}:{line}", argv) for page, line, _, argvs in ALL for argv in argvs]


def test_the_docs_have_commands():
    assert len(PAGES) > 5 and len(COMMANDS) > 20


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[f"{w} {' '.join(a[:2])}" for w, a in COMMANDS])
def test_every_command_parses(where, argv):
    """The subcommand and every flag exist (catches stale docs); nothing runs."""
    from bench.cli import build_parser

    if argv[:1] in (["lm-eval"], ["lmms-eval"]):  # every later flag is the harness's own
        return
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `viperbench {' '.join(argv)}` does not parse (exit {exc.code})")


def test_every_block_is_run_or_marked_illustrative():
    unlisted = [f"{page}:{line}: viperbench {shlex.join(argv)}" for page, line, marked, argvs in ALL
                if not marked for argv in argvs if "viperbench " + shlex.join(argv) not in RUN]
    assert not unlisted, "run these in RUN or mark their block <!-- illustrative -->:\n" + "\n".join(unlisted)
    documented = {"viperbench " + shlex.join(argv) for _, _, marked, argvs in ALL if not marked for argv in argvs}
    assert documented == set(RUN), f"RUN lists commands no page shows: {sorted(set(RUN) - documented)}"


@pytest.mark.parametrize("command", RUN)
def test_the_commands_run(command, capsys):
    from bench.cli import main

    assert main(shlex.split(command)[1:]) == 0
    out = capsys.readouterr().out
    for needle in RUN[command]:
        assert needle in out, (needle, out[-2000:])


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_the_site_builds_strict(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
