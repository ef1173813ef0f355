"""lm-evaluation-harness model ``viperbench``: any viperbench backbone and compressor, scored by lm-eval tasks.

Importing this module registers the model with lm-eval's registry; ``viperbench lm-eval ...``
does that and then runs lm-eval's own command line, so every lm-eval flag works::

    viperbench lm-eval --model viperbench --model_args arch=hybrid,preset=tiny \\
        --tasks my_task --include_path DIR

``model_args``: ``arch``, ``preset`` or ``checkpoint``, ``compressor`` (a compressor's own keys
separated by ``;`` since lm-eval splits ``model_args`` on commas, e.g.
``compressor=transv:schedule=uni_2_0.5;init=random``), ``device``, ``dtype``, ``prefill_chunk``,
``max_length``, ``seed``. Any other key, or a value of the wrong type, is a one-line error listing
the valid keys (a typo never runs silently without what it meant). ``device`` in ``model_args``
wins over lm-eval's ``--device``; without either, the device is CUDA when it exists, else the CPU
(lm-eval's own default is CUDA).

Everything runs through the harness's own layer loop: a context is prefilled
(``bench.engine.pipeline.prefill``), a continuation is teacher-forced one ``decode_step`` at a time
(decode through the cache equals a full forward, ``tests/test_backbones.py``), and
``generate_until`` decodes greedily. Requests are text only: the LLM-side compressors act on
vision tokens, so with no video they leave the sequence as it is.
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from bench.errors import UserError
from bench.evaluation import model_args

MODEL_ARGS = {**model_args.CELL_ARGS, "max_length": int}


def check_model_args(args: dict) -> dict:
    """lm-eval's parsed ``model_args`` -> the constructor's keywords; unknown keys and wrong types are one line."""
    return model_args.check(args, MODEL_ARGS)


@register_model("viperbench")
class ViperbenchLM(LM):
    def __init__(self, arch: str | None = None, preset: str = "tiny", checkpoint: str | None = None,
                 compressor: str = "none", device: str = "cpu", dtype: str | None = None,
                 prefill_chunk: int | None = None, max_length: int = 4096, seed: int = 0):
        super().__init__()
        from architectures.tokenizer import tokenizer_for
        from bench.measure.runner import build_model
        from bench.spec import check_device, make_spec

        values = model_args.cell_values({"arch": arch, "preset": preset, "checkpoint": checkpoint,
                                         "compressor": compressor, "device": str(device or "cpu"),
                                         "dtype": dtype, "prefill_chunk": prefill_chunk, "seed": seed})
        spec = make_spec(values)
        check_device(spec)
        model = build_model(spec)
        self.backbone, self.compressor, self.spec = model.backbone, model.compressor, spec
        self.tok = tokenizer_for(self.backbone)
        self.max_length = int(max_length)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "ViperbenchLM":
        from lm_eval.utils import simple_parse_args_string

        args = model_args.parse(arg_string, simple_parse_args_string)
        return cls.create_from_arg_obj(args, additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "ViperbenchLM":
        """lm-eval passes ``batch_size``, ``max_batch_size`` and ``device`` to every model: requests run one at
        a time here; ``device`` applies unless ``model_args`` names one."""
        args = check_model_args(dict(arg_dict))
        device = (additional_config or {}).get("device")
        if "device" not in args and device:
            args["device"] = str(device)
        return cls(**args)

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    # --- the harness's loop -----------------------------------------------------------------
    def _context(self, text: str) -> list[int]:
        ids = [self.tok.bos_id] + self.tok.encode_prompt(text) if text else [self.tok.bos_id]
        return ids[-self.max_length:]

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Sum of log p(continuation | context) and whether greedy decoding gives exactly it."""
        from bench.engine.pipeline import decode_step, prefill

        bb = self.backbone
        device = bb.device
        self.compressor.reset()
        logits, seq = prefill(bb, bb.embed(torch.tensor([context], device=device)), compressor=self.compressor,
                              chunk=self.spec.prefill_chunk)
        total, greedy = 0.0, True
        for k, token in enumerate(continuation):
            logp = logits[0].float().log_softmax(-1)
            total += float(logp[token])
            greedy = greedy and int(logp.argmax()) == token
            if k + 1 < len(continuation):
                logits = decode_step(bb, torch.tensor([[token]], device=device), seq)
        return total, greedy

    # --- lm-eval's three request types --------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.args
            ids = self.tok.encode_prompt(continuation)
            out.append(self._score(self._context(context), ids) if ids else (0.0, True))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of the whole text after BOS, in windows of ``max_length`` tokens."""
        out = []
        for request in requests:
            ids = self.tok.encode_prompt(request.args[0])
            total, start, window = 0.0, 0, self.max_length - 1
            while start < len(ids):
                context = [self.tok.bos_id] + ids[max(0, start - window // 2):start]
                piece = ids[start:start + window - len(context) + 1] or ids[start:start + 1]
                total += self._score(context, piece)[0]
                start += len(piece)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from bench.engine.pipeline import decode_step, prefill

        out = []
        bb = self.backbone
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 64))
            self.compressor.reset()
            logits, seq = prefill(bb, bb.embed(torch.tensor([self._context(context)], device=bb.device)),
                                  compressor=self.compressor, chunk=self.spec.prefill_chunk)
            ids: list[int] = []
            text = ""
            while len(ids) < max_new:
                token = logits.argmax(-1, keepdim=True)
                if int(token) == self.tok.eos_id:
                    break
                ids.append(int(token))
                text = self.tok.decode(ids)
                if any(stop in text for stop in until):
                    break
                logits = decode_step(bb, token, seq)
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
        return out


def with_default_device(argv: list[str]) -> list[str]:
    """An evaluation without ``--device`` gets the CPU on a machine without CUDA (lm-eval's default is CUDA)."""
    evaluates = argv[:1] == ["run"] or (len(argv) > 1 and argv[0] not in ("ls", "validate"))
    if evaluates and not any(a == "--device" or a.startswith("--device=") for a in argv) \
            and not torch.cuda.is_available():
        return [*argv, "--device", "cpu"]
    return argv


def main(argv: list[str] | None = None) -> int:
    """lm-eval's command line with the ``viperbench`` model registered."""
    import logging
    import sys

    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    sys.argv = ["lm-eval", *with_default_device(list(sys.argv[1:] if argv is None else argv))]
    setup_logging(logging.ERROR)  # as lm-eval's cli_evaluate, quiet but for errors (LMEVAL_LOG_LEVEL still wins)
    parser = HarnessCLI()
    try:
        result = parser.execute(parser.parse_args())
    except ValueError as exc:
        if not _raised_by_lm_eval_checks(exc):
            raise
        raise UserError(f"lm-eval: {' '.join(str(exc).split())}") from None
    return result if isinstance(result, int) else 0


def _raised_by_lm_eval_checks(exc: BaseException) -> bool:
    """lm-eval checks its flags and config (unknown tasks, bad values) in these modules, with a ValueError."""
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__", "").startswith(("lm_eval.config", "lm_eval._cli"))
