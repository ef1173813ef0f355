"""Train a tiny model on a generated task (V-NIAH), or only TransV's modules of a trained one.

``--train model`` builds the own-layout vision side (SigLIP tower + ToMe + MLP projector)
and a backbone from a preset with random weights, and trains all of it on V-NIAH samples
drawn from the seed's training stream (never the evaluation set's). The loss is the
cross-entropy of the answer letter after ``[BOS][video][question]``, through the library
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
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import UserError

MODES = ("model", "transv")
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
    batch: int = 16
    lr: float = 2e-3
    lengths: tuple[int, ...] = (4, 8, 16)
    warmup: int = 30
    tokens_per_frame: int = 4
    save_every: int = 25

    def check(self) -> None:
        if self.train not in MODES:
            raise UserError(f"unknown --train {self.train!r}; valid: {', '.join(MODES)}")
        if self.task != "vniah":
            raise UserError(f"train generates its data: only --task vniah, got {self.task!r}")
        for name in ("steps", "batch", "tokens_per_frame", "save_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
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


def answer_logits(parts: Parts, frames: torch.Tensor, prompts: list[str], tok) -> torch.Tensor:
    """Logits [B, vocab] of the token after ``[BOS][video][question]``."""
    from bench.pipeline import prefill

    bb, side = parts.backbone, parts.vision
    b, length = frames.shape[:2]
    with torch.set_grad_enabled(parts.compressor is None):
        vision = side.project(side.encode(frames.flatten(0, 1))).reshape(b, length * side.tokens_per_frame, -1)
    ids = torch.tensor([tok.encode_prompt(p) for p in prompts])
    bos = torch.full((b, 1), tok.bos_id)
    embeds = torch.cat([bb.embed(bos), vision, bb.embed(ids)], dim=1)
    if parts.compressor is None:
        return bb.model(inputs_embeds=embeds).logits[:, -1].float()
    logits, _ = prefill(bb, embeds, compressor=parts.compressor, vision=(1, 1 + vision.shape[1]), grad=True)
    return logits


def save(out: Path, s: TrainSettings, parts: Parts, state: dict, summary: dict) -> None:
    """Write the whole checkpoint next to ``out``, then swap it in: an interruption keeps the previous one."""
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar: the training's
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    parts.backbone.model.save_pretrained(tmp)
    parts.vision.save(str(tmp))
    if parts.compressor is not None:
        cross = {k: v.detach().contiguous() for k, v in parts.compressor.cross.state_dict().items()}
        save_file(cross, str(tmp / "transv.safetensors"),
                  metadata={"schedule": str(parts.compressor.settings["schedule"])})
    torch.save(state, tmp / STATE)
    (tmp / LOSS).write_text("".join(json.dumps(r) + "\n" for r in state["curve"]))
    (tmp / META).write_text(json.dumps({"settings": asdict(s), **summary}, indent=1) + "\n")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
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
        state = torch.load(path, weights_only=False)
        identity = state["identity"]
    except Exception as exc:  # noqa: BLE001 - any unreadable state is one line
        raise UserError(f"corrupt training checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None
    if identity != s.identity():
        changed = sorted(k for k in s.identity() if identity.get(k) != s.identity()[k])
        raise UserError(f"output {out} holds a run with other settings ({', '.join(changed)}): choose another --output")
    return state


def train(s: TrainSettings, progress: bool = True) -> dict:
    from tqdm import tqdm

    from architectures.tokenizer import ByteTokenizer
    from tasks.vniah import TRAIN_STREAM, stream

    s.check()
    out = Path(s.output)
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
        state = {"step": 0, "curve": [], "identity": s.identity(), "seconds": 0.0}
    start, t0 = state["step"], time.perf_counter() - state["seconds"]
    bar = tqdm(total=s.steps, initial=start, desc=f"train {s.train} {s.arch}", disable=not progress, unit="step")
    for step in range(start, s.steps):
        frames, prompts, answers, length = batch_of(rng, s, step)
        target = torch.tensor([tok.encode_prompt(a)[0] for a in answers])
        logits = answer_logits(parts, frames, prompts, tok)
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parts.params, 1.0)
        optimizer.step()
        acc, value = float((logits.argmax(-1) == target).float().mean()), loss.item()
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


def _summary(state: dict) -> dict:
    curve = state["curve"]
    tail = curve[-20:]
    return {"steps": state["step"], "seconds": round(state["seconds"], 1),
            "first_loss": curve[0]["loss"] if curve else None,
            "final_loss": sum(r["loss"] for r in tail) / len(tail) if tail else None,
            "final_train_acc": sum(r["acc"] for r in tail) / len(tail) if tail else None}
