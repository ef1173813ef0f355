"""lm-evaluation-harness model ``viperbench``: any viperbench backbone and compressor, scored by lm-eval tasks.

Importing this module registers the model with lm-eval's registry; ``viperbench lm-eval ...``
does that and then runs lm-eval's own command line, so every lm-eval flag works::

    viperbench lm-eval --model viperbench --model_args arch=hybrid,preset=tiny \\
        --tasks my_task --include_path DIR

``model_args``: ``arch``, ``preset`` or ``checkpoint``, ``compressor`` (a compressor's own keys
separated by ``;`` since lm-eval splits ``model_args`` on commas, e.g.
``compressor=transv:schedule=uni_2_0.5;init=random``), ``device``, ``dtype``, ``prefill_chunk``,
``max_length``, ``seed``.

Everything runs through the harness's own layer loop: a context is prefilled
(``bench.pipeline.prefill``), a continuation is teacher-forced one ``decode_step`` at a time
(decode through the cache equals a full forward, ``tests/test_backbones.py``), and
``generate_until`` decodes greedily. Requests are text only: the LLM-side compressors act on
vision tokens, so with no video they leave the sequence as it is.
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model


@register_model("viperbench")
class ViperbenchLM(LM):
    def __init__(self, arch: str | None = None, preset: str = "tiny", checkpoint: str | None = None,
                 compressor: str = "none", device: str = "cpu", dtype: str | None = None,
                 prefill_chunk: int | None = None, max_length: int = 4096, seed: int = 0, **_lm_eval_extras):
        super().__init__()
        from architectures.tokenizer import tokenizer_for
        from bench.runner import build_model
        from bench.spec import check_device, make_spec

        values = {"arch": arch, "preset": None if checkpoint else preset, "checkpoint": checkpoint,
                  "compressor": str(compressor).replace(";", ","), "device": str(device or "cpu"), "dtype": dtype,
                  "prefill_chunk": prefill_chunk, "seed": seed}
        spec = make_spec({k: v for k, v in values.items() if v is not None})
        check_device(spec)
        model = build_model(spec)
        self.backbone, self.compressor, self.spec = model.backbone, model.compressor, spec
        self.tok = tokenizer_for(self.backbone)
        self.max_length = int(max_length)

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    # --- the harness's loop -----------------------------------------------------------------
    def _context(self, text: str) -> list[int]:
        ids = [self.tok.bos_id] + self.tok.encode_prompt(text) if text else [self.tok.bos_id]
        return ids[-self.max_length:]

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Sum of log p(continuation | context) and whether greedy decoding gives exactly it."""
        from bench.pipeline import decode_step, prefill

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
        from bench.pipeline import decode_step, prefill

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


def main(argv: list[str] | None = None) -> int:
    """lm-eval's command line with the ``viperbench`` model registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    result = cli_evaluate()
    return result if isinstance(result, int) else 0
