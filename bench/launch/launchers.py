"""The launchers by name: ``open_launcher("process", jobs=2)`` -> an object with ``submit(spec) -> Future``.

``inline`` and ``process`` live in ``bench.launch.process``; ``ray`` in ``bench.launch.ray_cluster``,
imported (and ray with it) only when the Ray launcher is opened.
"""

from __future__ import annotations

from contextlib import contextmanager

from bench.errors import UserError

LAUNCHERS = ("inline", "process", "ray")


def check_options(name: str, *, jobs: int | None = None, cpus_per_cell: int | None = None,
                  ray_address: str | None = None, ray_retries: int | None = None) -> None:
    """Refuse, in one line, a launcher name or an option that does not apply to it."""
    if name not in LAUNCHERS:
        raise UserError(f"unknown launcher {name!r}; valid: {', '.join(LAUNCHERS)}")
    if name == "inline" and jobs not in (None, 1):
        raise UserError("--jobs: the inline launcher runs one cell at a time; use --launcher process or ray")
    if name == "inline" and cpus_per_cell is not None:
        raise UserError("--cpus-per-cell sets the threads of a cell's own process: use --launcher process or ray")
    if name != "ray" and ray_address is not None:
        raise UserError("--ray-address needs --launcher ray")
    if name != "ray" and ray_retries is not None:
        raise UserError("--ray-retries needs --launcher ray")


def make_launcher(name: str, *, jobs: int | None = None, cpus_per_cell: int | None = None,
                  ray_address: str | None = None, ray_retries: int | None = None):
    check_options(name, jobs=jobs, cpus_per_cell=cpus_per_cell, ray_address=ray_address, ray_retries=ray_retries)
    if name == "inline":
        from bench.launch.process import InlineLauncher

        return InlineLauncher()
    if name == "process":
        from bench.launch.process import ProcessLauncher

        return ProcessLauncher(jobs=jobs or 1, threads=cpus_per_cell)
    from bench.launch.ray_cluster import DEFAULT_RETRIES, RayLauncher

    return RayLauncher(cpus_per_cell=cpus_per_cell or 1, address=ray_address, jobs=jobs,
                       retries=DEFAULT_RETRIES if ray_retries is None else ray_retries)


@contextmanager
def open_launcher(name: str, **options):
    """A launcher for a ``with`` block; leaving it by an exception drops the cells not started yet."""
    launcher = make_launcher(name, **options)
    try:
        yield launcher
    except BaseException:
        launcher.close(cancel=True)
        raise
    launcher.close()
