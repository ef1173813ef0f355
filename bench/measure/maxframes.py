"""Max frames: the largest frame count a backbone + compressor fits.

Exponential search (start, 2x start, ...) up to the first OOM, then binary search between
the last fit and the first OOM. Every probe is one cell in a fresh child process, so an
OOM cannot poison the next probe. With a memory budget, a peak above it counts as OOM
(on CPU: resident memory above the baseline taken just before the model is built).
"""

from __future__ import annotations

import time

from bench.launch.process import run_process
from bench.records import environment, make_record
from bench.spec import CellSpec, check_runnable


def _close_enough(lo: int, hi: int, precision: float) -> bool:
    return hi - lo <= max(1, int(lo * precision))


def run_probe(spec: CellSpec) -> dict:
    """One real probe: the cell in a fresh child process, one pass."""
    record = run_process(spec.replace(warmup=0, repeats=1))
    m = record.get("metrics", {})
    return {"frames": spec.frames, "status": record["status"], "peak_mem_bytes": m.get("peak_mem_bytes"),
            "prefill_s": m.get("prefill_s"), "error": record.get("error")}


def search(spec: CellSpec, *, start: int = 16, limit: int = 1 << 20, precision: float = 1 / 32,
           on_probe=None, probe=run_probe, estimate: int | None = None, kind: str = "maxframes",
           env: dict | None = None, calibrate=None) -> dict:
    """Search, then return the record: ``metrics`` hold max_frames, first_oom_frames and the probes.

    ``probe(spec)`` returns {frames, status (ok | oom | error), peak_mem_bytes, prefill_s, error}: a real run in
    a child process by default, or a prediction (``bench.predict.capacity``). Without ``estimate`` the search doubles
    from ``start`` to the first OOM and bisects. With ``estimate`` (a predicted max frames) it probes there and
    one precision step above, widening the step each time the guess is off, then bisects: two probes when the
    estimate is right to within ``precision``. ``calibrate(probe)``, if given, first probes half the estimate
    and replaces the estimate by what it returns for that probe (e.g. the prediction rescaled by the measured
    over the predicted peak there).
    """
    if probe is run_probe:
        check_runnable(spec)
    probes: list[dict] = []
    t0 = time.perf_counter()

    def fits(frames: int) -> bool | None:
        probes.append(probe(spec.replace(frames=frames)))
        if on_probe:
            on_probe(probes[-1])
        return {"ok": True, "oom": False}.get(probes[-1]["status"])  # None: the probe failed otherwise

    lo, hi, failed = 0, None, None
    if estimate is None:
        frames = start
        while frames <= limit:
            ok = fits(frames)
            if ok is None:
                failed = probes[-1]
                break
            if not ok:
                hi = frames
                break
            lo, frames = frames, frames * 2
    else:
        if calibrate is not None:  # one real probe well below the estimate rescales it
            ok = fits(max(1, min(int(estimate), limit) // 2))
            if ok is None:
                failed = probes[-1]
            elif ok:
                lo, estimate = probes[-1]["frames"], calibrate(probes[-1])
            else:
                hi, estimate = probes[-1]["frames"], probes[-1]["frames"] // 2
        frames = max(1, min(int(estimate), limit))
        if hi is not None:
            frames = min(frames, hi - 1)
        frames = max(frames, lo + 1)
        step = max(1, int(frames * precision))
        if failed is None and (hi is None or frames < hi):
            ok = fits(frames)
            if ok is None:
                failed = probes[-1]
            elif ok:  # up from the estimate, the step doubling, to the first OOM
                lo = frames
                while failed is None and hi is None and lo < limit:
                    frames = min(lo + step, limit)
                    ok = fits(frames)
                    if ok is None:
                        failed = probes[-1]
                    elif ok:
                        lo, step = frames, step * 2
                    else:
                        hi = frames
            else:  # down from the estimate, the step doubling, to the first fit
                hi = frames
                while failed is None and hi - lo > 1:
                    frames = max(lo + 1, hi - step)
                    ok = fits(frames)
                    if ok is None:
                        failed = probes[-1]
                    elif ok:
                        lo = frames
                        break
                    else:
                        hi, step = frames, step * 2
    while failed is None and hi is not None and hi - lo > 1 and not _close_enough(lo, hi, precision):
        mid = (lo + hi) // 2
        ok = fits(mid)
        if ok is None:
            failed = probes[-1]
        elif ok:
            lo = mid
        else:
            hi = mid
    spec_dict = {**spec.to_dict(), "frames": None}
    metrics = {"max_frames": lo, "first_oom_frames": hi, "probes": probes, "search_s": time.perf_counter() - t0,
               "peak_mem_bytes": max((p["peak_mem_bytes"] or 0 for p in probes if p["status"] == "ok"), default=None),
               "limit": limit}
    if estimate is not None:
        metrics["estimate"] = int(estimate)
    env = environment(spec.device) if env is None else env
    if failed is not None:
        return make_record(spec_dict, env, status="error", metrics=metrics,
                           error=f"probe at {failed['frames']} frames failed: {failed['error']}", kind=kind)
    return make_record(spec_dict, env, metrics=metrics, kind=kind)


def summary_line(record: dict) -> str:
    s, m = record["spec"], record["metrics"]
    budget = f" under {s['memory_budget'] / 2**20:.0f} MiB" if s.get("memory_budget") else ""
    chunk = f", prefill chunk {s['prefill_chunk']}" if s.get("prefill_chunk") else ""
    largest = max((p["frames"] for p in m["probes"]), default=0)
    oom = (f"first OOM at {m['first_oom_frames']}" if m["first_oom_frames"] is not None
           else f"no OOM up to {largest}, the last probe below --limit {m['limit']}")
    head = f"{s['arch']}/{s['checkpoint'] or s['preset']} {s['compressor']}{chunk}"
    if record["status"] != "ok":
        return f"{head}: {record['status']}: {record['error']}"
    return (f"{head}: max frames {m['max_frames']} ({oom}){budget}; "
            f"{len(m['probes'])} probes in {m['search_s']:.0f} s")
