"""Shared fixtures: tiny random Llama checkpoints (seconds), the embedded model's tokenizer, a loopback chat
server, and offline settings. Test modules take what they need as fixtures."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Hub ids must fail fast in tests, not retry for 20 s
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def _tiny_llama_config(**overrides: Any) -> Any:
    """A 2-layer Llama config small enough for CPU unit tests (head_dim 16, GQA 4/2, 256-token native context)."""
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _word_tokenizer() -> Any:
    """A small real tokenizer (word-level over a fixed vocabulary of 128) built with the `tokenizers` library."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(125):
        vocab[f"w{i}"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


@pytest.fixture(scope="session")
def tiny_llama_config() -> Callable[..., Any]:
    """``tiny_llama_config(**overrides)``: the tiny Llama config, any field overridden."""
    return _tiny_llama_config


@pytest.fixture(scope="session")
def smol_tokenizer() -> Any:
    """The embedded SmolLM2-135M-Instruct tokenizer (with its chat template)."""
    from longseq.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def make_tiny_llama(smol_tokenizer: Any) -> Callable[..., Path]:
    """``make_tiny_llama(path, tokenizer="words"|"smollm2", **config_overrides) -> path``: the one factory of
    tiny random Llama checkpoints (seed 0, saved with ``save_pretrained`` with its tokenizer).

    ``smollm2`` uses the embedded model's tokenizer and chat template (vocabulary, BOS/EOS from it) in a
    hidden-32 model; ``words`` the 128-word tokenizer in the hidden-64 model of :func:`tiny_llama_config`.
    """

    def make(path: Path, tokenizer: str = "words", **overrides: Any) -> Path:
        import torch
        from transformers import LlamaForCausalLM

        if tokenizer == "smollm2":
            tok = smol_tokenizer
            overrides = {**dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=None), **overrides}
        else:
            tok = _word_tokenizer()
        torch.manual_seed(0)
        LlamaForCausalLM(_tiny_llama_config(**overrides)).save_pretrained(path)
        tok.save_pretrained(path)
        return Path(path)

    return make


@pytest.fixture
def tiny_llama_dir(tmp_path: Path, make_tiny_llama: Callable[..., Path]) -> Path:
    """A tiny random Llama with the 128-word tokenizer (256-token native context), in a temporary folder."""
    return make_tiny_llama(tmp_path / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: Any, make_tiny_llama: Callable[..., Path]) -> Path:
    """A tiny random Llama (hidden 32, 1024-token context, tied embeddings) with SmolLM2's tokenizer and chat
    template, shared by the whole session."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), "smollm2", max_position_embeddings=1024,
                           tie_word_embeddings=True)


@pytest.fixture(scope="session")
def chat_server() -> type:
    """The :class:`ChatServer` class: ``with chat_server(complete, model="name") as url: ...``."""
    return ChatServer


# A minimal OpenAI-compatible chat-completions server (loopback only). It speaks the real wire protocol
# (``POST /v1/chat/completions``, ``GET /v1/models``), so the ``openai`` client behind
# :class:`longseq.memory.llm.OpenAIChat` is exercised end to end; answers come from any
# ``complete(messages, max_tokens, stop) -> str`` callable. The user-facing server is ``longseq serve``.


class ChatServer:
    """``with ChatServer(complete, model="name") as url:`` serves on 127.0.0.1 at a free port."""

    def __init__(self, complete: Callable[[list[dict], int, list[str]], str], model: str = "test-model") -> None:
        self.complete, self.model = complete, model
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # one generation at a time, like a single-GPU server
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": outer.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                try:
                    req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    messages = req["messages"]
                except (ValueError, KeyError):
                    self._send(400, {"error": {"message": "body must be JSON with messages", "type": "invalid_request"}})
                    return
                if req.get("model") != outer.model:
                    self._send(404, {"error": {"message": f"model {req.get('model')} not found", "type": "not_found"}})
                    return
                stop = req.get("stop") or []
                stop = [stop] if isinstance(stop, str) else stop
                outer.requests.append(req)
                with outer._lock:
                    text = outer.complete(messages, int(req.get("max_tokens") or 128), stop)
                self._send(200, {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                    "model": outer.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
