"""One client for any OpenAI-compatible server (vLLM, llama.cpp server, Ollama, ``longseq serve``).

Decoding is greedy (temperature 0). Raw prompts go to ``/v1/completions``, message lists to
``/v1/chat/completions`` (the server applies its own chat template). Stop strings are applied here with
:func:`longseq.models.generation.cut_at_stop`, the same rule as for a local model, rather than sent to the
server, whose own rule may differ. Every failure of the server becomes a one-line :class:`UserError`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from longseq.core.errors import UserError, one_line
from longseq.models.generation import Generation, Message, cut_at_stop


class OpenAIClient:
    """Greedy completions and chat completions from the server at ``base_url`` serving ``model``.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        model: the model name the server serves.
        api_key: default ``$OPENAI_API_KEY`` or ``EMPTY`` (local servers ignore it).
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 600.0):
        try:
            import openai
        except ImportError:
            raise UserError("the openai backend needs the openai package; pip install 'longseq[serve]'") from None
        self.base_url, self.model = base_url, model
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                                    timeout=timeout, max_retries=1)
        self._openai = openai

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        """``fn(**kwargs)`` with the server's failures as one-line :class:`UserError` s."""
        try:
            return fn(**kwargs)
        except self._openai.APIConnectionError:
            raise UserError(f"cannot reach the server at {self.base_url}; start it (e.g. longseq serve MODEL --port "
                            "8000) or fix --base-url") from None
        except self._openai.APIStatusError as err:
            raise UserError(f"server at {self.base_url} answered {err.status_code}: "
                            f"{one_line(err.message, 200)}") from None

    def check(self) -> None:
        """Fail fast (one line) when the server is down, before any work: one try, a short timeout."""
        self._call(self.client.with_options(max_retries=0, timeout=10.0).models.list)

    def complete(self, prompt: str, max_tokens: int, stop: Sequence[str] = ()) -> Generation:
        """Greedy continuation of the raw text ``prompt`` (``/v1/completions``)."""
        t0 = time.perf_counter()
        resp = self._call(self.client.completions.create, model=self.model, prompt=prompt, temperature=0.0,
                          max_tokens=max_tokens)
        return _generation(resp, resp.choices[0].text, stop, t0)

    def chat(self, messages: Sequence[Message], max_tokens: int, stop: Sequence[str] = ()) -> Generation:
        """Greedy assistant reply to ``messages`` (``/v1/chat/completions``)."""
        t0 = time.perf_counter()
        resp = self._call(self.client.chat.completions.create, model=self.model, temperature=0.0,
                          max_tokens=max_tokens, messages=list(messages))
        return _generation(resp, resp.choices[0].message.content, stop, t0)


def _generation(resp: Any, text: str | None, stop: Sequence[str], t0: float) -> Generation:
    out, _ = cut_at_stop(text or "", stop)
    usage = getattr(resp, "usage", None)
    return Generation(out, getattr(usage, "completion_tokens", 0) or 0, resp.choices[0].finish_reason or "stop",
                      time.perf_counter() - t0)
