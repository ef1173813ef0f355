"""Frame loading for real-video tasks: uniform or fixed-rate sampling, decoding, resizing.

Three decoders return the same frames (uint8 RGB) for the same frame indices: ``pyav`` (PyAV, a core
dependency, the default), ``decord`` and ``torchcodec`` (optional extras of the same names). A frame's
index is its position in presentation order, counted from the video's first frame whatever its pts.
"""

from __future__ import annotations

import bisect
import importlib
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import UserError


class VideoError(Exception):
    """A video that is missing, empty or cannot be decoded; the message is one line naming the file."""


def _fail(path, reason) -> VideoError:
    text = " ".join(str(reason).split()) or type(reason).__name__
    return VideoError(f"cannot read video {path}: {text}")


@dataclass
class Clip:
    """Sampled frames of a video and where in the video they come from.

    frames: [N, 3, H, W] (float in [0, 1] or uint8); indices: the source frame index of each
    sampled frame; fps: the source video's frame rate; total_frames: frames in the source video.
    A video LLM's processor turns indices / fps into the timestamps it writes into the prompt.
    """

    frames: torch.Tensor
    indices: list[int]
    fps: float
    total_frames: int
    path: str | None = None

    def __post_init__(self):
        if len(self.indices) != self.frames.shape[0]:
            raise ValueError(f"{self.frames.shape[0]} frames but {len(self.indices)} frame indices")

    @property
    def duration_s(self) -> float:
        return self.total_frames / self.fps

    @classmethod
    def consecutive(cls, frames: torch.Tensor, fps: float = 1.0) -> "Clip":
        """Frames that are the whole video, one after the other at ``fps`` (synthetic workloads)."""
        n = frames.shape[0]
        return cls(frames, list(range(n)), float(fps), n)


def uniform_indices(count: int, n: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n)``: ``linspace(0, n - 1, count)`` rounded."""
    if count <= 0 or n <= 0:
        return []
    return torch.linspace(0, n - 1, count).round().long().tolist()


def rate_indices(n: int, video_fps: float, fps: float) -> list[int]:
    """Frame indices sampled at ``fps`` frames per second from a video of ``n`` frames at ``video_fps``.

    One frame per ``1 / fps`` seconds starting at 0, covering the whole duration (at least one frame).
    """
    if n <= 0:
        return []
    duration = n / video_fps
    count = max(1, math.ceil(duration * fps - 1e-6))
    step = video_fps / fps
    return [min(n - 1, int(round(i * step))) for i in range(count)]



# --- decoders ---------------------------------------------------------------------------------------


class Reader:
    """An open video: ``count`` frames at ``fps``; ``read(indices)`` -> uint8 RGB [N, H, W, 3] in that order."""

    count: int
    fps: float

    def read(self, indices: list[int]) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class PyAVReader(Reader):
    """PyAV. Opening demuxes the stream once (packets only, no decoding) for every frame's pts: the index
    of a frame is its rank among them. Reading seeks to the keyframe at or before each wanted frame and
    decodes forward until that frame's pts, continuing without a seek while no keyframe lies between."""

    def __init__(self, path: str):
        import av

        self._container = av.open(path)
        try:
            self._stream = self._container.streams.video[0]
        except IndexError:
            self.close()
            raise ValueError("no video stream") from None
        self._stream.thread_type = "AUTO"
        pts, keys = [], []
        for packet in self._container.demux(self._stream):
            if packet.pts is None or packet.size == 0:  # the flush packet at the end
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
        self._pts = sorted(pts)
        self._keys = sorted(keys)
        self.count = len(self._pts)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self._frames = None  # the decoding generator, positioned after self._last
        self._last = None

    def _keyframe_before(self, pts: int) -> int | None:
        i = bisect.bisect_right(self._keys, pts)
        return self._keys[i - 1] if i else None

    def _seek(self, pts: int) -> None:
        key = self._keyframe_before(pts)
        self._container.seek(self._pts[0] if key is None else key, backward=True, any_frame=False,
                             stream=self._stream)
        self._frames = self._container.decode(self._stream)
        self._last = None

    def _frame_at(self, pts: int) -> np.ndarray:
        key = self._keyframe_before(pts)
        if self._frames is None or self._last is None or self._last >= pts or (key is not None and key > self._last):
            self._seek(pts)
        for frame in self._frames:
            if frame.pts is None:
                continue
            self._last = frame.pts
            if frame.pts == pts:
                return frame.to_ndarray(format="rgb24")
            if frame.pts > pts:
                break
        raise ValueError(f"frame at pts {pts} could not be decoded")

    def read(self, indices):
        wanted = sorted(set(indices))
        out = {i: self._frame_at(self._pts[i]) for i in wanted}
        return np.stack([out[i] for i in indices])

    def close(self):
        self._container.close()


class DecordReader(Reader):
    """decord's ``VideoReader`` (its own frame index and seeking)."""

    def __init__(self, path: str):
        import decord

        self._reader = decord.VideoReader(path, ctx=decord.cpu(0))
        self.count = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())

    def read(self, indices):
        return self._reader.get_batch(list(indices)).asnumpy()


class TorchCodecReader(Reader):
    """torchcodec's ``VideoDecoder`` with exact seeking (it scans the file for every frame's pts first)."""

    def __init__(self, path: str):
        from torchcodec.decoders import VideoDecoder

        self._decoder = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC")
        meta = self._decoder.metadata
        self.count = int(meta.num_frames or 0)
        self.fps = float(meta.average_fps or 0.0)

    def read(self, indices):
        return self._decoder.get_frames_at(list(indices)).data.numpy()


def _probe_torchcodec() -> None:
    """torchcodec imports without FFmpeg's shared libraries and fails only when a video is opened: its
    ``_core.ops`` module loads them at import and records whether it could."""
    from torchcodec._core import ops

    if not getattr(ops, "_FFMPEG_AVAILABLE", True):
        raise RuntimeError("FFmpeg's shared libraries (versions 4 to 8) were not found")


@dataclass(frozen=True)
class Decoder:
    name: str
    distribution: str  # the pip package (its version goes into a record's env)
    extra: str | None  # viperbench's extra that installs it; None: a core dependency
    open: Callable[[str], Reader]
    probe: Callable[[], None]  # imports what the decoder needs; raises when it cannot work here


DEFAULT_DECODER = "pyav"
DECODERS = {d.name: d for d in (
    Decoder("pyav", "av", None, PyAVReader, lambda: importlib.import_module("av")),
    Decoder("decord", "decord", "decord", DecordReader, lambda: importlib.import_module("decord")),
    Decoder("torchcodec", "torchcodec", "torchcodec", TorchCodecReader, _probe_torchcodec),
)}


NOT_INSTALLED = "is not installed"


def _import_problem(decoder: Decoder) -> str | None:
    """Why ``decoder`` cannot be used here (not installed, or its native libraries do not load), or None."""
    try:
        decoder.probe()
    except ImportError as exc:
        return NOT_INSTALLED if isinstance(exc, ModuleNotFoundError) else f"does not load ({_one_line(exc)})"
    except Exception as exc:  # e.g. torchcodec without the FFmpeg libraries it links against
        return f"does not load ({_one_line(exc)})"
    return None


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def installed_decoders() -> list[str]:
    return [name for name, d in DECODERS.items() if _import_problem(d) is None]


def check_decoder_name(name: str) -> Decoder:
    """The decoder called ``name``; an unknown name is one UserError listing the known ones (imports nothing)."""
    if name not in DECODERS:
        raise UserError(f"unknown video decoder {name!r}; valid: {', '.join(DECODERS)} "
                        f"(installed: {', '.join(installed_decoders()) or 'none'})")
    return DECODERS[name]


def get_decoder(name: str) -> Decoder:
    """The decoder called ``name``, ready to use: unknown or not importable is one UserError naming it
    and the installed decoders."""
    decoder = check_decoder_name(name)
    problem = _import_problem(decoder)
    if problem:
        installed = ", ".join(installed_decoders()) or "none"
        if problem == NOT_INSTALLED:
            problem += ": pip install " + (f"'viperbench[{decoder.extra}]'" if decoder.extra else decoder.distribution)
        raise UserError(f"video decoder {name!r} {problem}; installed: {installed}")
    return decoder


def decoder_version(name: str) -> str | None:
    """The installed version of the package behind decoder ``name`` (None when not installed)."""
    try:
        return importlib.metadata.version(DECODERS[name].distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def decode(path, indices: list[int] | None = None, *, decoder: str = DEFAULT_DECODER):
    """Frames ``indices`` (all when None) of the video at ``path`` with ``decoder``: (uint8 RGB [N, H, W, 3],
    frame count, fps). Raises VideoError (one line naming the file) when it is missing, empty, has no
    frames, or cannot be decoded; UserError when the decoder is unknown or not installed."""
    array, n, video_fps, _ = _read(path, lambda n, _fps: list(range(n)) if indices is None else list(indices),
                                   decoder)
    return array, n, video_fps


def _read(path, choose: Callable[[int, float], list[int]], decoder: str):
    """Open ``path`` with ``decoder``, pick indices with ``choose(frame count, fps)`` and read them:
    (array, frame count, fps, indices). Every failure of the file is one VideoError line."""
    reader_type = get_decoder(decoder).open
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise _fail(path, "no such file")
    if os.path.getsize(path) == 0:
        raise _fail(path, "empty file")
    try:
        reader = reader_type(path)
    except Exception as exc:  # each library raises its own error types for undecodable input
        raise _fail(path, exc) from None
    try:
        n, video_fps = reader.count, reader.fps
        if n <= 0:
            raise _fail(path, "no frames")
        if not video_fps > 0:
            raise _fail(path, f"invalid frame rate {video_fps}")
        indices = choose(n, video_fps)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise _fail(path, f"frame index {bad[0]} out of range for {n} frames")
        try:
            array = reader.read(indices)
        except Exception as exc:
            raise _fail(path, exc) from None
    finally:
        try:
            reader.close()
        except Exception:  # a reader that failed half-way may not close cleanly; the error above says why
            pass
    return np.ascontiguousarray(array), n, video_fps, indices


def load_frames(path, *, frames: int | None = None, fps: float | None = None, max_frames: int | None = None,
                size: int | None = None, decoder: str = DEFAULT_DECODER) -> Clip:
    """Decode sampled frames of the video at ``path`` with ``decoder`` (``DECODERS``).

    Give exactly one of ``frames`` (N frames spread uniformly over the whole video) or ``fps``
    (one frame per 1/fps seconds; when that yields more than ``max_frames``, those are subsampled
    uniformly down to ``max_frames``). Returns a ``Clip``: float frames [N, 3, H, W] in [0, 1]
    (H = W = ``size`` when given, resized bilinearly with antialiasing), the sampled frame indices,
    the video's frame rate and frame count. Raises VideoError when the file is missing, empty, has
    no frames or cannot be decoded; UserError when the decoder is unknown or not installed.
    """
    if (frames is None) == (fps is None):
        raise ValueError("give exactly one of frames or fps")
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be positive, got {frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be positive, got {max_frames}")

    def sample(n: int, video_fps: float) -> list[int]:
        if frames is not None:
            return uniform_indices(frames, n)
        indices = rate_indices(n, video_fps, fps)
        if max_frames is not None and len(indices) > max_frames:
            indices = [indices[i] for i in uniform_indices(max_frames, len(indices))]
        return indices

    path = os.fspath(path)
    array, n, video_fps, indices = _read(path, sample, decoder)
    pixels = torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        pixels = pixels.clamp_(0.0, 1.0)
    return Clip(pixels.contiguous(), list(indices), video_fps, n, path)
