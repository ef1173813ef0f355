"""Plugin registries: unknown names, third-party entry points, and the ``list`` command."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import UserError
from bench.registry import Registry

REPO = Path(__file__).resolve().parents[1]
PLUGIN_MODULE = "vb_plugin_demo"
PLUGIN_DOC_FIRST_LINE = "Demo compressor from a third-party package."


def _registries():
    from architectures import ARCHITECTURES
    from compressors import COMPRESSORS
    from tasks import TASKS

    return {"architecture": ARCHITECTURES, "compressor": COMPRESSORS, "task": TASKS}


def _env(extra_path: Path | None = None) -> dict:
    env = dict(os.environ)
    parts = [str(extra_path)] if extra_path else []
    parts += [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _cli(*args, extra_path: Path | None = None, code: str | None = None):
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "bench.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(extra_path), cwd=REPO, timeout=120)


# --- unknown names ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["architecture", "compressor", "task"])
def test_unknown_name_lists_registered(kind):
    reg = _registries()[kind]
    with pytest.raises(UserError) as info:
        reg.get("no-such-plugin")
    msg = str(info.value)
    assert kind in msg and "'no-such-plugin'" in msg
    names = reg.names()
    assert names, "a registry without built-ins"
    for name in names:
        assert name in msg
    assert "\n" not in msg


def test_builtin_names():
    regs = _registries()
    assert regs["architecture"].names()[:3] == ["transformer", "mamba", "hybrid"]
    assert "none" in regs["compressor"].names()
    assert "synthetic" in regs["task"].names()


def test_builtins_describe_without_import():
    """describe() of built-ins comes from the package __init__, and get() then registers the object."""
    reg = Registry("thing", "viperbench.no-such-group", {"a": ("json", "the a thing")})
    assert reg.names() == ["a"]
    assert reg.describe() == {"a": "the a thing"}
    with pytest.raises(RuntimeError, match="does not register"):
        reg.get("a")  # json imports fine but registers nothing


# --- a third-party plugin through a real entry point ------------------------------------------


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A tiny installed distribution: a module plus its dist-info with an entry point."""
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(textwrap.dedent(f'''
        from compressors.base import Compressor


        class Demo(Compressor):
            """{PLUGIN_DOC_FIRST_LINE}

            It keeps every token; a second paragraph that describe() must not show.
            """

            name = "demo"
            params = {{"ratio": 0.5}}
    '''))
    info = tmp_path / f"{PLUGIN_MODULE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN_MODULE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[viperbench.compressors]\ndemo = {PLUGIN_MODULE}:Demo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, PLUGIN_MODULE, raising=False)
    yield tmp_path
    sys.modules.pop(PLUGIN_MODULE, None)
    importlib.invalidate_caches()


def test_plugin_entry_point_is_visible(plugin_dir):
    eps = {ep.name: ep.value for ep in entry_points(group="viperbench.compressors")}
    assert eps.get("demo") == f"{PLUGIN_MODULE}:Demo"


def test_plugin_through_fresh_registry(plugin_dir):
    from compressors import COMPRESSORS

    reg = Registry("compressor", COMPRESSORS.group, COMPRESSORS._builtins)
    assert reg.names() == [*COMPRESSORS._builtins, "demo"]
    desc = reg.describe()
    assert desc["demo"] == PLUGIN_DOC_FIRST_LINE
    assert desc["none"] == COMPRESSORS._builtins["none"][1]
    cls = reg.get("demo")
    assert cls is sys.modules[PLUGIN_MODULE].Demo
    from compressors.base import Compressor

    assert issubclass(cls, Compressor) and cls.name == "demo"
    assert cls(ratio=0.25).settings == {"ratio": 0.25}
    # an unknown name now lists the plugin too
    with pytest.raises(UserError, match="visionzip, demo"):
        reg.get("nope")


def test_plugin_through_module_registry(plugin_dir):
    """The module-level registry, with its entry-point cache reset (and restored afterwards)."""
    from compressors import COMPRESSORS
    from compressors.base import make_compressor

    saved_plugins, saved_loaded = COMPRESSORS._plugins, dict(COMPRESSORS._loaded)
    COMPRESSORS._plugins = None
    try:
        assert "demo" in COMPRESSORS.names()
        comp = make_compressor("demo:ratio=0.125")
        assert type(comp).__name__ == "Demo" and comp.settings == {"ratio": 0.125}
        assert repr(comp) == "demo:ratio=0.125"
        with pytest.raises(UserError, match="no key 'bogus'"):
            make_compressor("demo:bogus=1")
    finally:
        COMPRESSORS._plugins = saved_plugins
        COMPRESSORS._loaded.clear()
        COMPRESSORS._loaded.update(saved_loaded)
    assert "demo" not in COMPRESSORS._loaded


def test_broken_plugin_does_not_break_describe(plugin_dir):
    info = plugin_dir / f"{PLUGIN_MODULE}-0.1.dist-info"
    (info / "entry_points.txt").write_text(
        f"[viperbench.compressors]\ndemo = {PLUGIN_MODULE}:Demo\nbroken = {PLUGIN_MODULE}:Missing\n")
    reg = Registry("compressor", "viperbench.compressors", {})
    desc = reg.describe()
    assert desc["demo"] == PLUGIN_DOC_FIRST_LINE
    assert desc["broken"].startswith("(failed to load:")


def test_cli_list_shows_plugin(plugin_dir):
    proc = _cli("list", extra_path=plugin_dir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = lines.index("compressors:")
    section = lines[start + 1 : lines.index("tasks:")]
    demo = [line for line in section if line.split()[0] == "demo"]
    assert demo and demo[0].split(None, 1)[1] == PLUGIN_DOC_FIRST_LINE


# --- `viperbench list` -----------------------------------------------------------------------


def test_cli_list_subprocess():
    proc = _cli("list")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for title in ("architectures:", "compressors:", "tasks:"):
        assert title in out.splitlines()
    for name in ("transformer", "mamba", "hybrid", "none", "synthetic"):
        assert f"  {name} " in out
    assert proc.stderr == ""


def test_cli_list_does_not_import_torch():
    code = "import sys; from bench.cli import main; rc = main(['list']); assert rc == 0; " \
           "assert 'torch' not in sys.modules, 'list imported torch'; " \
           "assert 'transformers' not in sys.modules, 'list imported transformers'"
    proc = _cli(code=code)
    assert proc.returncode == 0, proc.stderr
    assert "architectures:" in proc.stdout


def test_cli_list_json(capsys):
    from architectures import ARCHITECTURES

    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"architectures", "compressors", "tasks"}
    assert "none" in data["compressors"] and "synthetic" in data["tasks"]
    assert set(data["architectures"]) >= {"transformer", "mamba", "hybrid"}
    for name in ARCHITECTURES.names():
        arch = ARCHITECTURES.get(name)
        entry = data["architectures"][name]
        assert entry["description"]
        assert set(entry["presets"]) == set(arch.presets) >= {"tiny", "small", "paper"}
        for preset, info in entry["presets"].items():
            params = info["params"]
            assert isinstance(params, int) and not isinstance(params, bool) and params > 0, (name, preset)
        assert entry["presets"]["tiny"]["params"] < entry["presets"]["small"]["params"] \
            < entry["presets"]["paper"]["params"]
    assert data["architectures"]["transformer"]["presets"]["paper"]["params"] == 8_190_735_360


def test_cli_bad_subcommand_exits_2(capfd):
    from tests.bad_input import user_error

    user_error(capfd, ["no-such-command"], "no-such-command")
