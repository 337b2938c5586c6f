"""Local generation with a transformers causal LM: :class:`LocalLM`, the one greedy loop of longseq.

``longseq eval`` (its ``HFEngine``), the SCM agent (``TransformersChat``) and ``longseq serve`` all generate
through :meth:`LocalLM.generate_ids`. It is built for long prompts on small hardware:
  * chunked prefill: the prompt goes through the decoder ``chunk_size`` tokens at a time into a KV
    cache, so activation memory stays O(chunk) per layer and 64k-128k prompts fit. The default chunk is
    16k: a chunk after the first needs an explicit (chunk x past) mask, and on this CPU an 8k prompt in
    2k chunks cost 2.1x the CPU time of one causal pass (34.5 s vs 15.4 s of process CPU time for
    ``_prefill``), so prompts up to 16k go through in one pass;
  * only needed logits: prefill chunks run the decoder body without the LM head, and the last chunk
    asks for the logits of its final position only (``logits_to_keep=1``); a 49k-word vocabulary would
    otherwise cost length x 49k floats;
  * automatic prefix caching: the KV cache of the previous prompt is kept and, when the next prompt starts
    with the same tokens (NIAH depths and passkey positions share everything before the inserted fact),
    cropped to the longest common prefix so that only the rest is prefilled (vLLM's automatic prefix
    caching, for one sequence), opt-in with ``LocalLM(..., prefix_cache=True)``. At most one cache is kept,
    never larger than the one the previous generation held; :meth:`LocalLM.nll` drops it;
  * greedy decoding with the KV cache, stopping at EOS, at a stop string (:func:`cut_at_stop`) or after
    ``max_new_tokens``; optionally a CTRL repetition penalty over the generated tokens only;
  * bf16 weights where the CPU runs bf16 natively (:func:`longseq.models.loading.pick_dtype`).

The module also holds what every caller of the loop shares: the stop rule, prompt encoding (raw text or a
chat template), token counting/truncation, and the memory estimate of one long generation.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

from longseq.core.errors import UserError
from longseq.models.info import kv_cache_bytes
from longseq.models.loading import load_model
from longseq.models.rope import apply_rope, native_context_length

Message = dict[str, str]


@dataclass
class Generation:
    """Result of one greedy generation."""

    text: str
    new_tokens: int
    finish_reason: str  # "stop" (EOS or stop rule) or "length"
    seconds: float


def cut_at_stop(text: str, stop: Sequence[str] = ("\n",)) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string that occurs after some non-blank output.

    Leading blank lines are kept (chat models often open with one); the answer is what follows them.
    Returns (text, whether a stop string was found).
    """
    body_start = len(text) - len(text.lstrip())
    cut = min((i for s in stop if (i := text.find(s, body_start)) >= 0 and text[body_start:i].strip()), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# ------------------------------------------------------------------------------------------ prompt tokens


def encode(tokenizer: Any, text: str, fmt: str = "raw") -> list[int]:
    """Token ids exactly as the model reads them: a chat-rendered text (``fmt="chat"``) already holds its
    special tokens, a raw text gets the tokenizer's usual ones (e.g. BOS for Llama-2 tokenizers, none for SmolLM2)."""
    return tokenizer(text, add_special_tokens=(fmt == "raw"))["input_ids"]


def chat_text(tokenizer: Any, messages: Sequence[Message]) -> str:
    """``messages`` in the tokenizer's chat template, ending with the assistant turn's header."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


class TokenCounter:
    """Exact token counts and token-level truncation with ``self.tokenizer`` (no special tokens added)."""

    tokenizer: Any

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate(self, text: str, max_tokens: int, keep: str = "end") -> str:
        """Cut ``text`` to at most ``max_tokens`` tokens, keeping its start or its end."""
        if max_tokens <= 0:
            return ""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            return text
        ids = ids[-max_tokens:] if keep == "end" else ids[:max_tokens]
        out = self.tokenizer.decode(ids, skip_special_tokens=True)
        while out and self.count(out) > max_tokens:  # decode/encode round trips can grow by a token
            out = out[1:] if keep == "end" else out[:-1]
        return out


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


def estimate_memory_bytes(config: Any, length: int, chunk_size: int, bytes_per_value: int,
                          attn_implementation: str | None = None) -> int:
    """Upper bound of the peak memory of one generation or perplexity pass at ``length`` tokens, beyond the
    weights (each term from peak resident memory measured at 8k-64k tokens; ``tests/test_eval_run.py`` checks
    the bound):

      * attention mask: a chunk with a past (every chunk after the first, or the rest of a prompt after a
        reused prefix) gets an explicit (chunk x length) boolean mask, which SDPA's CPU kernel converts to
        the query dtype: ``chunk x length x (1 + bytes_per_value)``. This term dominates at long lengths
        (tiny model, 32k prompt, 16k chunks: 1.55 GB measured in bf16, 2.61 GB in fp32, for a 4 MB KV cache);
      * eager attention (``attn_implementation="eager"``) also materializes every head's scores, the masked
        scores, their fp32 softmax and its cast back: ``heads x chunk x length x (3 x bytes_per_value + 4)``
        (10.6 bytes per score measured in bf16);
      * the KV cache, plus one layer's K and V again while ``torch.cat`` grows it;
      * one chunk's activations (a few chunk x intermediate and chunk x hidden tensors, fp32 at worst);
      * 512 positions of vocabulary logits, twice (perplexity scores the LM head in 512-row slices: the
        head's output, its fp32 copy and log-softmax, while the previous slice's are still alive);
      * the prompt itself: text, token ids and the tokenizer's encoding, about 2 KB per token.
    """
    chunk = min(chunk_size, length)
    bpv = bytes_per_value
    layers = config.num_hidden_layers
    hidden = config.hidden_size
    inter = getattr(config, "intermediate_size", None) or 4 * hidden
    attn = attn_implementation or getattr(config, "_attn_implementation", None) or "sdpa"
    need = chunk * length * (1 + bpv)
    if attn == "eager":
        need += config.num_attention_heads * chunk * length * (3 * bpv + 4)
    need += kv_cache_bytes(config, length, bpv) * (layers + 2) // layers
    need += chunk * (6 * inter + 8 * hidden) * 4
    need += 512 * config.vocab_size * (2 * bpv + 12)
    return need + 2048 * length


def check_fits(config: Any, length: int, chunk_size: int, bytes_per_value: int, weights_bytes: int = 0) -> None:
    """Raise :class:`UserError` when ``length`` cannot fit in the available memory
    (:func:`estimate_memory_bytes` + the weights must stay under 90% of what is available)."""
    need = estimate_memory_bytes(config, length, chunk_size, bytes_per_value) + weights_bytes
    have = available_memory_bytes()
    if need > 0.9 * have:
        raise UserError(f"length {length} needs about {need / 2**30:.1f} GiB (attention mask of a "
                        f"{min(chunk_size, length)}-token chunk, KV cache, activations) but only "
                        f"{have / 2**30:.1f} GiB is available; lower --lengths or --chunk-size")


# ------------------------------------------------------------------------------------------ the local LM


def repetition_penalized(logits: Any, generated: Sequence[int], penalty: float) -> Any:
    """CTRL repetition penalty (Keskar et al., 2019) over the *generated* tokens only.

    ``logits`` (1, V) -> float32 scores (1, V) where every token already in ``generated`` has its logit
    divided by ``penalty`` when positive and multiplied by it when negative. transformers'
    ``repetition_penalty`` also penalizes every prompt token, which stops a small model from copying a
    remembered name or number out of its prompt; greedy decoding without any penalty makes the 135M model
    loop ("Biscuzzle, Biscuzzle, ..."). The float32 cast matches ``model.generate``, which processes scores
    in float32.
    """
    import torch

    scores = logits.float()
    if penalty == 1.0 or not generated:
        return scores
    index = torch.tensor([list(generated)], device=scores.device)
    picked = scores.gather(1, index)
    return scores.scatter(1, index, torch.where(picked < 0, picked * penalty, picked / penalty))


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokenizer's EOS ids together with the model's generation-config EOS ids."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        ids |= {i for i in ([value] if isinstance(value, int) else value or []) if i is not None}
    return ids


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class LocalLM(TokenCounter):
    """Greedy generation and log-likelihoods with a local transformers model (see module docstring).

    Args:
        model: a causal LM in eval mode (RoPE already set by :func:`longseq.models.rope.apply_rope`).
        tokenizer: its tokenizer.
        chunk_size: prefill chunk in tokens.
        prefix_cache: keep the last generation's KV cache and reuse its longest common prefix with the next
            prompt (:meth:`generate_ids`); ``reused_tokens`` / ``prefilled_tokens`` count the effect. Off by
            default: on CPU the rest of a prompt after a reused prefix needs an explicit attention mask, and
            ``bench/prefix_cache.py`` measured NIAH 1.87x slower with it (docs/benchmarks.md).
    """

    def __init__(self, model: Any, tokenizer: Any, chunk_size: int = 16384, prefix_cache: bool = False):
        if chunk_size < 1:
            raise UserError(f"--chunk-size must be >= 1, got {chunk_size}")
        self.model, self.tokenizer, self.chunk_size = model, tokenizer, chunk_size
        self.body = getattr(model, model.base_model_prefix)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.prefix_cache = prefix_cache
        self._kept: tuple[list[int], Any] | None = None  # (ids whose K/V the cache holds, that DynamicCache)
        self.reused_tokens = self.prefilled_tokens = 0

    def clear_prefix_cache(self) -> None:
        """Free the kept KV cache (the next prompt is prefilled whole)."""
        self._kept = None

    def _cache_for(self, ids: Sequence[int]) -> tuple[Any, int]:
        """A DynamicCache holding the K/V of ``ids[:reuse]`` and ``reuse``: the kept cache cropped to its longest
        common prefix with ``ids`` (at most ``len(ids) - 1``, the last prompt token must run to give logits), or
        a new empty cache. Only full-attention layers can be cropped; other caches are never reused."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        kept, self._kept = self._kept, None  # dropped before anything new is allocated
        if kept is not None and self.prefix_cache:
            kept_ids, cache = kept
            reuse = min(common_prefix_length(kept_ids, ids), len(ids) - 1)
            if reuse > 0 and all(type(layer) is DynamicLayer for layer in cache.layers):
                cache.crop(reuse - len(kept_ids))
                return cache, reuse
        return DynamicCache(config=self.model.config), 0

    @classmethod
    def load(cls, spec: str, method: str = "none", dtype: str = "auto", chunk_size: int = 16384,
             target_length: int | None = None, factor: float | None = None, theta: float | None = None) -> "LocalLM":
        """Load ``spec`` once and apply RoPE ``method`` via the registry of :mod:`longseq.models.rope`."""
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

    def chat_ids(self, messages: Sequence[Message]) -> list[int]:
        """Prompt token ids of ``messages`` through the chat template (same ids as ``apply_chat_template``)."""
        return encode(self.tokenizer, chat_text(self.tokenizer, messages), "chat")

    def _prefill(self, ids: Any, cache: Any, want_logits: bool) -> Any:
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

    def generate_ids(self, ids: Sequence[int], max_new_tokens: int, stop: Sequence[str] = ("\n",),
                     repetition_penalty: float = 1.0) -> Generation:
        """Greedy continuation of ``ids`` (prompt token ids) with a KV cache.

        Stops at an EOS token (not part of the output), when :func:`cut_at_stop` finds a stop string in the
        decoded output (the text is cut there), or after ``max_new_tokens`` tokens.
        """
        import torch

        t0 = time.perf_counter()
        if not ids:
            raise UserError("empty prompt")
        device = self.model.device
        out: list[int] = []
        finish = "length"
        with torch.inference_mode():
            cache, reuse = self._cache_for(ids)
            logits = self._prefill(torch.tensor([list(ids[reuse:])], device=device), cache, want_logits=True)
            self.reused_tokens += reuse
            self.prefilled_tokens += len(ids) - reuse
            for step in range(max_new_tokens):
                if step:
                    logits = self.model(input_ids=torch.tensor([out[-1:]], device=device), cache=cache,
                                        use_cache=True, logits_to_keep=1).logits[:, -1]
                nxt = int(repetition_penalized(logits, out, repetition_penalty).argmax(-1))
                if nxt in self.eos_ids:
                    finish = "stop"
                    break
                out.append(nxt)
                if stop and cut_at_stop(self.tokenizer.decode(out, skip_special_tokens=True), stop)[1]:
                    finish = "stop"
                    break
        if self.prefix_cache:  # the cache holds the prompt and every generated token but the last
            self._kept = ((list(ids) + out)[:cache.get_seq_length()], cache)
        text, _ = cut_at_stop(self.tokenizer.decode(out, skip_special_tokens=True), stop)
        return Generation(text, len(out), finish, time.perf_counter() - t0)

    def nll(self, ids: Sequence[int], score_from: int = 1) -> tuple[float, int]:
        """Sum of next-token negative log-likelihoods of ``ids[score_from:]`` given everything before them.

        The prefill runs chunk by chunk; each chunk's hidden states (chunk, hidden) go through the LM head
        in slices of 512 rows so the full (length, vocab) logits never exist. Returns (nll sum, count).
        """
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        self.clear_prefix_cache()  # one KV cache at a time (the memory estimate counts one)
        x = torch.tensor([list(ids)], device=self.model.device)
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
                    pos = torch.arange(start + s, min(start + s + 512, end), device=x.device)
                    keep = pos + 1 >= score_from
                    if not keep.any():
                        continue
                    logits = head(hidden[s:s + 512]).float()
                    losses = F.cross_entropy(logits, targets[s:s + 512], reduction="none")
                    total += float(losses[keep].sum())
                    count += int(keep.sum())
        return total, count
