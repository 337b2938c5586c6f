"""A minimal OpenAI-compatible chat-completions server for tests (loopback only).

It speaks the real wire protocol (``POST /v1/chat/completions``, ``GET /v1/models``) over HTTP, so the
``openai`` client in :class:`longseq.memory.llm.OpenAIChat` is exercised end to end; the answers come from any
``complete(messages, max_tokens, stop) -> str`` callable, e.g. a :class:`longseq.memory.llm.TransformersChat`.
Test helper only: the project's user-facing server is ``longseq serve`` (:mod:`longseq.models.serve`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


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
