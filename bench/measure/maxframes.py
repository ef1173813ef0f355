"""Max frames: the largest frame count a backbone + compressor fits.

Exponential search (start, 2x start, ...) up to the first OOM, then binary search between
the last fit and the first OOM. The probe is the caller's: ``record_probe(run)`` runs each
probe as one cell with the caller's launcher (``maxframes`` uses a fresh child process, so an
OOM cannot poison the next probe); ``bench.predict.capacity`` probes with predictions. With a
memory budget, a peak above it counts as OOM (on CPU: resident memory above the baseline taken
just before the model is built).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from bench.records import make_record
from bench.spec import CellSpec

Probe = Callable[[CellSpec], dict]  # spec -> {frames, status (ok | oom | error), peak_mem_bytes, prefill_s, error}


def _close_enough(lo: int, hi: int, precision: float) -> bool:
    return hi - lo <= max(1, int(lo * precision))


def record_probe(run: Callable[[CellSpec], dict]) -> Probe:
    """A probe that measures the cell once (no warm-up, one repeat) with ``run(spec) -> record``."""

    def probe(spec: CellSpec) -> dict:
        record = run(spec.replace(warmup=0, repeats=1))
        m = record.get("metrics", {})
        return {"frames": spec.frames, "status": record["status"], "peak_mem_bytes": m.get("peak_mem_bytes"),
                "prefill_s": m.get("prefill_s"), "error": record.get("error")}

    return probe


@dataclass
class Bounds:
    """What the probes so far showed: ``lo`` frames fit, ``hi`` did not (None: no OOM yet), and the probe
    that failed otherwise (it ends the search)."""

    lo: int = 0
    hi: int | None = None
    failed: dict | None = None
    probes: list[dict] = field(default_factory=list)

    @property
    def open(self) -> bool:
        """More probes may narrow the bounds: none has failed."""
        return self.failed is None


class _Prober:
    """Probes frame counts and moves the bounds: a fit raises ``lo``, an OOM lowers ``hi``, anything else
    is ``failed``."""

    def __init__(self, spec: CellSpec, probe: Probe, on_probe):
        self.spec, self.probe, self.on_probe = spec, probe, on_probe
        self.bounds = Bounds()

    def fits(self, frames: int) -> bool | None:
        result = self.probe(self.spec.replace(frames=frames))
        b = self.bounds
        b.probes.append(result)
        if self.on_probe:
            self.on_probe(result)
        ok = {"ok": True, "oom": False}.get(result["status"])  # None: the probe failed otherwise
        if ok is None:
            b.failed = result
        elif ok:
            b.lo = frames
        else:
            b.hi = frames
        return ok


def _doubling(p: _Prober, start: int, limit: int) -> None:
    """``start``, 2x ``start``, ... up to the first probe that does not fit (or ``limit``)."""
    frames = start
    while frames <= limit and p.fits(frames):
        frames *= 2


def _from_estimate(p: _Prober, estimate: int, limit: int, precision: float, calibrate) -> int:
    """Probe at the estimate, then step away from it (the step doubling each time the guess is off) to the
    first probe on the other side. ``calibrate(probe)`` first rescales the estimate from a probe at half of
    it. Returns the estimate the steps started from."""
    b = p.bounds
    if calibrate is not None:  # one real probe well below the estimate rescales it
        ok = p.fits(max(1, min(int(estimate), limit) // 2))
        if ok:
            estimate = calibrate(b.probes[-1])
        elif ok is False:
            estimate = b.probes[-1]["frames"] // 2
    frames = max(1, min(int(estimate), limit))
    if b.hi is not None:
        frames = min(frames, b.hi - 1)
    frames = max(frames, b.lo + 1)
    step = max(1, int(frames * precision))
    if not b.open or (b.hi is not None and frames >= b.hi):
        return estimate
    ok = p.fits(frames)
    if ok:
        _step_up(p, step, limit)
    elif ok is False:
        _step_down(p, step)
    return estimate


def _step_up(p: _Prober, step: int, limit: int) -> None:
    """Up from a fit, the step doubling, to the first OOM (or ``limit``)."""
    b = p.bounds
    while b.open and b.hi is None and b.lo < limit:
        if p.fits(min(b.lo + step, limit)):
            step *= 2


def _step_down(p: _Prober, step: int) -> None:
    """Down from an OOM, the step doubling, to the first fit."""
    b = p.bounds
    while b.open and b.hi - b.lo > 1:
        ok = p.fits(max(b.lo + 1, b.hi - step))
        if ok:
            return
        step *= 2


def _bisect(p: _Prober, precision: float) -> None:
    """Halve the gap between the last fit and the first OOM until it is within ``precision``."""
    b = p.bounds
    while b.open and b.hi is not None and b.hi - b.lo > 1 and not _close_enough(b.lo, b.hi, precision):
        p.fits((b.lo + b.hi) // 2)


def search(spec: CellSpec, *, probe: Probe, env: dict, start: int = 16, limit: int = 1 << 20,
           precision: float = 1 / 32, on_probe=None, estimate: int | None = None, kind: str = "maxframes",
           calibrate=None) -> dict:
    """Search, then return the record: ``metrics`` hold max_frames, first_oom_frames and the probes.

    ``probe(spec)`` returns {frames, status (ok | oom | error), peak_mem_bytes, prefill_s, error}: a real run
    (``record_probe``) or a prediction (``bench.predict.capacity``); ``env`` is the record's environment.
    Without ``estimate`` the search doubles from ``start`` to the first OOM and bisects. With ``estimate`` (a
    predicted max frames) it probes there and one precision step above, widening the step each time the guess
    is off, then bisects: two probes when the estimate is right to within ``precision``. ``calibrate(probe)``,
    if given, first probes half the estimate and replaces the estimate by what it returns for that probe (e.g.
    the prediction rescaled by the measured over the predicted peak there).
    """
    t0 = time.perf_counter()
    p = _Prober(spec, probe, on_probe)
    if estimate is None:
        _doubling(p, start, limit)
    else:
        estimate = _from_estimate(p, estimate, limit, precision, calibrate)
    _bisect(p, precision)
    b = p.bounds
    spec_dict = {**spec.to_dict(), "frames": None}
    metrics = {"max_frames": b.lo, "first_oom_frames": b.hi, "probes": b.probes,
               "search_s": time.perf_counter() - t0,
               "peak_mem_bytes": max((q["peak_mem_bytes"] or 0 for q in b.probes if q["status"] == "ok"),
                                     default=None),
               "limit": limit}
    if estimate is not None:
        metrics["estimate"] = int(estimate)
    if b.failed is not None:
        return make_record(spec_dict, env, status="error", metrics=metrics,
                           error=f"probe at {b.failed['frames']} frames failed: {b.failed['error']}", kind=kind)
    return make_record(spec_dict, env, metrics=metrics, kind=kind)


def summary_line(record: dict) -> str:
    s, m = record["spec"], record["metrics"]
    budget = f" under {s['memory_budget'] / 2**20:.0f} MiB" if s.get("memory_budget") else ""
    chunk = f", prefill chunk {s['prefill_chunk']}" if s.get("prefill_chunk") else ""
    largest = max((p["frames"] for p in m["probes"]), default=0)
    oom = (f"first OOM at {m['first_oom_frames']}" if m["first_oom_frames"] is not None
           else f"no OOM up to {largest}, the last probe below --frames-limit {m['limit']}")
    head = f"{s['arch']}/{s['checkpoint'] or s['preset']} {s['compressor']}{chunk}"
    if record["status"] != "ok":
        return f"{head}: {record['status']}: {record['error']}"
    return (f"{head}: max frames {m['max_frames']} ({oom}){budget}; "
            f"{len(m['probes'])} probes in {m['search_s']:.0f} s")
