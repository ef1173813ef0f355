"""Clocks and memory meters. The device is synchronised before every clock read.

Memory on CUDA: torch's peak allocated/reserved bytes, and NVML's device-used bytes sampled
by a background thread through the pass (with the energy drawn, where NVML counts it). The NVML
device is found by index or by UUID (``CUDA_VISIBLE_DEVICES=GPU-...`` or ``MIG-...``, as MIG and
SLURM set it); where NVML cannot resolve it, device-used bytes come from
``torch.cuda.device_memory_used`` and there is no energy. A meter that is unavailable is said once
on stderr, and the record's ``metrics.memory`` names the meters used (``device_used_meter``,
``energy_meter``).
Memory on CPU: the process's peak resident set (Linux VmHWM, reset per measurement
through /proc/self/clear_refs) above a baseline taken before the model is built, so
that a number means what it means on a GPU: what weights, activations and caches take.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable

import torch


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def cpu_clock():
    """The CPU-time clock of this pass: the calling thread's when torch computes on one thread (it then
    excludes time the thread spent descheduled on a busy machine), else the whole process's."""
    import torch

    return time.thread_time if torch.get_num_threads() == 1 else time.process_time


class StageTimer:
    """Accumulates wall time per named stage: ``with timer.stage("prefill_s"): ...``.

    On the CPU it also accumulates CPU time (``cpu_times``, :func:`cpu_clock`): the work of the
    stage without the time a shared machine gave to other processes."""

    def __init__(self, device: str):
        self.device = device
        self.times: dict[str, float] = {}
        self.cpu_times: dict[str, float] | None = {} if device == "cpu" else None
        self._cpu = cpu_clock() if device == "cpu" else None

    @contextmanager
    def stage(self, name: str):
        synchronize(self.device)
        t0 = time.perf_counter()
        c0 = self._cpu() if self._cpu else 0.0
        try:
            yield
        finally:
            synchronize(self.device)
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
            if self._cpu:
                self.cpu_times[name] = self.cpu_times.get(name, 0.0) + self._cpu() - c0


# --- CPU resident memory ------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), so a baseline is not inflated by old cells."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _RssPeak:
    """Peak RSS since the last reset: kernel high-water mark when resettable, else sampling."""

    def __init__(self):
        self._kernel = self._try_reset()
        self._peak = 0
        self._stop: threading.Event | None = None

    @staticmethod
    def _try_reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _status_kib("VmHWM") is not None
        except OSError:
            return False

    def reset(self) -> None:
        if self._kernel:
            self._try_reset()
            return
        self.stop()
        self._peak = rss_bytes()
        self._stop = threading.Event()
        threading.Thread(target=self._sample, args=(self._stop,), daemon=True).start()

    def _sample(self, stop: threading.Event) -> None:
        while not stop.wait(0.002):
            self._peak = max(self._peak, rss_bytes())

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def peak(self) -> int:
        if self._kernel:
            return _status_kib("VmHWM") * 1024
        return max(self._peak, rss_bytes())


class NvmlSampler:
    """Device-used bytes sampled by a background thread between ``start`` and ``stop`` (a peak, not two
    snapshots), and the energy the device drew meanwhile where NVML has its total-energy counter."""

    def __init__(self, handle, interval: float = 0.005, used: Callable[[], int] | None = None):
        """``handle``: an NVML device handle; or None and ``used``, a reader of device-used bytes (no energy)."""
        self.handle, self.interval, self._read_used = handle, interval, used
        self.peak = 0
        self._energy_mj: int | None = None
        self.energy_j: float | None = None
        self._stop: threading.Event | None = None

    def _used(self) -> int:
        if self.handle is None:
            return self._read_used()
        import pynvml

        return pynvml.nvmlDeviceGetMemoryInfo(self.handle).used

    def _energy(self) -> int | None:
        if self.handle is None:
            return None
        import pynvml

        try:
            return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # mJ since the driver loaded
        except pynvml.NVMLError:
            return None

    def start(self) -> None:
        self.stop()
        self.peak, self.energy_j = self._used(), None
        self._energy_mj = self._energy()
        self._stop = threading.Event()
        threading.Thread(target=self._run, args=(self._stop,), daemon=True).start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self.peak = max(self.peak, self._used())

    def stop(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        self._stop = None
        self.peak = max(self.peak, self._used())
        end = self._energy()
        if end is not None and self._energy_mj is not None:
            self.energy_j = (end - self._energy_mj) / 1000.0


class MemoryMeter:
    """``set_baseline()`` before building the model; ``reset()`` before a pass; ``read()`` after."""

    def __init__(self, device: str):
        self.device = device
        self.cuda = device.startswith("cuda")
        self.baseline: int | None = None  # set by set_baseline()
        self._rss = None if self.cuda else _RssPeak()
        self._nvml: NvmlSampler | None = None
        self.meters: dict[str, str] = {}  # cuda: which device-used and energy meters this measurement has

    def set_baseline(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            self.baseline = torch.cuda.memory_allocated(self.device)
            self._nvml, self.meters = device_sampler(self.device)
        else:
            release_free_memory()
            self.baseline = rss_bytes()

    def rebase(self, resident: int) -> None:
        """Baseline = usage now minus ``resident`` bytes (e.g. the model's own weights), so that a
        peak counts those bytes plus whatever the next pass adds, whatever else is resident."""
        if not self.cuda:
            release_free_memory()
        used = torch.cuda.memory_allocated(self.device) if self.cuda else rss_bytes()
        self.baseline = used - resident

    def reset(self) -> None:
        """Start a measurement: peaks from now on (after the model is built, so the build never counts)."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            if self._nvml is not None:
                self._nvml.start()
        else:
            release_free_memory()
            self._rss.reset()

    def read(self) -> dict:
        """Peak since the last reset; ``peak_mem_bytes`` is the number tables and budgets use."""
        if self.cuda:
            nvml = self._nvml
            if nvml is not None:
                nvml.stop()
            allocated = torch.cuda.max_memory_allocated(self.device)
            return {"peak_mem_bytes": max(0, allocated - self.baseline), "torch_peak_allocated_bytes": allocated,
                    "torch_peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
                    "nvml_used_bytes": (nvml.peak or None) if nvml else None,
                    "energy_j": nvml.energy_j if nvml else None, "kind": "cuda", **self.meters}
        peak = self._rss.peak()
        return {"peak_mem_bytes": max(0, peak - self.baseline), "rss_peak_bytes": peak,
                "rss_baseline_bytes": self.baseline, "kind": "rss"}


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """One stderr line per distinct message and process: a meter that is missing is said, not an error."""
    if message not in _warned:
        _warned.add(message)
        print(f"viperbench: warning: {message}", file=sys.stderr, flush=True)


def device_sampler(device: str) -> tuple[NvmlSampler | None, dict[str, str]]:
    """The device-used sampler of a CUDA device and the names of its meters; a missing meter is warned once."""
    handle, why = nvml_handle(device)
    if handle is not None:
        return NvmlSampler(handle), {"device_used_meter": "nvml", "energy_meter": "nvml"}
    try:
        torch.cuda.device_memory_used(device)  # resolves CUDA_VISIBLE_DEVICES itself (GPU UUIDs too, not MIG)
    except Exception as exc:  # noqa: BLE001 - any failure means: no device-used meter, said below
        warn_once(f"no device-used memory or energy meter for {device} ({why}; torch.cuda.device_memory_used: "
                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): memory is torch's peak only")
        return None, {"device_used_meter": f"unavailable: {why}", "energy_meter": f"unavailable: {why}"}
    warn_once(f"no NVML device for {device} ({why}): device-used memory from torch.cuda.device_memory_used, "
              "no energy")
    return (NvmlSampler(None, used=lambda: torch.cuda.device_memory_used(device)),
            {"device_used_meter": "torch.cuda.device_memory_used", "energy_meter": f"unavailable: {why}"})


def nvml_handle(device: str):
    """(NVML handle of the torch device, None) or (None, why not). ``CUDA_VISIBLE_DEVICES`` may list
    indices, GPU UUIDs (``GPU-...``, or a unique prefix of one, as CUDA accepts) or MIG UUIDs (``MIG-...``)."""
    try:
        import pynvml
    except ImportError:
        return None, "pynvml is not installed"
    try:
        pynvml.nvmlInit()
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if not visible:
            return pynvml.nvmlDeviceGetHandleByIndex(index), None
        if index >= len(visible):
            return None, f"device {index} is not in CUDA_VISIBLE_DEVICES={','.join(visible)}"
        entry = visible[index]
        if entry.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(entry)), None
        handle = _handle_by_uuid(pynvml, entry)
        return (handle, None) if handle is not None else (None, f"NVML has no device with UUID {entry}")
    except pynvml.NVMLError as exc:
        return None, f"NVML: {exc}"


def _handle_by_uuid(pynvml, entry: str):
    """The handle of a full GPU or MIG UUID, or of the one GPU whose UUID starts with ``entry``; None if none."""
    try:
        return pynvml.nvmlDeviceGetHandleByUUID(entry)
    except pynvml.NVMLError:
        if entry.startswith("MIG-"):
            return None
    prefix = entry if entry.startswith("GPU-") else f"GPU-{entry}"
    matches = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        if (uuid.decode() if isinstance(uuid, bytes) else uuid).startswith(prefix):
            matches.append(handle)
    return matches[0] if len(matches) == 1 else None


class BudgetWatchdog:
    """Calls ``on_exceed(peak)`` from a thread when resident memory above baseline passes ``budget``.

    Used in child-process probes so an over-budget run stops as soon as it crosses the line
    instead of running to completion (or into the kernel's OOM killer).
    """

    def __init__(self, meter: MemoryMeter, budget: int, on_exceed, interval: float = 0.005):
        self.meter, self.budget, self.on_exceed, self.interval = meter, budget, on_exceed, interval
        self._stop = threading.Event()

    def __enter__(self):
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def _watch(self):
        while not self._stop.wait(self.interval):
            if self.meter.baseline is None:
                continue
            if self.meter.cuda:
                used = torch.cuda.memory_allocated(self.meter.device)
            else:
                used = rss_bytes() - self.meter.baseline
            if used > self.budget:
                self.on_exceed(used)
                return
