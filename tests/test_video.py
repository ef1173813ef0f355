"""Frame loading: sampling modes, output shape and range, and errors on bad files."""

import numpy as np
import pytest
import torch

from tasks.fixtures import write_corrupt_video, write_empty_video, write_video
from tasks.video import VideoError, load_frames, rate_indices, uniform_indices


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 3 s, 4 fps, 64 x 64 clip (12 frames)."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", seconds=3, fps=4, size=64)


def test_uniform_frames_shape_range_and_indices(video):
    clip = load_frames(video, frames=5, size=32)
    pixels = clip.frames
    assert pixels.shape == (5, 3, 32, 32)
    assert pixels.dtype == torch.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert clip.total_frames == 12
    assert clip.fps == pytest.approx(4.0)
    assert clip.duration_s == pytest.approx(3.0)
    assert clip.path == str(video)
    assert clip.indices == np.linspace(0, 11, 5).round().astype(int).tolist()


def test_native_size_without_resize(video):
    pixels = load_frames(video, frames=2).frames
    assert pixels.shape == (2, 3, 64, 64)


def test_fps_mode_samples_one_frame_per_second(video):
    clip = load_frames(video, fps=1)
    assert clip.frames.shape[0] == 3
    assert clip.indices == [0, 4, 8]


def test_fps_mode_caps_at_max_frames_uniformly(video):
    clip = load_frames(video, fps=4, max_frames=5)
    assert clip.frames.shape[0] == 5
    all_indices = list(range(12))
    expected = [all_indices[i] for i in np.linspace(0, 11, 5).round().astype(int)]
    assert clip.indices == expected
    assert load_frames(video, fps=1, max_frames=256).indices == [0, 4, 8]


def test_frames_differ(video):
    pixels = load_frames(video, frames=4).frames
    for a in range(4):
        for b in range(a + 1, 4):
            assert (pixels[a] - pixels[b]).abs().mean() > 0.01


def test_index_helpers():
    assert uniform_indices(1, 10) == [0]
    assert uniform_indices(3, 1) == [0, 0, 0]
    assert rate_indices(12, 4.0, 1.0) == [0, 4, 8]
    assert rate_indices(14, 4.0, 1.0) == [0, 4, 8, 12]
    assert rate_indices(2, 30.0, 1.0) == [0]


def test_exactly_one_sampling_mode(video):
    with pytest.raises(ValueError):
        load_frames(video)
    with pytest.raises(ValueError):
        load_frames(video, frames=2, fps=1)


def _assert_one_line_error(path):
    with pytest.raises(VideoError) as err:
        load_frames(path, frames=3)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert message.startswith(f"cannot read video {path}: ")


def test_missing_file(tmp_path):
    _assert_one_line_error(tmp_path / "missing.mp4")


def test_empty_file(tmp_path):
    _assert_one_line_error(write_empty_video(tmp_path / "empty.mp4"))


def test_random_bytes(tmp_path):
    _assert_one_line_error(write_corrupt_video(tmp_path / "corrupt.mp4"))


def test_truncated_file(tmp_path, video):
    data = open(video, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    _assert_one_line_error(cut)
