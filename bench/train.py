"""Train a tiny model on a generated task (V-NIAH), or only TransV's modules of a trained one.

``--train model`` builds the own-layout vision side (SigLIP tower + ToMe + MLP projector)
and a backbone from a preset with random weights, and trains all of it on V-NIAH samples
drawn from the seed's training stream (never the evaluation set's). The loss is the
cross-entropy of the answer letter after ``[BOS][video][question]``, and of EOS after the
letter, through the library
model's own forward (which the harness's layer loop reproduces, ``tests/test_backbones.py``).
Curriculum: the first ``warmup`` steps use the shortest haystack, then lengths are drawn
from ``lengths``.

``--train transv`` starts from such a checkpoint, freezes everything and trains only TransV's
gates and cross-attentions, through the harness's own layer loop (``prefill(grad=True)``),
so the drops and transfers it learns are the ones that run at evaluation.

Output: a checkpoint in viperbench's layout, loadable with ``--checkpoint``: the LLM
(``config.json``, ``model.safetensors``), ``vision/``, ``projector.safetensors``, TransV's
``transv.safetensors`` when trained, ``training.json`` (settings and summary), ``loss.jsonl``
(the loss curve, one line per step) and ``train_state.pt`` (optimizer and random states).
The checkpoint is rewritten every ``save_every`` steps; a run started again on the same
output resumes from it and ends where an uninterrupted run would (deterministic by seed).

A save is crash-safe: the new checkpoint is written whole into ``OUT.partial`` (``train_state.pt``
last, by an atomic rename, so a directory holding it is complete), then swapped in (``OUT`` to
``OUT.old``, ``OUT.partial`` to ``OUT``, ``OUT.old`` removed). A run started after a kill at any
point finishes or undoes the interrupted swap first (``recover``): it resumes from the last
complete save and never deletes the newest one. The state is loaded with ``torch.load(weights_only=True)``:
tensors and plain values only, never code.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import UserError

MODES = ("model", "transv")
FLAGS = {"batch": "--samples-per-step"}  # settings whose flag is not their name
STATE, META, LOSS = "train_state.pt", "training.json", "loss.jsonl"


@dataclass(frozen=True)
class TrainSettings:
    arch: str
    output: str
    preset: str = "tiny"
    checkpoint: str | None = None
    train: str = "model"
    compressor: str = "none"
    task: str = "vniah"
    seed: int = 0
    steps: int = 150
    batch: int = 16  # samples per optimizer step (--samples-per-step); the name training.json keeps
    lr: float = 2e-3
    lengths: tuple[int, ...] = (4, 8, 16)
    warmup: int = 30
    tokens_per_frame: int = 16
    save_every: int = 25

    def check(self) -> None:
        if self.train not in MODES:
            raise UserError(f"unknown --train {self.train!r}; valid: {', '.join(MODES)}")
        if self.task != "vniah":
            raise UserError(f"train generates its data: only --task vniah, got {self.task!r}")
        for name in ("steps", "batch", "tokens_per_frame", "save_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{FLAGS.get(name, '--' + name.replace('_', '-'))} must be a positive integer, "
                                f"got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive finite number, got {self.lr!r}")
        if not self.lengths or any(not isinstance(n, int) or n < 1 for n in self.lengths):
            raise UserError(f"--lengths must be positive frame counts, got {','.join(map(str, self.lengths))!r}")
        if self.train == "transv":
            if not self.compressor.split(":")[0] == "transv":
                raise UserError("--train transv needs --compressor transv:schedule=... (the modules to train)")
            if not self.checkpoint:
                raise UserError("--train transv starts from a trained checkpoint: give --checkpoint DIR")

    def identity(self) -> dict:
        """What a resumed run must share with the run that wrote the state."""
        return {k: v for k, v in asdict(self).items() if k not in ("steps", "save_every", "output")}


@dataclass
class Parts:
    backbone: object
    vision: object
    compressor: object | None  # TransV when training it
    params: list = field(default_factory=list)


def build(s: TrainSettings, source: str | None) -> Parts:
    """The model to train: fresh from the preset, or loaded from ``source`` (a checkpoint or a resumed output)."""
    from architectures import ARCHITECTURES
    from architectures.vision import VisionSide
    from compressors.base import make_compressor

    arch = ARCHITECTURES.get(s.arch)
    torch.manual_seed(s.seed)
    if source:
        _check_checkpoint(source)
        bb = arch.build(checkpoint=source)
        side = VisionSide.from_checkpoint(source, bb.hidden_size, s.tokens_per_frame)
    else:
        bb = arch.build(s.preset, seed=s.seed)
        side = VisionSide(s.preset, bb.hidden_size, s.tokens_per_frame, seed=s.seed)
    if s.train == "model":
        bb.model.train()
        side.train()
        return Parts(bb, side, None, [*bb.model.parameters(), *side.parameters()])
    bb.model.requires_grad_(False)
    side.requires_grad_(False)
    compressor = make_compressor(s.compressor)
    compressor.check(bb)
    compressor.prepare(bb)
    compressor.cross.requires_grad_(True).train()
    return Parts(bb, side, compressor, list(compressor.cross.parameters()))


def _check_checkpoint(path: str) -> None:
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"training checkpoint not found: {path}")
    for name in ("config.json", "projector.safetensors", "vision/config.json"):
        if not (root / name).is_file():
            raise UserError(f"training checkpoint {path} is incomplete: no {name}")


def batch_of(rng: np.random.Generator, s: TrainSettings, step: int):
    """Frames [B, L, 3, H, W] in [0, 1], prompts and answer letters; the length follows the curriculum."""
    from tasks.vniah import make_sample

    length = min(s.lengths) if step < s.warmup else int(rng.choice(s.lengths))
    samples = [make_sample(rng, length, float(rng.uniform(0.0, 1.0))) for _ in range(s.batch)]
    frames = torch.from_numpy(np.stack([x.frames for x in samples])).permute(0, 1, 4, 2, 3).float() / 255.0
    return frames, [x.prompt for x in samples], [x.answer for x in samples], length


def batch_loss(parts: Parts, frames: torch.Tensor, prompts: list[str], answers: list[str], tok):
    """Cross-entropy of the answer letter after ``[BOS][video][question]`` (and, when the whole model
    trains, of EOS after the letter, so that generation stops there); the letter's accuracy."""
    from bench.engine.pipeline import prefill

    bb, side = parts.backbone, parts.vision
    b, length = frames.shape[:2]
    with torch.set_grad_enabled(parts.compressor is None):
        vision = side.project(side.encode(frames.flatten(0, 1))).reshape(b, length * side.tokens_per_frame, -1)
    ids = torch.tensor([tok.encode_prompt(p) for p in prompts])
    letters = torch.tensor([tok.encode_prompt(a)[0] for a in answers])
    bos = torch.full((b, 1), tok.bos_id)
    embeds = torch.cat([bb.embed(bos), vision, bb.embed(ids)], dim=1)
    if parts.compressor is None:
        embeds = torch.cat([embeds, bb.embed(letters[:, None])], dim=1)
        logits = bb.model(inputs_embeds=embeds).logits[:, -2:].float()
        letter_logits = logits[:, 0]
        loss = F.cross_entropy(logits.flatten(0, 1), torch.stack([letters, torch.full_like(letters, tok.eos_id)], 1)
                               .flatten())
    else:
        letter_logits, _ = prefill(bb, embeds, compressor=parts.compressor, vision=(1, 1 + vision.shape[1]),
                                   grad=True)
        loss = F.cross_entropy(letter_logits, letters)
    return loss, float((letter_logits.argmax(-1) == letters).float().mean())


def _siblings(out: Path) -> tuple[Path, Path]:
    """Where a save is written (``OUT.partial``) and where the previous one waits during the swap (``OUT.old``)."""
    return out.with_name(out.name + ".partial"), out.with_name(out.name + ".old")


def _complete(path: Path) -> bool:
    """A checkpoint directory is complete once its state file is in (it is written last, atomically)."""
    return (path / STATE).is_file()


def check_output(output: str) -> Path:
    """``--output`` must be able to take a checkpoint directory and its siblings: checked before any step runs."""
    out = Path(output)
    if out.name in ("", ".", ".."):
        raise UserError(f"--output {output!r} must name the checkpoint directory itself (each save replaces it "
                        "as a whole), e.g. --output checkpoints/run1")
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {output} is a file, not a checkpoint directory")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--output {output}: {parent} is a file, not a directory")
            break
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=out.parent))
    except OSError as exc:
        raise UserError(f"cannot write --output {output} in {out.parent}: {exc.strerror or exc}") from None
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(out: Path, s: TrainSettings, parts: Parts, state: dict, summary: dict) -> None:
    """Write the whole checkpoint next to ``out``, then swap it in: a kill at any point keeps a complete one."""
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    from architectures.tokenizer import BYTES_MARKER

    hf_logging.disable_progress_bar()  # one bar: the training's
    tmp, _ = _siblings(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    parts.backbone.model.save_pretrained(tmp)
    parts.vision.save(str(tmp))
    if parts.compressor is not None:
        cross = {k: v.detach().contiguous() for k, v in parts.compressor.cross.state_dict().items()}
        save_file(cross, str(tmp / "transv.safetensors"),
                  metadata={"schedule": str(parts.compressor.settings["schedule"])})
    (tmp / BYTES_MARKER).write_text(json.dumps({"tokenizer": "bytes", "pad": 0, "bos": 1, "eos": 2, "offset": 3}) + "\n")
    (tmp / LOSS).write_text("".join(json.dumps(r) + "\n" for r in state["curve"]))
    meta = {"settings": asdict(s), **summary, "base": state.get("base")}
    (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
    torch.save(state, tmp / (STATE + ".tmp"))
    for path in sorted(tmp.rglob("*"), reverse=True):  # on disk before the state says the directory is complete
        _fsync(path)
    os.replace(tmp / (STATE + ".tmp"), tmp / STATE)
    _fsync(tmp)
    _swap_in(out)


def _swap_in(out: Path) -> None:
    """``OUT.partial`` (complete) becomes ``OUT``; the previous ``OUT`` is removed only once it is replaced."""
    tmp, old = _siblings(out)
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    _fsync(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover(out: Path) -> None:
    """Finish or undo a save that a kill interrupted, keeping the newest complete checkpoint.

    Only this module's siblings of a checkpoint are touched: an ``OUT`` that holds no training
    state is left as it is (``_load_state`` refuses it).
    """
    tmp, old = _siblings(out)
    if out.exists() and not _complete(out):
        return
    if tmp.exists() and _complete(tmp):
        _swap_in(out)  # written whole before the kill: the newest save
    else:
        shutil.rmtree(tmp, ignore_errors=True)  # cut short: the save before it is still in OUT (or OUT.old)
        if not out.exists() and old.exists() and _complete(old):
            old.rename(out)
    if out.exists() and old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _load_state(out: Path, s: TrainSettings) -> dict | None:
    path = out / STATE
    if not out.exists():
        return None
    if not path.is_file():
        if any(out.iterdir()):
            raise UserError(f"output {out} exists and holds no training state: choose another --output")
        return None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: the error is one line
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True)  # tensors and plain values: a pickle never runs code
        identity = state["identity"]
    except pickle.UnpicklingError:
        raise UserError(f"cannot load training state {path}: not a state file of this trainer (only tensors and "
                        "plain values are loaded, never code); delete it or choose another --output") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable state is one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot load training state {path}: corrupt ({reason})") from None
    if identity != s.identity():
        changed = sorted(k for k in s.identity() if identity.get(k) != s.identity()[k])
        raise UserError(f"output {out} holds a run with other settings ({', '.join(changed)}): choose another --output")
    return state


def train(s: TrainSettings, progress: bool = True) -> dict:
    from tqdm import tqdm

    from architectures.tokenizer import ByteTokenizer
    from tasks.vniah import TRAIN_STREAM, stream

    s.check()
    out = check_output(s.output)
    recover(out)
    state = _load_state(out, s)
    parts = build(s, str(out) if state else s.checkpoint)
    tok = ByteTokenizer(parts.backbone.config.vocab_size)
    optimizer = torch.optim.AdamW(parts.params, lr=s.lr, weight_decay=0.0)
    rng = stream(s.seed, TRAIN_STREAM)
    if state:
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
    else:
        state = {"step": 0, "curve": [], "identity": s.identity(), "seconds": 0.0, "base": _base_meta(s)}
    start, t0 = state["step"], time.perf_counter() - state["seconds"]
    bar = tqdm(total=s.steps, initial=start, desc=f"train {s.train} {s.arch}", disable=not progress, unit="step")
    for step in range(start, s.steps):
        frames, prompts, answers, length = batch_of(rng, s, step)
        loss, acc = batch_loss(parts, frames, prompts, answers, tok)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parts.params, 1.0)
        optimizer.step()
        value = loss.item()
        state["curve"].append({"step": step + 1, "loss": value, "acc": acc, "length": length})
        state["step"] = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}", acc=f"{acc:.2f}")
        if state["step"] % s.save_every == 0 or state["step"] == s.steps:
            state.update(optimizer=optimizer.state_dict(), rng=rng.bit_generator.state,
                         torch_rng=torch.get_rng_state(), seconds=time.perf_counter() - t0)
            save(out, s, parts, state, _summary(state))
    bar.close()
    if start == s.steps and state["curve"]:
        print(f"{out}: already trained for {s.steps} steps", flush=True)
    return _summary(state)


def _base_meta(s: TrainSettings) -> dict | None:
    """The training record of the checkpoint a TransV run starts from (kept with the TransV checkpoint)."""
    path = Path(s.checkpoint) / META if s.checkpoint else None
    try:
        return json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None


def _summary(state: dict) -> dict:
    curve = state["curve"]
    tail = curve[-20:]
    return {"steps": state["step"], "seconds": round(state["seconds"], 1),
            "first_loss": curve[0]["loss"] if curve else None,
            "final_loss": sum(r["loss"] for r in tail) / len(tail) if tail else None,
            "final_train_acc": sum(r["acc"] for r in tail) / len(tail) if tail else None}
