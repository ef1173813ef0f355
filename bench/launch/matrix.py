"""Comparison matrices: the cartesian product of spec axes, run cell by cell.

Axes come from comma lists on the command line (``--arch transformer,mamba --frames 64,512``)
or from a TOML file whose top-level keys are cell settings, each a value or a list::

    arch = ["transformer", "mamba", "hybrid"]
    preset = "small"
    frames = [64, 512]
    compressor = ["none", "uniform:layer=0,p=0.5"]
    output = "results/scaling.jsonl"   # optional: the default output file (``--output`` overrides it)

A relative ``output`` is read from the working directory, as ``--output`` is. With no output
anywhere, each record is printed on stdout as a JSON line when its cell ends.

Every cell is validated before the first one runs. The cells go to the launcher through its
``submit(spec) -> Future`` (up to its capacity at once: one for inline, ``--jobs`` for process,
the whole matrix for Ray); each record is appended and flushed as soon as its cell ends, in the
order the cells finish. ``--resume`` skips every cell whose record (ok or oom) is in the output,
wherever it is in the file.
"""

from __future__ import annotations

import itertools
import json
import queue
import re
import sys
import time

from bench.errors import UserError
from bench.records import append_record, check_writable, finished_keys, spec_key
from bench.spec import FIELDS, CellSpec, check_runnable, make_spec


def split_values(key: str, text) -> list:
    """A comma list. Compressor specs keep their own ``key=value`` commas:
    ``none,uniform:layer=7,p=0.5`` is two specs."""
    if not isinstance(text, str):
        return [text]
    parts = [p.strip() for p in text.split(",")]
    if key != "compressor":
        return [p for p in parts if p]
    specs: list[str] = []
    for part in parts:
        if specs and re.fullmatch(r"[A-Za-z_][\w.]*=.*", part) and ":" not in part.split("=", 1)[0]:
            specs[-1] += "," + part
        elif part:
            specs.append(part)
    return specs


def expand(axes: dict[str, list], labels: dict[str, str] | None = None) -> list[CellSpec]:
    """Cartesian product in the order the axes are given; every cell validated (``make_spec``: types and
    domains of every value, before anything runs); ``labels`` names the flags axes came from."""
    for key, values in axes.items():
        if not values:
            raise UserError(f"empty list for {key}")
    names = list(axes)
    cells = [make_spec(dict(zip(names, combo)), labels) for combo in itertools.product(*(axes[n] for n in names))]
    seen, unique = set(), []
    for cell in cells:
        if cell.key() not in seen:
            seen.add(cell.key())
            unique.append(cell)
    return unique


def axes_from_flags(values: dict[str, object]) -> dict[str, list]:
    return {k: split_values(k, v) for k, v in values.items() if v is not None}


def axes_from_toml(path: str, overrides: dict[str, object] | None = None) -> tuple[dict[str, list], str | None]:
    """The file's axes (``overrides``, from flags, replace whole axes) and its ``output`` key, if any."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"matrix file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"malformed matrix file {path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                        f"offset {exc.start})") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"malformed matrix file {path}: {exc}") from None
    output = data.pop("output", None)
    if output is not None and not (isinstance(output, str) and output.strip()):
        raise UserError(f"{path}: output must be a file name (a string), got {output!r}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise UserError(f"{path}: unknown cell setting {unknown[0]!r}; valid: {', '.join(FIELDS)}")
    axes = {k: v if isinstance(v, list) else [v] for k, v in data.items()}
    axes.update(axes_from_flags(overrides or {}))
    return axes, output


def describe(spec: CellSpec) -> str:
    name = f"{spec.arch}/{spec.checkpoint or spec.preset}"
    extra = "" if spec.compressor == "none" else f" {spec.compressor}"
    return f"{name}{extra} frames={spec.frames}"


def one_line(record: dict) -> str:
    m = record.get("metrics", {})
    if record["status"] != "ok":
        return f"{record['status']}: {record.get('error')}"
    return (f"ok: prefill {m['prefill_tok_s']:.0f} tok/s, decode {m['decode_tok_s']:.1f} tok/s, "
            f"TTFT {m['ttft_s']:.3f} s, peak {m['peak_mem_bytes'] / 2**20:.0f} MiB")


def run_matrix(cells: list[CellSpec], output: str | None, *, launcher: str = "inline", resume: bool = False,
               progress: bool = True, interleave: bool = False, **options) -> list[dict]:
    """Run every cell, appending each record to ``output`` as it ends; returns this run's records.

    ``options`` go to the launcher (``bench.launch.launchers.make_launcher``: ``jobs``,
    ``cpus_per_cell``, ``ray_address``, ``ray_retries``). With ``interleave``, all cells are built
    in this process and measured round by round (``bench.measure.runner.run_interleaved``): the
    setting for ratios between cells, e.g. a CI gate.
    """
    from bench.launch.launchers import check_options, open_launcher

    check_options(launcher, **options)
    if interleave and launcher != "inline":  # (inline refuses --jobs above)
        raise UserError("--interleave runs every cell in this process: use it with --launcher inline")
    if launcher != "ray":  # Ray workers check their own devices
        for cell in cells:
            check_runnable(cell)
    if output is not None:
        check_writable(output)
    elif resume:
        raise UserError("--resume needs the output file to resume: give --output (or output in the matrix file)")
    else:
        print("no --output: each record is printed on stdout as a JSON line", file=sys.stderr)
    done = finished_keys(output) if (resume and output) else set()
    todo = [c for c in cells if spec_key(c.to_dict()) not in done]
    if done:
        print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already recorded in {output}",
              file=sys.stderr)
    records = []

    def keep(record: dict) -> None:
        """A finished cell's record goes to the output file (or stdout) before anything else happens."""
        if output is not None:
            append_record(output, record)
        else:
            print(json.dumps(record, default=str), flush=True)
        records.append(record)

    if interleave:
        from bench.measure.runner import run_interleaved

        def on_record(cell, record):
            keep(record)
            print(f"[{len(records)}/{len(todo)}] {describe(cell)}: {one_line(record)}", file=sys.stderr)

        print(f"interleaving {len(todo)} cells", file=sys.stderr)
        run_interleaved(todo, on_record=on_record)
        return records
    if not todo:
        return records
    with open_launcher(launcher, **options) as runner:
        _drive(runner, todo, len(cells), keep, progress)
    return records


def _drive(runner, todo: list[CellSpec], total: int, keep, progress: bool) -> None:
    """Submit up to the launcher's capacity, keep each record as its Future completes, refill."""
    from tqdm import tqdm

    finished: queue.Queue = queue.Queue()  # futures in the order they complete
    waiting = iter(todo)
    in_flight: dict = {}  # future -> (cell, submitted at)
    bar = tqdm(total=total, initial=total - len(todo), unit="cell", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    count = total - len(todo)

    def fill() -> None:
        while len(in_flight) < runner.capacity:
            cell = next(waiting, None)
            if cell is None:
                return
            bar.set_description(describe(cell))
            submitted = time.perf_counter()
            future = runner.submit(cell)
            in_flight[future] = (cell, submitted)
            future.add_done_callback(finished.put)

    try:
        fill()
        while in_flight:
            future = finished.get()
            cell, submitted = in_flight.pop(future)
            record = future.result()
            record.setdefault("wall_s", time.perf_counter() - submitted)
            keep(record)
            count += 1
            bar.update(1)
            bar.set_description(f"{len(in_flight)} running" if in_flight else describe(cell))
            bar.write(f"[{count}/{total}] {describe(cell)}: {one_line(record)}", file=sys.stderr)
            fill()
    finally:
        bar.close()
