"""Inference engines for evaluation: a local transformers engine and an OpenAI-compatible client.

``HFEngine`` is built for long prompts on small hardware:
  * chunked prefill: the prompt goes through the decoder ``chunk_size`` tokens at a time into a KV
    cache, so activation memory stays O(chunk) per layer and 64k-128k prompts fit. The default chunk is
    16k: a chunk after the first needs an explicit (chunk x past) mask, and on this CPU an 8k prompt in
    2k chunks cost 2.1x the CPU time of one causal pass (34.5 s vs 15.4 s of process CPU time for ``_prefill``), so
    prompts up to 16k go through in one pass;
  * only needed logits: prefill chunks run the decoder body without the LM head, and the last chunk
    asks for the logits of its final position only (``logits_to_keep=1``); a 49k-word vocabulary would
    otherwise cost length x 49k floats;
  * greedy decoding with the KV cache, stopping at EOS or at the first newline after the answer started;
  * bf16 weights where the CPU runs bf16 natively (``longseq.models.pick_dtype``).

``OpenAIEngine`` sends the same rendered prompts to any OpenAI-compatible server (vLLM, llama.cpp
server, Ollama, ``longseq serve``) through the ``openai`` package: the completions endpoint for raw
prompts, chat completions for chat prompts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

from longseq.core.errors import UserError, unknown_choice

PROMPT_FORMATS = ("auto", "raw", "chat")


@dataclass
class Generation:
    """Result of one greedy generation."""

    text: str
    new_tokens: int
    finish_reason: str  # "stop" (EOS or stop rule) or "length"
    seconds: float


def cut_at_stop(text: str, stop: Sequence[str] = ("\n",)) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string that occurs after some non-blank output.

    Leading blank lines are kept (chat models often open with one); the answer is what follows them.
    """
    body_start = len(text) - len(text.lstrip())
    cut = min((i for s in stop if (i := text.find(s, body_start)) >= 0 and text[body_start:i].strip()), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# ----------------------------------------------------------------------------------------- prompt format


def resolve_prompt_format(name: str, tokenizer: Any) -> str:
    """``auto`` -> ``raw``; ``chat`` needs a chat template.

    ``auto`` is the raw completion prompt ending with the answer prefix: on SmolLM2-135M-Instruct it
    scored passkey 6/6 at ~2.5k tokens where the chat-template prompt scored 0/6 (see README).
    """
    if name not in PROMPT_FORMATS:
        raise unknown_choice("prompt format", name, PROMPT_FORMATS)
    if name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise UserError("this model has no chat template; use --prompt-format raw (or auto)")
    return "raw" if name == "auto" else name


def render(body: str, answer_prefix: str, sep: str, fmt: str, tokenizer: Any) -> str:
    """The text the model reads: raw ``body + sep + answer_prefix``, or the chat template around ``body``
    followed by the answer prefix (RULER appends its answer prefix after the template the same way)."""
    if fmt == "raw":
        return f"{body}{sep}{answer_prefix}"
    messages = [{"role": "user", "content": body}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + answer_prefix


def encode(tokenizer: Any, text: str, fmt: str = "raw") -> list[int]:
    """Token ids exactly as the engine feeds them: a chat-rendered text already holds its special tokens,
    a raw text gets the tokenizer's usual ones (e.g. BOS for Llama-2 tokenizers, none for SmolLM2)."""
    return tokenizer(text, add_special_tokens=(fmt == "raw"))["input_ids"]


# ---------------------------------------------------------------------------------------------- memory


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimate_memory_bytes(config: Any, length: int, chunk_size: int, bytes_per_value: int) -> int:
    """Peak memory of one generation at ``length`` tokens beyond the weights: the KV cache, one chunk's
    boolean attention mask (chunk x length; PyTorch's CPU flash kernel never materializes the scores)
    and one chunk's MLP activations (a few chunk x intermediate tensors)."""
    from longseq.models.info import kv_cache_bytes

    chunk = min(chunk_size, length)
    inter = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    return kv_cache_bytes(config, length, bytes_per_value) + chunk * length + 6 * chunk * inter * 4


def check_fits(config: Any, length: int, chunk_size: int, bytes_per_value: int, weights_bytes: int = 0) -> None:
    """Raise :class:`UserError` when ``length`` cannot fit in the available memory."""
    need = estimate_memory_bytes(config, length, chunk_size, bytes_per_value) + weights_bytes
    have = available_memory_bytes()
    if need > 0.9 * have:
        raise UserError(f"length {length} needs about {need / 2**30:.1f} GiB (KV cache + attention chunk) but only "
                        f"{have / 2**30:.1f} GiB is available; lower --lengths or --chunk-size")


# ----------------------------------------------------------------------------------------------- HF engine


class HFEngine:
    """Greedy generation and log-likelihoods with a local transformers model (see module docstring).

    Args:
        model: a causal LM in eval mode (RoPE already set by ``longseq.rope.apply_rope``).
        tokenizer: its tokenizer.
        chunk_size: prefill chunk in tokens.
    """

    backend = "hf"

    def __init__(self, model: Any, tokenizer: Any, chunk_size: int = 16384):
        if chunk_size < 1:
            raise UserError(f"--chunk-size must be >= 1, got {chunk_size}")
        self.model, self.tokenizer, self.chunk_size = model, tokenizer, chunk_size
        self.body = getattr(model, model.base_model_prefix)
        eos = tokenizer.eos_token_id
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos_ids = {i for i in ([eos] if isinstance(eos, int) else eos or []) if i is not None}
        self.eos_ids |= set([gen_eos] if isinstance(gen_eos, int) else gen_eos or [])

    @classmethod
    def load(cls, spec: str, method: str = "none", dtype: str = "auto", chunk_size: int = 16384,
             target_length: int | None = None, factor: float | None = None, theta: float | None = None) -> "HFEngine":
        """Load ``spec`` once and apply RoPE ``method`` via the foundation registry."""
        from longseq.models.loading import load_model
        from longseq.models.rope import apply_rope, native_context_length

        model, tokenizer = load_model(spec, dtype=dtype)
        if method != "none":
            native = native_context_length(model.config)
            if factor is None and target_length is not None:
                target_length = max(int(target_length), native)
            apply_rope(model, method, factor=factor, target_length=target_length, theta=theta)
        return cls(model, tokenizer, chunk_size)

    @property
    def bytes_per_value(self) -> int:
        return next(self.model.parameters()).element_size()

    def _prefill(self, ids: "Any", cache: Any, want_logits: bool) -> "Any":
        """Run ``ids`` (1, n) through the model chunk by chunk; return the last position's logits (1, V)."""
        n = ids.shape[1]
        last = None
        for start in range(0, n, self.chunk_size):
            chunk = ids[:, start:start + self.chunk_size]
            if start + self.chunk_size < n or not want_logits:
                self.body(input_ids=chunk, cache=cache, use_cache=True)
            else:
                last = self.model(input_ids=chunk, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        return last

    def generate_ids(self, ids: Sequence[int], max_new_tokens: int, stop: Sequence[str] = ("\n",)) -> Generation:
        """Greedy continuation of ``ids`` (prompt token ids) with a KV cache."""
        import torch
        from transformers import DynamicCache

        t0 = time.perf_counter()
        if not ids:
            raise UserError("empty prompt")
        with torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            logits = self._prefill(torch.tensor([list(ids)]), cache, want_logits=True)
            out: list[int] = []
            finish = "length"
            for _ in range(max_new_tokens):
                nxt = int(logits.argmax(-1))
                if nxt in self.eos_ids:
                    finish = "stop"
                    break
                out.append(nxt)
                text, stopped = cut_at_stop(self.tokenizer.decode(out, skip_special_tokens=True), stop)
                if stopped:
                    finish = "stop"
                    break
                logits = self.model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True,
                                    logits_to_keep=1).logits[:, -1]
        text, _ = cut_at_stop(self.tokenizer.decode(out, skip_special_tokens=True), stop)
        return Generation(text, len(out), finish, time.perf_counter() - t0)

    def answer(self, body: str, text: str, fmt: str, max_new_tokens: int, stop: Sequence[str] = ("\n",)) -> Generation:
        """Greedy continuation of a rendered prompt ``text`` (``body`` is unused: the text holds it)."""
        return self.generate_ids(encode(self.tokenizer, text, fmt), max_new_tokens, stop)

    def nll(self, ids: Sequence[int], score_from: int = 1) -> tuple[float, int]:
        """Sum of next-token negative log-likelihoods of ``ids[score_from:]`` given everything before them.

        The prefill runs chunk by chunk; each chunk's hidden states (chunk, hidden) go through the LM head
        in slices of 512 rows so the full (length, vocab) logits never exist. Returns (nll sum, count).
        """
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        x = torch.tensor([list(ids)])
        n = x.shape[1]
        head = self.model.get_output_embeddings()
        total, count = 0.0, 0
        with torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            for start in range(0, n - 1, self.chunk_size):
                end = min(start + self.chunk_size, n - 1)
                hidden = self.body(input_ids=x[:, start:end], cache=cache, use_cache=True).last_hidden_state[0]
                targets = x[0, start + 1:end + 1]
                for s in range(0, hidden.shape[0], 512):
                    pos = torch.arange(start + s, min(start + s + 512, end))
                    keep = pos + 1 >= score_from
                    if not keep.any():
                        continue
                    logits = head(hidden[s:s + 512]).float()
                    losses = F.cross_entropy(logits, targets[s:s + 512], reduction="none")
                    total += float(losses[keep].sum())
                    count += int(keep.sum())
        return total, count


# ------------------------------------------------------------------------------------------- OpenAI client


class OpenAIEngine:
    """Client for an OpenAI-compatible server; greedy (temperature 0) generation of rendered prompts.

    Raw prompts go to ``/v1/completions``; chat prompts to ``/v1/chat/completions`` as one user message
    (the server applies its own template, so the answer prefix cannot be forced there).
    """

    backend = "openai"

    def __init__(self, base_url: str, api_model: str, api_key: str | None = None, timeout: float = 600.0):
        try:
            import openai
        except ImportError:
            raise UserError("the openai backend needs the openai package; pip install 'longseq[serve]'") from None
        self.base_url, self.api_model = base_url, api_model
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                                    timeout=timeout, max_retries=1)
        self._openai = openai

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except self._openai.APIConnectionError:
            raise UserError(f"cannot reach the server at {self.base_url}; start it (e.g. longseq serve MODEL --port "
                            "8000) or fix --base-url") from None
        except self._openai.APIStatusError as err:
            raise UserError(f"server at {self.base_url} answered {err.status_code}: "
                            f"{' '.join(str(err.message).split())[:200]}") from None

    def check(self) -> None:
        """Fail fast (one line) when the server is down, before any work."""
        self._call(self.client.models.list)

    def generate_messages(self, body: str, max_new_tokens: int, stop: Sequence[str] = ("\n",)) -> Generation:
        t0 = time.perf_counter()
        resp = self._call(self.client.chat.completions.create, model=self.api_model, temperature=0.0,
                          max_tokens=max_new_tokens, messages=[{"role": "user", "content": body}])
        text, _ = cut_at_stop(resp.choices[0].message.content or "", stop)
        usage = getattr(resp, "usage", None)
        return Generation(text, getattr(usage, "completion_tokens", 0) or 0, resp.choices[0].finish_reason or "stop",
                          time.perf_counter() - t0)

    def answer(self, body: str, text: str, fmt: str, max_new_tokens: int, stop: Sequence[str] = ("\n",)) -> Generation:
        """Raw format: complete ``text``; chat format: send ``body`` as a chat message."""
        if fmt == "chat":
            return self.generate_messages(body, max_new_tokens, stop)
        t0 = time.perf_counter()
        resp = self._call(self.client.completions.create, model=self.api_model, prompt=text, temperature=0.0,
                          max_tokens=max_new_tokens)
        out, _ = cut_at_stop(resp.choices[0].text or "", stop)
        usage = getattr(resp, "usage", None)
        return Generation(out, getattr(usage, "completion_tokens", 0) or 0, resp.choices[0].finish_reason or "stop",
                          time.perf_counter() - t0)
