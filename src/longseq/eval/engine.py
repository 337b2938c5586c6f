"""Inference engines of ``longseq eval``: prompt formats and thin adapters over :mod:`longseq.models`.

The evaluation prompt is rendered here (raw completion text, or the chat template around the task body)
and answered by an engine:
  * :class:`HFEngine`: a :class:`longseq.models.generation.LocalLM` (chunked prefill, KV cache, greedy
    loop, chunked NLL for perplexity) with :meth:`HFEngine.answer`;
  * :class:`OpenAIEngine`: a :class:`longseq.models.openai_client.OpenAIClient` for any OpenAI-compatible
    server (vLLM, llama.cpp server, Ollama, ``longseq serve``): the completions endpoint for raw prompts,
    chat completions for chat prompts.
Both stop at the first newline after the answer started (:func:`cut_at_stop`).
"""

from __future__ import annotations

from typing import Any, Sequence

from longseq.core.errors import UserError, unknown_choice
from longseq.models.generation import Generation, LocalLM, chat_text, check_fits, cut_at_stop, encode
from longseq.models.openai_client import OpenAIClient

__all__ = ["PROMPT_FORMATS", "resolve_prompt_format", "render", "encode", "HFEngine", "OpenAIEngine", "Generation",
           "cut_at_stop", "check_fits"]

PROMPT_FORMATS = ("auto", "raw", "chat")


def resolve_prompt_format(name: str, tokenizer: Any) -> str:
    """``auto`` -> ``raw``; ``chat`` needs a chat template.

    ``auto`` is the raw completion prompt ending with the answer prefix: on SmolLM2-135M-Instruct it
    scored passkey 6/6 at ~2.5k tokens where the chat-template prompt scored 0/6 (see docs/eval.md).
    """
    if name not in PROMPT_FORMATS:
        raise unknown_choice("prompt format", name, PROMPT_FORMATS)
    if name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise UserError("this model has no chat template; use --prompt-format raw (or auto)")
    return "raw" if name == "auto" else name


def render(body: str, answer_prefix: str, sep: str, fmt: str, tokenizer: Any) -> str:
    """The text the model reads: raw ``body + sep + answer_prefix``, or the chat template around ``body``
    followed by the answer prefix (RULER appends its answer prefix after the template the same way).
    Token ids of the result: :func:`encode` (``tokenizer, text, fmt``)."""
    if fmt == "raw":
        return f"{body}{sep}{answer_prefix}"
    return chat_text(tokenizer, [{"role": "user", "content": body}]) + answer_prefix


class HFEngine(LocalLM):
    """A local model answering rendered eval prompts (``HFEngine.load(spec, method, dtype, chunk_size, ...)``)."""

    backend = "hf"

    def answer(self, body: str, text: str, fmt: str, max_new_tokens: int, stop: Sequence[str] = ("\n",)) -> Generation:
        """Greedy continuation of a rendered prompt ``text`` (``body`` is unused: the text holds it)."""
        return self.generate_ids(encode(self.tokenizer, text, fmt), max_new_tokens, stop)


class OpenAIEngine(OpenAIClient):
    """An OpenAI-compatible server answering eval prompts: ``OpenAIEngine(base_url, api_model, api_key)``.

    Raw prompts are completed as text; chat prompts are sent as one user message (the server applies its
    own template, so the answer prefix cannot be forced there).
    """

    backend = "openai"

    def answer(self, body: str, text: str, fmt: str, max_new_tokens: int, stop: Sequence[str] = ("\n",)) -> Generation:
        """Raw format: complete ``text``; chat format: send ``body`` as a chat message."""
        if fmt == "chat":
            return self.chat([{"role": "user", "content": body}], max_new_tokens, stop)
        return self.complete(text, max_new_tokens, stop)
