"""Tiny datasets in the official on-disk layouts, with real mp4 files, for tests and smoke runs.

Layouts written under a root directory:

Video-MME (as the downloaded dataset repository)
    ``videomme/test-00000-of-00001.parquet`` with columns video_id, videoID, url, question_id,
    duration (short/medium/long), domain, sub_category, task_type, question, options (list of four
    strings "A. ..."), answer (a letter); three questions per video. Videos at
    ``data/{videoID}.mp4`` and subtitles at ``subtitle/{videoID}.srt``.

Charades-STA
    ``charades_sta_test.txt`` with lines ``VIDEOID START END##sentence`` (two queries per video);
    videos at ``Charades_v1_480/{VIDEOID}.mp4``.

VDC (viperbench's local VDC layout)
    ``vdc.jsonl``: one record per video with its five reference captions and their
    question-answer pairs::

        {"video_id": ..., "video": "videos/{video_id}.mp4",
         "captions": {caption_type: {"caption": reference text,
                                     "qa": [{"question": ..., "answer": ...}, ...]}}}

    for the caption types short, detailed, background, main_object and camera; videos at
    ``videos/{video_id}.mp4`` (the ``video`` field is relative to the root).

Command line: ``python -m tasks.fixtures DIR [--task videomme|charades|vdc|all] [--videos N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from fractions import Fraction

import numpy as np

VIDEOMME_PARQUET = os.path.join("videomme", "test-00000-of-00001.parquet")
CHARADES_ANNOTATIONS = "charades_sta_test.txt"
VDC_ANNOTATIONS = "vdc.jsonl"
VDC_CAPTION_TYPES = ("short", "detailed", "background", "main_object", "camera")
DURATIONS = ("short", "medium", "long")

_COLOURS = ((230, 40, 40), (40, 200, 60), (50, 90, 240), (240, 220, 40))


def _frames(seconds: float, fps: int, size: int, seed: int):
    """Yield RGB uint8 frames [size, size, 3] with coloured squares moving across a dark background."""
    rng = np.random.default_rng(seed)
    count = max(1, int(round(seconds * fps)))
    side = max(4, size // 4)
    squares = []
    for colour in _COLOURS[: 2 + seed % 3]:
        start = rng.uniform(0, size - side, size=2)
        velocity = rng.uniform(-1.0, 1.0, size=2) * size / max(count, 1) * 2
        squares.append((np.array(colour, dtype=np.uint8), start, velocity))
    background = np.array([20 + 10 * (seed % 5), 20, 30], dtype=np.uint8)
    for t in range(count):
        frame = np.empty((size, size, 3), dtype=np.uint8)
        frame[:] = background
        for colour, start, velocity in squares:
            pos = start + velocity * t
            span = size - side
            pos = np.abs(((pos + span) % (2 * span)) - span)  # bounce inside the frame
            y, x = int(pos[0]), int(pos[1])
            frame[y:y + side, x:x + side] = colour
        yield frame


def write_video(path, *, seconds: float = 3, fps: int = 4, size: int = 64, seed: int = 0, bframes: int = 0,
                keyframe_every: int | None = None, start_pts: int = 0) -> str:
    """Write an mp4 of ``seconds`` at ``fps`` and ``size`` x ``size`` pixels with moving coloured squares.

    Encodes h264 (libx264) when PyAV has it, else mpeg4. ``size`` is rounded up to an even number.
    ``bframes``: B-frames between references (decode order then differs from presentation order);
    ``keyframe_every``: a keyframe every N frames (several to seek between); ``start_pts``: the first
    frame's pts in units of 1/fps (a video that does not start at 0). Returns the path.
    """
    import av

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    size = size + size % 2
    codec = next((c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available), "mpeg4")
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=int(fps))
        stream.width = size
        stream.height = size
        stream.pix_fmt = "yuv420p"
        options = {"bf": str(bframes)}
        if keyframe_every:
            options.update(g=str(keyframe_every), keyint_min=str(keyframe_every))
        if codec in ("libx264", "h264"):
            options["preset"] = "ultrafast" if not bframes else "veryfast"  # ultrafast turns B-frames off
        stream.options = options
        for t, image in enumerate(_frames(seconds, fps, size, seed)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = start_pts + t
            frame.time_base = Fraction(1, int(fps))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_corrupt_video(path, *, nbytes: int = 4096, seed: int = 0) -> str:
    """Write ``nbytes`` of random bytes to ``path`` (a file named like a video that cannot be decoded)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(random.Random(seed).randbytes(nbytes))
    return path


def write_empty_video(path) -> str:
    """Write a zero-byte file at ``path``."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    open(path, "wb").close()
    return path


def _new_id(rng: random.Random, alphabet: str, length: int, taken: set) -> str:
    """A random identifier from ``alphabet`` not yet in ``taken`` (which it joins)."""
    while True:
        ident = "".join(rng.choice(alphabet) for _ in range(length))
        if ident not in taken:
            taken.add(ident)
            return ident


def _srt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def make_videomme(root, *, videos: int = 2, seconds: float = 3, seed: int = 0) -> str:
    """Write a Video-MME copy with ``videos`` videos and three questions each under ``root``; returns the parquet path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = os.fspath(root)
    rng = random.Random(seed)
    domains = ("Knowledge", "Film & Television", "Sports Competition", "Life Record")
    sub_categories = ("Geography", "Documentary", "Football", "Daily Life")  # one of each domain's, as lmms-eval knows them
    tasks = ("Object Recognition", "Action Recognition", "Counting Problem", "Temporal Perception")
    rows = {name: [] for name in ("video_id", "videoID", "url", "question_id", "duration", "domain",
                                  "sub_category", "task_type", "question", "options", "answer")}
    taken: set = set()
    for v in range(videos):
        video_id = f"{v + 1:03d}"
        stem = _new_id(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", 11, taken)
        write_video(os.path.join(root, "data", f"{stem}.mp4"), seconds=seconds, seed=seed + v)
        os.makedirs(os.path.join(root, "subtitle"), exist_ok=True)
        with open(os.path.join(root, "subtitle", f"{stem}.srt"), "w", encoding="utf-8") as fh:
            half = seconds / 2
            fh.write(f"1\n{_srt_time(0)} --> {_srt_time(half)}\nThe squares start moving.\n\n"
                     f"2\n{_srt_time(half)} --> {_srt_time(seconds)}\nThey keep bouncing around.\n")
        for q in range(3):
            labels = ["red", "green", "blue", "yellow"]
            rng.shuffle(labels)
            answer = rng.choice("ABCD")
            rows["video_id"].append(video_id)
            rows["videoID"].append(stem)
            rows["url"].append(f"https://www.youtube.com/watch?v={stem}")
            rows["question_id"].append(f"{video_id}-{q + 1}")
            rows["duration"].append(DURATIONS[v % len(DURATIONS)])
            rows["domain"].append(domains[v % len(domains)])
            rows["sub_category"].append(sub_categories[v % len(domains)])
            rows["task_type"].append(tasks[q % len(tasks)])
            rows["question"].append(f"Which colour of square appears in the video? (question {q + 1})")
            rows["options"].append([f"{letter}. {label}" for letter, label in zip("ABCD", labels)])
            rows["answer"].append(answer)
    schema = pa.schema([(name, pa.list_(pa.string()) if name == "options" else pa.string()) for name in rows])
    table = pa.table(rows, schema=schema)
    path = os.path.join(root, VIDEOMME_PARQUET)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path)
    return path


def make_charades(root, *, videos: int = 2, seconds: float = 3, seed: int = 0) -> str:
    """Write a Charades-STA copy with ``videos`` videos and two queries each under ``root``; returns the annotation path."""
    root = os.fspath(root)
    rng = random.Random(seed)
    sentences = ("person opens a door.", "person turns a light on.", "a person is sitting in a chair.",
                 "person takes a cup from the table.")
    lines = []
    taken: set = set()
    for v in range(videos):
        vid = _new_id(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 5, taken)
        write_video(os.path.join(root, "Charades_v1_480", f"{vid}.mp4"), seconds=seconds, seed=seed + v)
        for q in range(2):
            start = round(rng.uniform(0, seconds / 2), 1)
            end = round(rng.uniform(start + 0.1 * seconds, seconds), 1)
            lines.append(f"{vid} {start:.1f} {min(end, seconds):.1f}##{sentences[(2 * v + q) % len(sentences)]}")
    path = os.path.join(root, CHARADES_ANNOTATIONS)
    os.makedirs(root, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def make_vdc(root, *, videos: int = 2, seconds: float = 3, seed: int = 0) -> str:
    """Write viperbench's local VDC layout with ``videos`` videos under ``root``; returns the jsonl path."""
    root = os.fspath(root)
    texts = {
        "short": "Coloured squares move across a dark background.",
        "detailed": "Several solid coloured squares glide over a dark background, bouncing off the edges "
                    "of the frame as they move.",
        "background": "The background is a plain dark colour with no texture.",
        "main_object": "The main objects are solid squares in bright colours such as red and green.",
        "camera": "The camera is static; there is no panning or zooming.",
    }
    questions = {
        "short": [("What moves in the video?", "Coloured squares.")],
        "detailed": [("What do the squares do at the edges?", "They bounce off."),
                     ("What colour is the background?", "Dark.")],
        "background": [("Does the background have texture?", "No.")],
        "main_object": [("What shape are the main objects?", "Squares.")],
        "camera": [("Does the camera move?", "No, it is static.")],
    }
    path = os.path.join(root, VDC_ANNOTATIONS)
    os.makedirs(root, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for v in range(videos):
            video_id = f"vdc_{v:04d}"
            rel = f"videos/{video_id}.mp4"
            write_video(os.path.join(root, "videos", f"{video_id}.mp4"), seconds=seconds, seed=seed + v)
            record = {
                "video_id": video_id,
                "video": rel,
                "captions": {
                    kind: {"caption": texts[kind],
                           "qa": [{"question": q, "answer": a} for q, a in questions[kind]]}
                    for kind in VDC_CAPTION_TYPES
                },
            }
            fh.write(json.dumps(record) + "\n")
    return path


MAKERS = {"videomme": make_videomme, "charades": make_charades, "vdc": make_vdc}


def main(argv=None) -> int:
    """Write the requested fixture datasets under DIR and print the annotation paths, one per line."""
    parser = argparse.ArgumentParser(prog="python -m tasks.fixtures",
                                     description="Write tiny datasets in the official layouts with real mp4 files.")
    parser.add_argument("dir", help="root directory to write into")
    parser.add_argument("--task", choices=[*MAKERS, "all"], default="all")
    parser.add_argument("--videos", type=int, default=2, help="videos per dataset (default 2)")
    args = parser.parse_args(argv)
    if args.videos < 1:
        parser.error("--videos must be at least 1")
    names = list(MAKERS) if args.task == "all" else [args.task]
    for name in names:
        print(MAKERS[name](args.dir, videos=args.videos))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
