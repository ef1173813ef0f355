"""V-NIAH, after LongVA: a needle frame hidden at depth d of a haystack video, and a question about it.

Every haystack frame shows grey shapes drifting over a dark, noisy background; the needle
frame, at index ``round(d x (N - 1))`` of an N-frame video, shows one large square in a
saturated colour over the same haystack. The question asks for that colour, with four
options (``A. red`` ... ``D. yellow``; ``shuffle_options`` shuffles their order per
document). Everything is drawn from the seed, so a seed and a configuration give the same
videos byte for byte.

On disk (``python -m tasks.vniah DIR`` or ``viperbench eval --task vniah`` without ``--data``)::

    DIR/config.json     the generation settings (lengths, depths, per_cell, size, fps, seed, ...)
    DIR/vniah.jsonl     one document per line: id, video, length, depth, needle_index, colour,
                        options, answer
    DIR/videos/{id}.mp4 N frames at ``fps`` (1 by default: evaluate with ``--fps 1`` to see every frame)

Seeds: the evaluation set of seed S and the training stream of seed S come from different
children of ``numpy.random.SeedSequence(S)``, so training never sees an evaluation document.
Metrics: accuracy in percent overall, per length, per depth and per (length, depth) cell
(``accuracy/cell/<length>/<depth>``, the heatmap's cells).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.errors import UserError
from tasks import register_task
from tasks.base import ACCURACY, Doc
from tasks.letters import LetterTask

COLOURS = {"red": (225, 35, 35), "green": (35, 195, 60), "blue": (45, 85, 240), "yellow": (235, 215, 35)}
LETTERS = "ABCD"
ANNOTATIONS, CONFIG = "vniah.jsonl", "config.json"
EVAL_STREAM, TRAIN_STREAM = 0, 1  # SeedSequence children: evaluation documents / training samples


@dataclass(frozen=True)
class Config:
    lengths: tuple[int, ...] = (8, 16, 32)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    per_cell: int = 2
    size: int = 64
    fps: int = 1
    seed: int = 0
    shuffle_options: bool = False

    def __post_init__(self):
        lengths, depths = tuple(self.lengths), tuple(float(d) for d in self.depths)
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "depths", depths)
        if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
            raise UserError(f"vniah: lengths must be positive frame counts, got {list(lengths)}")
        bad = [d for d in depths if not 0.0 <= d <= 1.0]
        if not depths or bad:
            raise UserError(f"vniah: needle depth {bad[0] if bad else None} lies outside [0, 1]")
        if self.per_cell < 1 or self.size < 16 or self.fps < 1:
            raise UserError("vniah: per_cell >= 1, size >= 16 and fps >= 1 are required")

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "Config":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{where}: unknown vniah setting {unknown[0]!r}; valid: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass
class Sample:
    """One needle-in-a-haystack item: frames uint8 [N, size, size, 3] and its question."""

    frames: np.ndarray
    depth: float
    needle_index: int
    colour: str
    options: list[str]
    answer: str
    prompt: str = field(init=False)

    def __post_init__(self):
        self.prompt = build_prompt(self.options)


def build_prompt(options: list[str]) -> str:
    lines = " ".join(f"{LETTERS[k]}. {name}" for k, name in enumerate(options))
    return f"Colour of the card? {lines} Answer:"


def _haystack(rng: np.random.Generator, length: int, size: int) -> np.ndarray:
    """Grey shapes drifting over dark noise: nothing saturated, so only the needle carries a colour."""
    frames = rng.integers(10, 60, size=(length, size, size, 1), dtype=np.uint8).repeat(3, axis=-1)
    side = size // 5
    for _ in range(3):
        grey = int(rng.integers(80, 200))
        start, step = rng.uniform(0, size - side, 2), rng.uniform(-2.0, 2.0, 2)
        for t in range(length):
            y, x = (np.abs((start + step * t) % (2 * (size - side)) - (size - side))).astype(int)
            frames[t, y:y + side, x:x + side] = grey
    return frames


def make_sample(rng: np.random.Generator, length: int, depth: float, size: int = 64,
                shuffle_options: bool = False) -> Sample:
    frames = _haystack(rng, length, size)
    names = list(COLOURS)
    colour = names[int(rng.integers(len(names)))]
    options = list(rng.permutation(names)) if shuffle_options else names
    index = int(round(depth * (length - 1)))
    noise = rng.integers(-20, 21, size=(size, size, 1))
    frames[index] = np.clip(np.asarray(COLOURS[colour]) + noise, 0, 255).astype(np.uint8)
    return Sample(frames, depth, index, colour, [str(o) for o in options], LETTERS[options.index(colour)])


def stream(seed: int, which: int) -> np.random.Generator:
    """The evaluation (``EVAL_STREAM``) or training (``TRAIN_STREAM``) generator of ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[which])


def eval_samples(config: Config):
    """(id, length, Sample) for every document of the evaluation set, in a fixed order."""
    rng = stream(config.seed, EVAL_STREAM)
    for length in config.lengths:
        for depth in config.depths:
            for k in range(config.per_cell):
                sample = make_sample(rng, length, depth, config.size, config.shuffle_options)
                yield f"vniah-{length}-{depth:g}-{k}", length, sample


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    codec = next((c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available), "mpeg4")
    with av.open(str(path), mode="w") as container:
        stream_ = container.add_stream(codec, rate=fps)
        stream_.width, stream_.height, stream_.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec in ("libx264", "h264"):
            # near-lossless, no B-frames, one thread: the same bytes for the same frames
            stream_.options = {"bf": "0", "preset": "ultrafast", "crf": "4", "threads": "1"}
        for image in frames:
            container.mux(stream_.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream_.encode())


def generate(root, config: Config, progress: bool = False) -> Path:
    """Write the evaluation set of ``config`` under ``root``; returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for doc_id, length, sample in eval_samples(config):
        video = Path("videos") / f"{doc_id}.mp4"
        write_video(root / video, sample.frames, config.fps)
        rows.append({"id": doc_id, "video": str(video), "length": length, "depth": sample.depth,
                     "needle_index": sample.needle_index, "colour": sample.colour, "options": sample.options,
                     "answer": sample.answer})
        if progress:
            print(f"\rvniah: {len(rows)} videos", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    (root / ANNOTATIONS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / CONFIG).write_text(json.dumps(asdict(config), indent=1) + "\n")
    return root


def read_config(root) -> Config:
    path = Path(root) / CONFIG
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"vniah data {root} has no {CONFIG} (generate it: python -m tasks.vniah DIR)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read vniah config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"vniah config {path} is not a JSON object")
    return Config.from_dict(data, str(path))


@register_task("vniah")
class VNIAH(LetterTask):
    """V-NIAH: which colour has the needle frame; accuracy by haystack length and needle depth."""

    name = "vniah"
    kind = ACCURACY
    max_new_tokens = 4
    generates_data = True  # eval without --data generates the evaluation set from --seed

    def __init__(self, data_dir: str):
        self.data_dir = Path(data_dir)
        self.config = read_config(self.data_dir)

    @classmethod
    def default_data(cls, seed: int) -> str:
        """The default evaluation set of ``seed``, generated once into the user's cache directory."""
        from bench.cache import cache_dir

        config = Config(seed=seed)
        root = cache_dir() / "vniah" / f"seed-{seed}"
        try:
            if read_config(root) == config and (root / ANNOTATIONS).is_file():
                return str(root)
        except UserError:
            pass
        print(f"vniah: generating the evaluation set of seed {seed} in {root}", file=sys.stderr)
        return str(generate(root, config))

    def docs(self) -> list[Doc]:
        path = self.data_dir / ANNOTATIONS
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise UserError(f"cannot read vniah annotations {path}: {exc.strerror or exc}") from None
        docs = []
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                docs.append(Doc(id=row["id"], video=str(self.data_dir / row["video"]),
                                prompt=build_prompt(row["options"]), target=row["answer"],
                                fields={"length": int(row["length"]), "depth": float(row["depth"])}))
            except (ValueError, KeyError, TypeError) as exc:
                raise UserError(f"{path}:{n}: malformed vniah document ({type(exc).__name__}: {exc})") from None
        return docs

    def groups(self, doc: Doc) -> list[str]:
        """Accuracy per haystack length, per needle depth and per (length, depth) cell."""
        length, depth = doc.fields["length"], doc.fields["depth"]
        return [f"accuracy/length/{length}", f"accuracy/depth/{depth:g}", f"accuracy/cell/{length}/{depth:g}"]

    def aggregate(self, docs: list[Doc], scores: list[dict | None]) -> dict:
        return {**super().aggregate(docs, scores), "chance": 100.0 / len(LETTERS)}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"malformed list {text!r}: expected numbers separated by commas") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tasks.vniah", description="Write a V-NIAH evaluation set.")
    p.add_argument("dir")
    p.add_argument("--lengths", default="8,16,32", help="haystack lengths in frames (comma list)")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths in [0, 1] (comma list)")
    p.add_argument("--per-cell", type=int, default=2, help="documents per (length, depth)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shuffle-options", action="store_true")
    args = p.parse_args(argv)
    try:
        lengths = tuple(int(x) for x in _floats(args.lengths))
        config = Config(lengths, _floats(args.depths), args.per_cell, args.size, 1, args.seed, args.shuffle_options)
        print(generate(args.dir, config, progress=True))
    except UserError as exc:
        print(f"vniah: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
