"""``longseq serve``: a small OpenAI-compatible HTTP server on a :class:`~longseq.models.generation.LocalLM`.

Endpoints: ``GET /v1/models``, ``POST /v1/completions`` (``prompt`` string), ``POST /v1/chat/completions``
(``messages``; the model's chat template is applied). Decoding is always greedy; ``max_tokens`` and
``stop`` are honoured, ``temperature`` and sampling parameters are ignored. Requests are served one at a
time (a lock around the engine): this is for local evaluation and tests, not for production traffic,
where vLLM or llama.cpp's server are the tools. The standard library's ``http.server`` is enough here
and keeps the server free of extra dependencies.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from longseq.core.errors import UserError
from longseq.models.generation import Generation, LocalLM, chat_text, encode


class _Handler(BaseHTTPRequestHandler):
    server: "CompletionServer"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet by default
        if self.server.verbose:
            super().log_message(fmt, *args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model",
                                                         "owned_by": "longseq"}]})
        else:
            self._error(404, f"unknown path {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        try:
            length = int(self.headers.get("Content-Length") or 0)
            req = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, json.JSONDecodeError):
            return self._error(400, "request body is not JSON")
        path = self.path.rstrip("/")
        if path.endswith("/chat/completions"):
            return self._chat(req)
        if path.endswith("/completions"):
            return self._completion(req)
        return self._error(404, f"unknown path {self.path}")

    def _generate(self, text: str, fmt: str, req: dict[str, Any]) -> tuple[Generation, int] | None:
        engine = self.server.engine
        stop = req.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        try:
            max_tokens = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
        except (TypeError, ValueError):
            self._error(400, "max_tokens must be an integer")
            return None
        ids = encode(engine.tokenizer, text, fmt)
        if self.server.max_length and len(ids) + max_tokens > self.server.max_length:
            self._error(400, f"prompt of {len(ids)} tokens + max_tokens {max_tokens} exceeds the server's "
                             f"--max-length {self.server.max_length}")
            return None
        with self.server.lock:
            gen = engine.generate_ids(ids, max_tokens, stop)
        return gen, len(ids)

    def _usage(self, prompt_tokens: int, gen: Generation) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": gen.new_tokens,
                "total_tokens": prompt_tokens + gen.new_tokens}

    def _completion(self, req: dict[str, Any]) -> None:
        prompt = req.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            return self._error(400, "prompt must be a string")
        result = self._generate(prompt, "raw", req)
        if result is None:
            return None
        gen, n = result
        self._send(200, {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion", "created": int(time.time()),
                         "model": self.server.model_name,
                         "choices": [{"index": 0, "text": gen.text, "finish_reason": gen.finish_reason, "logprobs": None}],
                         "usage": self._usage(n, gen)})

    def _chat(self, req: dict[str, Any]) -> None:
        messages = req.get("messages")
        tok = self.server.engine.tokenizer
        if not isinstance(messages, list) or not messages:
            return self._error(400, "messages must be a non-empty list")
        if not getattr(tok, "chat_template", None):
            return self._error(400, "this model has no chat template; use /v1/completions")
        result = self._generate(chat_text(tok, messages), "chat", req)
        if result is None:
            return None
        gen, n = result
        self._send(200, {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                         "model": self.server.model_name,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": gen.text},
                                      "finish_reason": gen.finish_reason}],
                         "usage": self._usage(n, gen)})


class CompletionServer(ThreadingHTTPServer):
    """An OpenAI-compatible server around a :class:`LocalLM`. ``port=0`` picks a free port (see ``url``)."""

    daemon_threads = True

    def __init__(self, engine: LocalLM, model_name: str, host: str = "127.0.0.1", port: int = 8000,
                 max_length: int | None = None, verbose: bool = False):
        super().__init__((host, port), _Handler)
        self.engine, self.model_name, self.max_length, self.verbose = engine, model_name, max_length, verbose
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def make_server(spec: str, host: str = "127.0.0.1", port: int = 8000, method: str = "none",
                target_length: int | None = None, dtype: str = "auto", chunk_size: int = 16384,
                max_length: int | None = None, name: str | None = None) -> CompletionServer:
    """Load ``spec`` with RoPE ``method`` and bind a :class:`CompletionServer` (call ``serve_forever``)."""
    engine = LocalLM.load(spec, method, dtype, chunk_size, target_length=target_length)
    try:
        return CompletionServer(engine, name or spec, host, port, max_length)
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port") from None
