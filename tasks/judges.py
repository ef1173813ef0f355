"""Judge back-ends for LLM-scored tasks (VDC): an OpenAI-compatible server or a local model.

A judge takes chat messages (``[{"role": ..., "content": ...}, ...]``) and returns the
reply text, greedily. Its ``name`` goes into the record next to every number it produced.
On the command line a judge is written ``openai:URL#MODEL`` (any chat-completions server:
SGLang, vLLM, ...) or ``local:DIR`` (a transformers causal-LM directory).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from bench.errors import UserError


class JudgeError(Exception):
    """The judge could not produce a usable reply (unreachable, bad response, unparseable)."""


class Judge:
    """Interface: ``complete(messages) -> str``; ``name`` identifies the judge in records."""

    name: str = "judge"

    def complete(self, messages: list[dict]) -> str:
        raise NotImplementedError


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpenAIJudge(Judge):
    """A judge served over the OpenAI chat-completions protocol.

    Sends ``POST {url}/chat/completions`` with temperature 0. Connection errors, timeouts,
    HTTP 429 and 5xx are retried ``retries`` times with exponential backoff
    (``backoff``, ``2*backoff``, ...); then, or on any other failure, JudgeError is raised
    with one line naming the URL and the reason.
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 60,
                 retries: int = 3, backoff: float = 0.5, max_tokens: int = 256):
        if not url or not model:
            raise UserError(f"an openai judge needs a URL and a model, got url={url!r} model={model!r}")
        self.url = url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.max_tokens = max_tokens
        self.name = f"openai:{self.url}#{model}"
        # A loopback server never goes through the user's HTTP proxy.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.url) else []
        self._opener = urllib.request.build_opener(*handlers)

    def _request(self, messages: list[dict]) -> urllib.request.Request:
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return urllib.request.Request(f"{self.url}/chat/completions", data=json.dumps(body).encode(),
                                      headers=headers, method="POST")

    def _post_once(self, messages: list[dict]) -> dict:
        """One attempt; raises _Retryable for transient failures, JudgeError for the rest."""
        try:
            with self._opener.open(self._request(messages), timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read(200).decode("utf-8", "replace").strip().replace("\n", " ")
            reason = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(reason) from exc
            raise JudgeError(f"judge {self.url}: {reason}") from exc
        except urllib.error.URLError as exc:
            raise _Retryable(f"cannot connect ({exc.reason})") from exc
        except (TimeoutError, socket.timeout) as exc:
            raise _Retryable(f"no reply within {self.timeout:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection failed ({exc})") from exc
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise JudgeError(f"judge {self.url}: response is not JSON") from exc

    def complete(self, messages: list[dict]) -> str:
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                data = self._post_once(messages)
                break
            except _Retryable as exc:
                reason = str(exc)
        else:
            raise JudgeError(f"judge {self.url}: {reason} after {self.retries + 1} attempts")
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"judge {self.url}: response has no choices[0].message.content") from exc
        if not isinstance(content, str):
            raise JudgeError(f"judge {self.url}: reply content is {type(content).__name__}, not text")
        return content


class _Retryable(Exception):
    """A transient failure worth another attempt."""


class LocalJudge(Judge):
    """A local transformers causal LM (tokenizer with a chat template), decoding greedily."""

    def __init__(self, model_dir: str, max_new_tokens: int = 128, device: str = "cpu"):
        if not os.path.isdir(model_dir):
            raise UserError(f"judge model directory not found: {model_dir}")
        import torch
        from transformers import AutoModelForCausalLM

        from architectures.loading import load_model, load_tokenizer

        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_model(AutoModelForCausalLM, model_dir, dtype=torch.float32 if device == "cpu" else "auto")
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError(f"judge model {model_dir} has no chat template")
        self.model.to(device).eval()
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.name = f"local:{os.path.basename(os.path.normpath(model_dir))}"

    def complete(self, messages: list[dict]) -> str:
        import torch

        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            raise JudgeError(f"judge {self.name}: chat template failed: {exc}") from exc
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.device)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=pad_id)
        new = out[0, enc["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()


def make_judge(spec: str) -> Judge:
    """Build a judge from ``openai:URL#MODEL`` or ``local:DIR``.

    The OpenAI key, when the server needs one, comes from ``OPENAI_API_KEY``.
    """
    kind, sep, rest = (spec or "").partition(":")
    if not sep or not rest:
        raise UserError(f"bad judge spec {spec!r}: expected openai:URL#MODEL or local:DIR")
    if kind == "openai":
        url, hash_, model = rest.rpartition("#")
        if not hash_ or not url or not model:
            raise UserError(f"bad judge spec {spec!r}: expected openai:URL#MODEL (e.g. openai:http://127.0.0.1:8000/v1#llama-3.1-8b)")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise UserError(f"bad judge spec {spec!r}: the URL must start with http:// or https://")
        return OpenAIJudge(url, model, api_key=os.environ.get("OPENAI_API_KEY"))
    if kind == "local":
        return LocalJudge(rest)
    raise UserError(f"bad judge spec {spec!r}: unknown kind {kind!r}; expected openai:URL#MODEL or local:DIR")
