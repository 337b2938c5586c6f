"""Chat backends of the SCM agent: a local transformers model and any OpenAI-compatible endpoint.

Both are thin adapters over :mod:`longseq.models`: :class:`TransformersChat` generates with the greedy loop
of :class:`longseq.models.generation.LocalLM` (with a repetition penalty over the answer's own tokens),
:class:`OpenAIChat` talks through :class:`longseq.models.openai_client.OpenAIClient`. Answers are cut with
the shared stop rule (:func:`longseq.models.generation.cut_at_stop`: at the earliest stop string after
non-blank text, the same rule as ``longseq eval``; applied on the client for endpoints too) and stripped.
A local model stops at its tokenizer's or its generation config's EOS token.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from longseq.core.errors import UserError
from longseq.models.generation import LocalLM, Message, TokenCounter
from longseq.models.loading import load_model, load_tokenizer
from longseq.models.openai_client import OpenAIClient
from longseq.models.rope import native_context_length


class ChatLLM(Protocol):
    """What the agent needs from a model: chat completion and exact prompt token counts."""

    name: str
    context_length: int

    def count(self, text: str) -> int: ...

    def count_messages(self, messages: Sequence[Message]) -> int: ...

    def truncate(self, text: str, max_tokens: int, keep: str = "end") -> str: ...

    def complete(self, messages: Sequence[Message], max_new_tokens: int = 128, stop: Sequence[str] = ()) -> str: ...


class TransformersChat(TokenCounter):
    """A local causal LM through its chat template (greedy decoding, repetition penalty 1.3 on the answer's
    own tokens: see :func:`longseq.models.generation.repetition_penalized`).

    Args:
        model, tokenizer: as returned by :func:`longseq.load_model`.
        context_length: the window the agent budgets for (default: the model's native context length).
    """

    def __init__(self, model: Any, tokenizer: Any, context_length: int | None = None, name: str = "local") -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.repetition_penalty = 1.3
        native = native_context_length(model.config)
        if context_length and context_length > native:
            raise UserError(f"--context-length {context_length} is beyond the model's window {native}; "
                            "extend the model first (longseq extend) or pass a smaller value")
        self.context_length = int(context_length or native)
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"model {name} has no chat template; use an instruction-tuned model")
        self.lm = LocalLM(model, tokenizer)

    @classmethod
    def load(cls, spec: str, context_length: int | None = None, dtype: str = "auto") -> "TransformersChat":
        model, tok = load_model(spec, dtype=dtype)
        return cls(model, tok, context_length, name=spec)

    def count_messages(self, messages: Sequence[Message]) -> int:
        return len(self.lm.chat_ids(messages))

    def complete(self, messages: Sequence[Message], max_new_tokens: int = 128, stop: Sequence[str] = ()) -> str:
        ids = self.lm.chat_ids(messages)
        if len(ids) + max_new_tokens > self.context_length:
            raise ValueError(f"prompt of {len(ids)} tokens + {max_new_tokens} new exceeds {self.context_length}")
        return self.lm.generate_ids(ids, max_new_tokens, stop, self.repetition_penalty).text.strip()


class OpenAIChat(TokenCounter):
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint, through the ``openai`` client.

    The endpoint's tokenizer is unknown, so prompt tokens are counted with a local ``tokenizer`` (default: the
    embedded model's) plus a per-message overhead of 8 tokens; pass ``context_length`` for the served model.
    """

    PER_MESSAGE = 8

    def __init__(self, base_url: str, model: str, context_length: int, tokenizer: Any,
                 api_key: str | None = None, timeout: float = 120.0) -> None:
        self.api = OpenAIClient(base_url, model, api_key=api_key, timeout=timeout)
        self.base_url, self.name, self.context_length, self.tokenizer = base_url, model, int(context_length), tokenizer

    def count_messages(self, messages: Sequence[Message]) -> int:
        return sum(self.count(m["content"]) + self.PER_MESSAGE for m in messages) + self.PER_MESSAGE

    def complete(self, messages: Sequence[Message], max_new_tokens: int = 128, stop: Sequence[str] = ()) -> str:
        return self.api.chat(messages, max_new_tokens, stop).text.strip()


def load_llm(model: str = "smollm2-135m", base_url: str | None = None, api_model: str | None = None,
             context_length: int | None = None, api_key: str | None = None) -> ChatLLM:
    """A local model (``model``) or, with ``base_url``, an endpoint serving ``api_model``."""
    if base_url:
        if not api_model:
            raise UserError("--base-url needs --api-model (the model name the endpoint serves)")
        return OpenAIChat(base_url, api_model, context_length or 4096, load_tokenizer(model), api_key=api_key)
    return TransformersChat.load(model, context_length)
