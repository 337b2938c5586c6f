"""``longseq serve``: a small OpenAI-compatible HTTP server on a :class:`~longseq.models.generation.LocalLM`.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (the model's chat
template is applied), with ``stream: true`` as server-sent events like the OpenAI API
(``chat.completion.chunk`` objects, then ``data: [DONE]``). Decoding is greedy; the request format and its
checks are in :mod:`longseq.models.serve_api`. Every refusal is an OpenAI error object, never a dropped
connection.

One request generates at a time (a single model, a single KV cache); up to ``max_queue`` more wait their
turn and the rest are answered 503 at once. Generation stops as soon as its client disconnects, checked
before every forward pass (each prefill chunk and each new token), so an abandoned request never holds the
model. Request bodies above ``max_body`` bytes are answered 413 without being kept, and prompt + completion
must fit the context. This is for local evaluation and tests, not production traffic (vLLM, llama.cpp's
server); the standard library's ``http.server`` keeps it free of extra dependencies.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

from longseq.core.errors import UserError, one_line
from longseq.models.generation import Generation, LocalLM, encode
from longseq.models.serve_api import (BYTES_PER_TOKEN, MIN_BODY, ApiError, ApiRequest, StreamText, chunk_payload,
                                      clean_path, completion_budget, completion_payload, endpoint, no_route,
                                      parse_request, response_id, usage)

DRAIN_SECONDS = 2.0  # after a 413, how long the unread body is read and discarded so the client sees the answer


class ClientGone(Exception):
    """The client closed its connection: stop working for it."""


def client_gone(sock: socket.socket) -> bool:
    """True when the peer has closed ``sock`` (readable with nothing to read, or reset). A client that
    half-closes its side after sending the request looks gone too; HTTP clients do not do that."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and not sock.recv(1, socket.MSG_PEEK)
    except ValueError:  # descriptor beyond select's limit: cannot tell, keep going
        return False
    except OSError:
        return True


def failure(err: Exception) -> ApiError:
    """A failure of the model itself (out of memory, ...): one line in the log, a 500 for the client."""
    print(f"longseq serve: error: {type(err).__name__}: {one_line(err, 300)}", file=sys.stderr, flush=True)
    return ApiError(f"generation failed: {type(err).__name__}: {one_line(err, 200)}", 500)


def context_length(config: Any) -> int:
    """The context a served model takes: the RoPE extension's target when longseq extended it, else
    ``max_position_embeddings``."""
    ext = getattr(config, "longseq_extension", None)
    return int((ext or {}).get("target") or config.max_position_embeddings)


class TurnGate:
    """One generation at a time; at most ``max_queue`` requests wait for their turn, the rest get 503."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.run = threading.Lock()  # held by the generating request
        self.admitted = 0  # requests generating or waiting
        self._count = threading.Lock()

    def _admit(self, step: int) -> bool:
        with self._count:
            if step > 0 and self.admitted > self.max_queue:
                return False
            self.admitted += step
            return True

    @contextmanager
    def turn(self, gone: Callable[[], bool]) -> Iterator[None]:
        """Hold the model for one request; a waiting request leaves the queue when its client goes."""
        if not self._admit(1):
            raise ApiError("the server is busy generating for other requests; retry shortly", 503, code="server_busy")
        try:
            while not self.run.acquire(timeout=0.05):
                if gone():
                    raise ClientGone
            try:
                yield
            finally:
                self.run.release()
        finally:
            self._admit(-1)


class TokenWatch:
    """Watches one :meth:`LocalLM.generate_ids` call through forward pre-hooks (``with TokenWatch(...):``).

    The decoder body runs for every prefill chunk and every new token: there the hook checks the client and
    raises :class:`ClientGone`, which ends the generation. The full model (with its LM head) runs for the
    prompt's last chunk, then once per new token, fed the token chosen before: from its second call on, the
    hook passes the tokens generated so far to ``on_token`` (the last token is never fed back: see
    :meth:`StreamText.finish`). Counting calls rather than prompt tokens keeps this exact when the engine
    reuses a cached prompt prefix.
    """

    def __init__(self, engine: LocalLM, gone: Callable[[], bool],
                 on_token: Callable[[list[int]], None] | None = None) -> None:
        self.engine, self.gone, self.on_token = engine, gone, on_token
        self.model_calls = 0
        self.generated: list[int] = []
        self.handles: list[Any] = []

    def __enter__(self) -> "TokenWatch":
        self.handles = [self.engine.body.register_forward_pre_hook(self._check),
                        self.engine.model.register_forward_pre_hook(self._token, with_kwargs=True)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()

    def _check(self, module: Any, args: tuple) -> None:
        if self.gone():
            raise ClientGone

    def _token(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        self.model_calls += 1
        if self.model_calls > 1 and self.on_token is not None:
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]  # (1, 1): the previous new token
            self.generated.append(int(ids[0, -1]))
            self.on_token(self.generated)


class _Handler(BaseHTTPRequestHandler):
    server: "CompletionServer"
    timeout = 60  # seconds a stalled client may hold a connection (socket timeout)

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet unless --verbose
        if self.server.verbose:
            super().log_message(fmt, *args)

    # ------------------------------------------------------------------------------------------ output

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        try:
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", "Content-Length": str(len(body)),
                               **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client left before reading its answer
            self.close_connection = True

    def _send_error(self, err: ApiError) -> None:
        self.close_connection = True
        self._send(err.status, err.payload(), {"Retry-After": "1"} if err.status == 503 else None)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, unknown method, ...) as OpenAI error objects."""
        if self.request_version == "HTTP/0.9":  # a garbled request line: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        self.log_error("code %d, message %s", code, message)
        try:
            message = message or HTTPStatus(code).phrase
        except ValueError:
            message = message or "error"
        self._send_error(ApiError(one_line(message, 200), code))

    def _sse(self, payload: dict[str, Any] | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        try:
            self.wfile.write(f"data: {data}\n\n".encode())
        except OSError:
            raise ClientGone from None

    def _gone(self) -> bool:
        return client_gone(self.connection)

    # ------------------------------------------------------------------------------------------- input

    def _read_json(self) -> Any:
        """The request body as JSON, read only when it is within ``max_body`` bytes."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError("chunked request bodies are not supported; send a Content-Length", 411)
        raw = self.headers.get("Content-Length", "0").strip()
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            raise ApiError(f"bad Content-Length {one_line(raw, 40)!r}; it must be a number of bytes")
        length, cap = int(raw), self.server.max_body
        if length > cap:
            self.drain_until = time.monotonic() + DRAIN_SECONDS  # see finish()
            raise ApiError(f"request body of {length} bytes is over this server's limit of {cap} bytes; send a "
                           "shorter prompt or start the server with a larger --max-body", 413,
                           code="request_too_large")
        data = self.rfile.read(length)
        if len(data) < length:
            raise ApiError(f"request body ended after {len(data)} of {length} bytes")
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, too deeply nested
            raise ApiError(f"request body is not valid JSON: {one_line(err, 120)}", code="invalid_json") from None

    def finish(self) -> None:
        """After a refused body, read and discard (64 KiB at a time, for at most ``DRAIN_SECONDS``) what the
        client still sends: closing a socket with unread data resets it, and the client would lose the 413."""
        super().finish()
        if getattr(self, "drain_until", None) is None:
            return
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(DRAIN_SECONDS)
            while time.monotonic() < self.drain_until and self.connection.recv(1 << 16):
                pass
        except OSError:
            pass

    # ------------------------------------------------------------------------------------------ routes

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        path, name = clean_path(self.path), self.server.model_name
        card = {"id": name, "object": "model", "created": self.server.created, "owned_by": "longseq",
                "max_model_len": self.server.context}
        if path == "/models":
            self._send(200, {"object": "list", "data": [card]})
        elif path == f"/models/{name}":
            self._send(200, card)
        elif path.startswith("/models/"):
            self._send_error(ApiError(f"model '{one_line(path[8:], 80)}' is not served here; this server serves {name}",
                                      404, param="model", code="model_not_found"))
        else:
            self._send_error(no_route("GET", self.path))

    def do_POST(self) -> None:  # noqa: N802
        try:
            kind = endpoint(self.path)
            if kind is None:
                raise no_route("POST", self.path)
            req = parse_request(kind, self._read_json(), self.server.engine.tokenizer)
            self._complete(req)
        except ApiError as err:
            self._send_error(err)
        except ClientGone:
            self.close_connection = True
        except Exception as err:
            self._send_error(failure(err))

    def _complete(self, req: ApiRequest) -> None:
        engine = self.server.engine
        ids = list(req.prompt) if req.fmt == "ids" else encode(engine.tokenizer, req.prompt, req.fmt)
        budget = completion_budget(req, len(ids), self.server.context)
        with self.server.gate.turn(self._gone):
            if req.stream:
                return self._stream(req, ids, budget)
            gen = self._generate(ids, budget, req.stop)
        self._send(200, completion_payload(req.kind, self.server.model_name, gen, len(ids)))

    def _generate(self, ids: list[int], budget: int, stop: list[str],
                  on_token: Callable[[list[int]], None] | None = None) -> Generation:
        with TokenWatch(self.server.engine, self._gone, on_token):
            return self.server.engine.generate_ids(ids, budget, stop)

    def _stream(self, req: ApiRequest, ids: list[int], budget: int) -> None:
        """Server-sent events: a chunk per released piece of text, the finish reason, usage if asked, [DONE]."""
        rid, model, kind = response_id(req.kind), self.server.model_name, req.kind
        self.close_connection = True  # HTTP/1.0: the end of the connection ends the stream
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        extra = {"usage": None} if req.include_usage else {}
        if kind == "chat":
            self._sse({**chunk_payload(kind, rid, model, "", role=True), **extra})
        text = StreamText(req.stop)
        decode = self.server.engine.tokenizer.decode

        def emit(piece: str, finish: str | None = None) -> None:
            if piece or finish:
                self._sse({**chunk_payload(kind, rid, model, piece if piece else None, finish), **extra})

        try:
            gen = self._generate(ids, budget, req.stop, lambda out: emit(text.update(decode(out, skip_special_tokens=True))))
        except ClientGone:
            raise
        except Exception as err:  # the 200 is already sent: the error goes as an event, as OpenAI's streams do
            return self._sse(failure(err).payload())
        emit(text.finish(gen.text))
        emit("", gen.finish_reason)
        if req.include_usage:
            self._sse({**chunk_payload(kind, rid, model, None), "choices": [], "usage": usage(len(ids), gen.new_tokens)})
        self._sse("[DONE]")


class CompletionServer(ThreadingHTTPServer):
    """An OpenAI-compatible server around a :class:`LocalLM`. ``port=0`` picks a free port (see ``url``).

    Args:
        engine: the model.
        model_name: the name ``/v1/models`` reports (requests may name any model).
        max_length: the context prompt + completion must fit (default: the model's, see :func:`context_length`).
        max_body: largest request body in bytes (default 16 bytes per context token, at least 1 MiB).
        max_queue: requests that may wait while one generates; more are answered 503.
        verbose: log every request and dropped connection to stderr.
    """

    daemon_threads = True

    def __init__(self, engine: LocalLM, model_name: str, host: str = "127.0.0.1", port: int = 8000,
                 max_length: int | None = None, verbose: bool = False, max_body: int | None = None,
                 max_queue: int = 8):
        super().__init__((host, port), _Handler)
        self.engine, self.model_name, self.verbose = engine, model_name, verbose
        self.context = int(max_length or context_length(engine.model.config))
        self.max_body = int(max_body or max(MIN_BODY, BYTES_PER_TOKEN * self.context))
        self.gate = TurnGate(max_queue)
        self.created = int(time.time())

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke outside a request (reset while sending headers): one line when verbose."""
        if self.verbose:
            err = sys.exc_info()[1]
            print(f"longseq serve: dropped connection from {client_address[0]}: {one_line(err or 'unknown', 200)}",
                  file=sys.stderr, flush=True)


def make_server(spec: str, host: str = "127.0.0.1", port: int = 8000, method: str = "none",
                target_length: int | None = None, dtype: str = "auto", chunk_size: int = 16384,
                max_length: int | None = None, name: str | None = None, max_body: int | None = None,
                max_queue: int = 8, verbose: bool = False) -> CompletionServer:
    """Load ``spec`` with RoPE ``method`` and bind a :class:`CompletionServer` (call ``serve_forever``).

    The numbers are checked before the model loads; :class:`UserError` names a bad one or a busy port.
    """
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535 (0 picks a free one), got {port}")
    if max_queue < 0:
        raise UserError(f"--max-queue must be 0 or more, got {max_queue}")
    engine = LocalLM.load(spec, method, dtype, chunk_size, target_length=target_length)
    try:
        return CompletionServer(engine, name or spec, host, port, max_length, verbose, max_body, max_queue)
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror or one_line(err)}); choose another "
                        "--port or --host") from None
