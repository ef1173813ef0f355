"""Frame loading for real-video tasks: decord decoding, uniform or fixed-rate sampling, resizing."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def load_frames(path, *, frames: int | None = None, fps: float | None = None, max_frames: int | None = None,
                size: int | None = None) -> Clip:
    """Decode sampled frames of the video at ``path``.

    Give exactly one of ``frames`` (N frames spread uniformly over the whole video) or ``fps``
    (one frame per 1/fps seconds; when that yields more than ``max_frames``, those are subsampled
    uniformly down to ``max_frames``). Returns a ``Clip``: float frames [N, 3, H, W] in [0, 1]
    (H = W = ``size`` when given, resized bilinearly with antialiasing), the sampled frame indices,
    the video's frame rate and frame count. Raises VideoError when the file is missing, empty, has
    no frames or cannot be decoded.
    """
    if (frames is None) == (fps is None):
        raise ValueError("give exactly one of frames or fps")
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be positive, got {frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be positive, got {max_frames}")

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise _fail(path, "no such file")
    if os.path.getsize(path) == 0:
        raise _fail(path, "empty file")

    import decord

    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0))
        n = len(reader)
        video_fps = float(reader.get_avg_fps())
    except Exception as exc:  # decord raises its own error types for undecodable input
        raise _fail(path, exc) from None
    if n <= 0:
        raise _fail(path, "no frames")
    if not video_fps > 0:
        raise _fail(path, f"invalid frame rate {video_fps}")

    if frames is not None:
        indices = uniform_indices(frames, n)
    else:
        indices = rate_indices(n, video_fps, fps)
        if max_frames is not None and len(indices) > max_frames:
            indices = [indices[i] for i in uniform_indices(max_frames, len(indices))]

    try:
        array = reader.get_batch(indices).asnumpy()
    except Exception as exc:
        raise _fail(path, exc) from None

    pixels = torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        pixels = pixels.clamp_(0.0, 1.0)
    return Clip(pixels.contiguous(), list(indices), video_fps, n, path)
