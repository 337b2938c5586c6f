"""Chat backends of the SCM agent: a local transformers model and any OpenAI-compatible endpoint."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from longseq.core.errors import UserError

Message = dict[str, str]



class ChatLLM(Protocol):
    """What the agent needs from a model: chat completion and exact prompt token counts."""

    name: str
    context_length: int

    def count(self, text: str) -> int: ...

    def count_messages(self, messages: Sequence[Message]) -> int: ...

    def truncate(self, text: str, max_tokens: int, keep: str = "end") -> str: ...

    def complete(self, messages: Sequence[Message], max_new_tokens: int = 128, stop: Sequence[str] = ()) -> str: ...


class _TokenizerMixin:
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


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    for s in stop:
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()


class _AnswerRepetitionPenalty:
    """CTRL-style repetition penalty over the *generated* tokens only.

    transformers' ``repetition_penalty`` also penalizes every prompt token, which stops a small model from
    copying a remembered name or number out of its memory; greedy decoding without any penalty makes the
    135M model loop ("Biscuzzle, Biscuzzle, ..."). So only tokens the answer already used are penalized.
    """

    def __init__(self, prompt_len: int, penalty: float) -> None:
        self.prompt_len, self.penalty = prompt_len, penalty

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        gen = input_ids[:, self.prompt_len :]
        if self.penalty == 1.0 or gen.shape[1] == 0:
            return scores
        picked = scores.gather(1, gen)
        picked = picked.where(picked < 0, picked / self.penalty).where(picked >= 0, picked * self.penalty)
        return scores.scatter(1, gen, picked)


class TransformersChat(_TokenizerMixin):
    """A local causal LM through its chat template (greedy decoding).

    Args:
        model, tokenizer: as returned by :func:`longseq.load_model`.
        context_length: the window the agent budgets for (default: the model's native context length).
    """

    def __init__(self, model: Any, tokenizer: Any, context_length: int | None = None, name: str = "local") -> None:
        from longseq.models.rope import native_context_length

        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.repetition_penalty = 1.3
        native = native_context_length(model.config)
        if context_length and context_length > native:
            raise UserError(f"--context-length {context_length} is beyond the model's window {native}; "
                            "extend the model first (longseq extend) or pass a smaller value")
        self.context_length = int(context_length or native)
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"model {name} has no chat template; use an instruction-tuned model")

    @classmethod
    def load(cls, spec: str, context_length: int | None = None, dtype: str = "auto") -> "TransformersChat":
        from longseq.models.loading import load_model

        model, tok = load_model(spec, dtype=dtype)
        return cls(model, tok, context_length, name=spec)

    def _ids(self, messages: Sequence[Message]) -> list[int]:
        enc = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        return list(enc["input_ids"] if hasattr(enc, "keys") else enc)

    def count_messages(self, messages: Sequence[Message]) -> int:
        return len(self._ids(messages))

    def complete(self, messages: Sequence[Message], max_new_tokens: int = 128, stop: Sequence[str] = ()) -> str:
        import torch

        ids = self._ids(messages)
        if len(ids) + max_new_tokens > self.context_length:
            raise ValueError(f"prompt of {len(ids)} tokens + {max_new_tokens} new exceeds {self.context_length}")
        x = torch.tensor([ids], device=self.model.device)
        with torch.inference_mode():
            out = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                      do_sample=False, pad_token_id=self.tokenizer.eos_token_id,
                                      logits_processor=[_AnswerRepetitionPenalty(len(ids), self.repetition_penalty)])
        return _cut_at_stop(self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True), stop)


class OpenAIChat(_TokenizerMixin):
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint, through the ``openai`` client.

    The endpoint's tokenizer is unknown, so prompt tokens are counted with a local ``tokenizer`` (default: the
    embedded model's) plus a per-message overhead of 8 tokens; pass ``context_length`` for the served model.
    """

    PER_MESSAGE = 8

    def __init__(self, base_url: str, model: str, context_length: int, tokenizer: Any,
                 api_key: str | None = None, timeout: float = 120.0) -> None:
        import os

        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
                             timeout=timeout, max_retries=1)
        self.base_url, self.name, self.context_length, self.tokenizer = base_url, model, int(context_length), tokenizer

    def count_messages(self, messages: Sequence[Message]) -> int:
        return sum(self.count(m["content"]) + self.PER_MESSAGE for m in messages) + self.PER_MESSAGE

    def complete(self, messages: Sequence[Message], max_new_tokens: int = 128, stop: Sequence[str] = ()) -> str:
        import openai

        try:
            resp = self.client.chat.completions.create(
                model=self.name, messages=list(messages), max_tokens=max_new_tokens, temperature=0.0,
                stop=list(stop) or None)
        except openai.APIConnectionError:
            raise UserError(f"cannot reach {self.base_url}; check --base-url and that the server is running") from None
        except openai.APIStatusError as err:
            raise UserError(f"endpoint {self.base_url} answered {err.status_code}: "
                            f"{' '.join(str(err.message).split())[:200]}") from None
        return _cut_at_stop(resp.choices[0].message.content or "", stop)


def load_llm(model: str = "smollm2-135m", base_url: str | None = None, api_model: str | None = None,
             context_length: int | None = None, api_key: str | None = None) -> ChatLLM:
    """A local model (``model``) or, with ``base_url``, an endpoint serving ``api_model``."""
    if base_url:
        if not api_model:
            raise UserError("--base-url needs --api-model (the model name the endpoint serves)")
        from transformers import AutoTokenizer

        from longseq.models.loading import local_dir

        tok = AutoTokenizer.from_pretrained(str(local_dir(model)))
        return OpenAIChat(base_url, api_model, context_length or 4096, tok, api_key=api_key)
    return TransformersChat.load(model, context_length)


