"""The import contract: which room of the code may import which, read from the source (top-level and
function-level imports alike, since much of the code imports lazily)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "architectures", "compressors", "tasks")

# The contract. A module belongs to the room of its longest matching prefix. It may import modules of its
# own room and of any room in a lower layer (a larger number); never a sibling room of its layer, never up.
CONTRACT = [
    # layer room          modules
    (0, "cli",            "bench.cli"),  # the command line: parses flags, calls the rooms below
    (1, "launch",         "bench.launch"),  # where a cell runs: inline, child process, Ray; matrices
    (1, "predict",        "bench.predict"),  # peak memory and speed on a named GPU, from a CPU
    (1, "serve",          "bench.serve"),  # serving measured: vLLM's benchmarks driven as child processes
    (1, "evaluation",     "bench.evaluation"),  # accuracy tasks, lm-eval
    (1, "probes",         "bench.probes"),  # information-flow probes: knockout sweeps, logit lens, mixing
    (1, "stream",         "bench.stream"),  # a video stream chunk by chunk: questions mid-stream, window, retrieval
    (1, "train",          "bench.train"),  # training the committed tiny checkpoints
    (1, "reporting",      "bench.reporting"),  # reads records: tables, plots, reports, compare, history, A/B
    (2, "servesim",       "bench.servesim"),  # vLLM's scheduler simulated; the serving record; the calibration fit
    (3, "measure",        "bench.measure"),  # one cell measured: runner, meters, cost, work, max-frames search
    (4, "engine",         "bench.engine"),  # the layer loop, prefill, decode, generate
    (5, "records",        "bench.records"),  # result lines: JSON, appended and flushed; the environment
    (6, "spec",           "bench.spec"),  # a cell's settings, validated against the plugin registries
    (7, "plugins",        "architectures compressors tasks"),  # registries of models, compressors, workloads
    (8, "base",           "bench bench.errors bench.registry bench.flags bench.stats bench.metrics bench.cache"),
]
# cycles between modules that the contract tolerates (none)
KNOWN_CYCLES: list[set[str]] = []
# Rooms whose code never imports torch, not even lazily, nor through what it imports. What it imports may
# import torch lazily only where named here: the measuring side calls these, reporting never does.
TORCH_FREE = ("reporting",)
LAZY_TORCH = {
    "bench.spec": "make_spec validates a cell against the plugin registries; check_device asks torch for CUDA",
    "bench.records": "environment() records torch's version and the kernels a measured cell ran",
}

ROOMS = {prefix: (layer, room) for layer, room, prefixes in CONTRACT for prefix in prefixes.split()}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at top level) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            # ``from bench import flags`` imports the module bench.flags
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
        else:
            continue
        found += [(target, node.lineno, id(node) in top) for target in targets]
    return found


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def room_of(module: str) -> tuple[int, str]:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in ROOMS:
            return ROOMS[".".join(parts[:i])]
    raise KeyError(module)


def _ours(module: str) -> str | None:
    """The module of ours that an import names (``architectures.base`` for ``architectures.base.Backbone``)."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in MODULES:
            return ".".join(parts[:i])
    return None


def _edges(top_level_only: bool = False) -> dict[str, set[str]]:
    return {name: {ours for target, _, top in found if (top or not top_level_only)
                   and (ours := _ours(target)) and ours != name}
            for name, found in IMPORTS.items()}


def test_every_module_has_a_room():
    assert [m for m in MODULES if not _room_or_none(m)] == []


def _room_or_none(module: str):
    try:
        return room_of(module)
    except KeyError:
        return None


def test_imports_run_down_the_layers():
    wrong = []
    for name, found in IMPORTS.items():
        layer, room = room_of(name)
        for target, line, _ in found:
            ours = _ours(target)
            if ours is None:
                continue
            to_layer, to_room = room_of(ours)
            if to_room != room and to_layer <= layer:
                wrong.append(f"{MODULES[name].relative_to(REPO)}:{line}: {room} imports {ours} ({to_room})")
    assert wrong == []


def test_nothing_imports_the_command_line():
    assert [(name, target) for name, found in IMPORTS.items() for target, _, _ in found
            if not name.startswith("bench.cli") and (target == "bench.cli" or target.startswith("bench.cli."))] == []


def _cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules():
    assert [c for c in _cycles(_edges()) if c not in KNOWN_CYCLES] == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def _imports_torch(name: str, top_level_only: bool) -> list[int]:
    return [line for target, line, top in IMPORTS[name] if target.split(".")[0] == "torch" and (top or not top_level_only)]


def test_reporting_imports_no_torch():
    """What a reporting module imports, followed through every import of ours (lazy ones too, except in
    LAZY_TORCH), never imports torch."""
    edges, lazy_ok = _edges(), _edges(top_level_only=True)
    found = []
    for start in [m for m in MODULES if room_of(m)[1] in TORCH_FREE]:
        seen, todo = {start}, [start]
        while todo:
            name = todo.pop()
            lines = _imports_torch(name, top_level_only=name in LAZY_TORCH)
            found += [f"{MODULES[name].relative_to(REPO)}:{line} (from {start})" for line in lines]
            for nxt in (lazy_ok if name in LAZY_TORCH else edges)[name] - seen:
                seen.add(nxt)
                todo.append(nxt)
    assert sorted(set(found)) == []


def test_reporting_runs_without_torch(tmp_path):
    """At run time: every reporting module imported, a table rendered and a figure drawn, torch never loaded."""
    reporting = [m for m in MODULES if room_of(m)[1] == "reporting"]
    code = textwrap.dedent(f"""
        import importlib, sys
        for name in {reporting!r}:
            importlib.import_module(name)
        from bench.reporting import plots, table
        records = [{{"schema": 1, "status": "ok", "spec": {{"arch": "hybrid", "frames": f}}, "env": {{}},
                    "metrics": {{"prefill_tok_s": 10.0 * f, "peak_mem_bytes": 2**20 * f}}}} for f in (4, 8)]
        table.render(records, ["arch"], ["frames"], "peak_mem_bytes")
        plots.plot_xy(records, "frames", "peak_mem_bytes", {str(tmp_path / "xy.png")!r})
        assert "torch" not in sys.modules, "reporting loaded torch"
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def _reached(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in edges[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


@pytest.mark.parametrize("module, top_level_only", [("bench.measure.maxframes", False),
                                                    ("bench.predict.capacity", True)])
def test_the_max_frames_search_drags_in_no_launcher_and_no_runner(module, top_level_only):
    """The search reaches no launcher and no runner, even lazily: the probe is the caller's. Importing the
    prediction loads neither (its fake pass runs the runner's pass when it predicts)."""
    reached = _reached(module, _edges(top_level_only))
    assert sorted(m for m in reached if m.startswith(("bench.launch", "bench.measure.runner"))) == []


@pytest.mark.parametrize("module, room", [("bench.cli.cells", "cli"), ("bench.records", "records"),
                                          ("bench", "base"), ("architectures.families.base", "plugins"),
                                          ("bench.reporting.table", "reporting")])
def test_rooms_by_longest_prefix(module, room):
    assert room_of(module)[1] == room


def test_the_design_page_shows_this_contract():
    """docs/design.md draws the same table."""
    rows = [f"| {layer} | {room} | {' '.join(f'`{m}`' for m in modules.split())} |" for layer, room, modules in CONTRACT]
    page = (REPO / "docs" / "design.md").read_text()
    assert "\n".join(["| layer | room | modules |", "|---|---|---|", *rows]) in page
