"""Frame loading: sampling modes, output shape and range, errors on bad files, and the three decoders
(PyAV, decord, torchcodec) giving the same frames for the same indices."""

import json
import sys

import numpy as np
import pytest
import torch

from bench.errors import UserError
from tasks.fixtures import write_corrupt_video, write_empty_video, write_video
from tasks.video import (DECODERS, DEFAULT_DECODER, VideoError, decode, decoder_version, get_decoder,
                         installed_decoders, load_frames, rate_indices, uniform_indices)
from tests.bad_input import user_error

INSTALLED = installed_decoders()
# every decoder, skipped where it does not import (decord has no wheel on arm64; torchcodec needs FFmpeg's libraries)
EACH_DECODER = [pytest.param(name, marks=pytest.mark.skipif(name not in INSTALLED, reason=f"{name} not usable here"))
                for name in DECODERS]


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


def _assert_one_line_error(path, decoder=DEFAULT_DECODER):
    with pytest.raises(VideoError) as err:
        load_frames(path, frames=3, decoder=decoder)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert message.startswith(f"cannot read video {path}: ")


@pytest.mark.parametrize("decoder", EACH_DECODER)
def test_missing_file(tmp_path, decoder):
    _assert_one_line_error(tmp_path / "missing.mp4", decoder)


@pytest.mark.parametrize("decoder", EACH_DECODER)
def test_empty_file(tmp_path, decoder):
    _assert_one_line_error(write_empty_video(tmp_path / "empty.mp4"), decoder)


@pytest.mark.parametrize("decoder", EACH_DECODER)
def test_random_bytes(tmp_path, decoder):
    _assert_one_line_error(write_corrupt_video(tmp_path / "corrupt.mp4"), decoder)


@pytest.mark.parametrize("decoder", EACH_DECODER)
def test_truncated_file(tmp_path, video, decoder):
    data = open(video, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    _assert_one_line_error(cut, decoder)


# --- the decoders agree -------------------------------------------------------------------------------

# 6 s at 4 fps = 24 frames: plain; B-frames with a keyframe every 5 frames; a first pts of 7 (not 0) with a
# keyframe every 4; both together
VARIANTS = {"plain": {}, "bframes": {"bframes": 2, "keyframe_every": 5},
            "start_pts": {"start_pts": 7, "keyframe_every": 4},
            "bframes_start_pts": {"bframes": 3, "keyframe_every": 6, "start_pts": 5}}
SHUFFLED = [13, 2, 2, 20, 0, 23, 9, 10, 5]  # out of order, a repeat, across keyframes, both ends


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    return {name: write_video(root / f"{name}.mp4", seconds=6, fps=4, size=32, seed=i, **kw)
            for i, (name, kw) in enumerate(VARIANTS.items())}


@pytest.fixture(scope="module")
def reference(variants):
    """PyAV's frames, every one of each variant, decoded front to back."""
    return {name: decode(path, decoder="pyav") for name, path in variants.items()}


def _packets(path):
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return [(p.pts, p.dts) for p in container.demux(stream) if p.size]


def test_the_variants_have_b_frames_and_a_late_start(variants):
    """The fixtures are what the decoder tests claim: decode order differs from presentation order, a first
    pts that is not 0, several keyframes."""
    for name in ("bframes", "bframes_start_pts"):
        packets = _packets(variants[name])
        assert [p for p, _ in packets] != sorted(p for p, _ in packets), name  # B-frames reorder
    assert min(p for p, _ in _packets(variants["start_pts"])) > 0
    assert min(p for p, _ in _packets(variants["plain"])) == 0


@pytest.mark.parametrize("name", VARIANTS)
def test_pyav_seeks_exactly(variants, reference, name):
    """Each frame read on its own (a seek each) equals that frame of the front-to-back decode."""
    frames, n, fps = reference[name]
    assert (n, fps, frames.shape) == (24, 4.0, (24, 32, 32, 3)) and frames.dtype == np.uint8
    for i in (0, 1, 4, 5, 11, 17, 23):
        assert np.array_equal(decode(variants[name], [i], decoder="pyav")[0][0], frames[i]), i
    assert np.array_equal(decode(variants[name], SHUFFLED, decoder="pyav")[0], frames[SHUFFLED])
    assert all(np.abs(frames[i].astype(int) - frames[i + 1]).mean() > 0.5 for i in range(n - 1))  # all distinct


@pytest.mark.parametrize("decoder", EACH_DECODER)
@pytest.mark.parametrize("name", VARIANTS)
def test_decoders_give_the_same_frames(variants, reference, name, decoder):
    frames, n, fps = reference[name]
    every, count, rate = decode(variants[name], decoder=decoder)
    assert (count, rate) == (n, fps)
    assert every.dtype == np.uint8 and np.array_equal(every, frames)
    assert np.array_equal(decode(variants[name], SHUFFLED, decoder=decoder)[0], frames[SHUFFLED])
    clip = load_frames(variants[name], fps=1, decoder=decoder)
    assert clip.indices == [0, 4, 8, 12, 16, 20]
    assert torch.equal(clip.frames, load_frames(variants[name], fps=1).frames)


def test_out_of_range_index_is_one_line(video):
    with pytest.raises(VideoError, match=r"frame index 12 out of range for 12 frames$"):
        decode(video, [0, 12])


# --- choosing a decoder ---------------------------------------------------------------------------------

def test_unknown_decoder_names_it_and_the_installed_ones(video):
    with pytest.raises(UserError, match=r"unknown video decoder 'ffmpeg'; valid: pyav, decord, torchcodec "
                                        r"\(installed: pyav"):
        load_frames(video, frames=2, decoder="ffmpeg")


def test_not_installed_decoder_names_it_and_the_installed_ones(monkeypatch, video):
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord now fails as if it were not installed
    assert "decord" not in installed_decoders()
    with pytest.raises(UserError) as err:
        load_frames(video, frames=2, decoder="decord")
    message = str(err.value)
    assert message.startswith("video decoder 'decord' is not installed: pip install 'viperbench[decord]'; "
                              "installed: pyav"), message
    assert "\n" not in message


def test_decoder_that_does_not_load_says_why(monkeypatch, video):
    """torchcodec without FFmpeg's libraries imports, then fails on the first video: it is refused up front."""
    import dataclasses

    def no_ffmpeg():
        raise RuntimeError("FFmpeg's shared libraries (versions 4 to 8) were not found")

    monkeypatch.setitem(DECODERS, "torchcodec", dataclasses.replace(DECODERS["torchcodec"], probe=no_ffmpeg))
    assert "torchcodec" not in installed_decoders()
    with pytest.raises(UserError, match=r"^video decoder 'torchcodec' does not load \(FFmpeg's shared libraries "
                                        r"\(versions 4 to 8\) were not found\); installed: pyav"):
        load_frames(video, frames=2, decoder="torchcodec")


def test_bad_decoder_flag_is_one_line(capfd):
    user_error(capfd, ["run", "--arch", "transformer", "--frames", "2", "--decoder", "nope"],
               "unknown video decoder 'nope'", "installed: pyav")


def test_eval_without_pyav_is_one_line(capfd, monkeypatch, tmp_path):
    """PyAV is a core dependency; still, an environment without it gets one line, not a traceback, before
    V-NIAH's videos are generated."""
    monkeypatch.setitem(sys.modules, "av", None)
    user_error(capfd, ["eval", "--task", "vniah", "--arch", "transformer", "--data", str(tmp_path)],
               "video decoder 'pyav' is not installed", "pip install av")


def test_decoder_in_spec_only_when_not_the_default():
    from bench.spec import DEFAULT_DECODER as SPEC_DEFAULT, make_spec

    assert SPEC_DEFAULT == DEFAULT_DECODER
    assert "decoder" not in make_spec({"arch": "transformer"}).to_dict()  # records and keys as before the field
    if "decord" in INSTALLED:
        spec = make_spec({"arch": "transformer", "decoder": "decord"})
        assert spec.to_dict()["decoder"] == "decord" and make_spec(spec.to_dict()).key() == spec.key()


def test_decoder_and_version_in_env():
    import av

    from bench.records import environment

    env = environment("cpu", "pyav")
    assert env["decoder"] == "pyav" and env["decoder_version"] == av.__version__
    assert "decoder" not in environment("cpu")  # nothing decoded
    assert decoder_version("pyav") == av.__version__
    assert get_decoder("pyav").name == "pyav"


@pytest.mark.parametrize("decoder", EACH_DECODER)
def test_eval_decodes_with_the_chosen_decoder(tmp_path, capsys, decoder):
    """`eval --decoder` reaches the frames: the same V-NIAH answers with each decoder, named in the record."""
    from bench.cli import main
    from tasks.vniah import Config, generate

    data = generate(tmp_path / "vniah", Config(lengths=(4,), depths=(0.5,), per_cell=2, size=32, seed=1))
    out, log = tmp_path / f"{decoder}.jsonl", tmp_path / f"{decoder}-docs.jsonl"
    assert main(["eval", "--task", "vniah", "--data", str(data), "--arch", "hybrid", "--vision", "synthetic",
                 "--tokens-per-frame", "4", "--fps", "1", "--frames", "4", "--decoder", decoder,
                 "--output", str(out), "--log", str(log)]) == 0
    capsys.readouterr()
    record = json.loads(out.read_text())
    assert record["env"]["decoder"] == decoder and record["env"]["decoder_version"] == decoder_version(decoder)
    assert record["spec"].get("decoder", DEFAULT_DECODER) == decoder
    docs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [d["error"] for d in docs] == [None, None]
