"""``longseq serve`` on loopback: streaming with the openai client, refusals as OpenAI error objects, and a
server that survives huge bodies, abandoned generations and random requests (hypothesis)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longseq.cli import main
from longseq.models.generation import LocalLM, cut_at_stop, encode
from longseq.models.serve import CompletionServer
from longseq.models.serve_api import StreamText

ERROR_KEYS = {"message", "type", "param", "code"}
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def engine(tiny_llama) -> LocalLM:
    return LocalLM.load(str(tiny_llama), dtype="float32")


@pytest.fixture(scope="module")
def long_engine(tmp_path_factory, make_tiny_llama) -> LocalLM:
    """A tiny model with a 1M-token context: a request for most of it would run for tens of minutes."""
    path = make_tiny_llama(tmp_path_factory.mktemp("long"), "smollm2", max_position_embeddings=1 << 20,
                           num_hidden_layers=1)
    return LocalLM.load(str(path), dtype="float32")


@pytest.fixture(scope="module")
def server(engine) -> Iterator[CompletionServer]:
    with serving(engine) as srv:
        yield srv


@contextmanager
def serving(engine: LocalLM, **kwargs: Any) -> Iterator[CompletionServer]:
    srv = CompletionServer(engine, "tiny", port=0, **kwargs)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def parse_http(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP/1.x response; fails the test if it is not well formed."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    m = re.fullmatch(r"HTTP/1\.[01] (\d{3}) .*", lines[0])
    assert m, f"bad status line {lines[0]!r}"
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        assert colon and name.strip() == name and name, f"bad header line {line!r}"
        headers[name.lower()] = value.strip()
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"])
    return int(m.group(1)), headers, body


def raw_request(srv: CompletionServer, data: bytes, timeout: float = 20.0, half_close: bool = False) -> bytes:
    """Send ``data`` as is and read until the server closes the connection."""
    with socket.create_connection(srv.server_address[:2], timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        return read_all(s)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset after the answer ends it too)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def http_post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items())
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode() + body


def post_json(srv: CompletionServer, path: str, payload: Any) -> tuple[int, Any]:
    status, _, body = parse_http(raw_request(srv, http_post(path, json.dumps(payload).encode())))
    return status, json.loads(body)


def assert_error(status: int, payload: Any, expected: int, param: str | None = None) -> None:
    assert status == expected, payload
    assert set(payload) == {"error"} and set(payload["error"]) == ERROR_KEYS, payload
    assert payload["error"]["message"] and "\n" not in payload["error"]["message"]
    assert payload["error"]["type"] == ("server_error" if expected >= 500 else "invalid_request_error")
    if param is not None:
        assert payload["error"]["param"] == param


def quick_answer(srv: CompletionServer) -> float:
    """Seconds the server takes to answer a normal chat request (raw socket: no client start-up in the
    figure); the openai client then gets an answer too."""
    import openai

    t0 = time.perf_counter()
    status, payload = post_json(srv, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 4})
    seconds = time.perf_counter() - t0
    assert status == 200 and payload["choices"][0]["message"]["role"] == "assistant", payload
    client = openai.OpenAI(base_url=srv.url, api_key="EMPTY", max_retries=0, timeout=10)
    chat = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)
    assert chat.choices[0].message.content == payload["choices"][0]["message"]["content"]
    return seconds


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------- streaming


def test_streaming_with_the_openai_client_matches_the_engine(engine):
    """Streamed chunks add up to the non-streamed answer, which equals the engine's own greedy output; a
    multi-character stop string never leaks into a chunk."""
    import openai

    tok = engine.tokenizer
    with serving(engine) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="EMPTY", max_retries=0)
        expected = engine.generate_ids(engine.chat_ids(HELLO), 12, ())
        whole = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12)
        assert whole.choices[0].message.content == expected.text
        chunks = list(client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, stream=True,
                                                     stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finals == [expected.finish_reason]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == expected.new_tokens
        assert chunks[-1].usage.prompt_tokens == len(engine.chat_ids(HELLO))
        assert len({c.id for c in chunks}) == 1

        prompt = "Once upon a time"
        ids = encode(tok, prompt, "raw")
        free = engine.generate_ids(ids, 24, ()).text
        tokens = tok(free, add_special_tokens=False)["input_ids"]
        assert len(tokens) > 8, f"the tiny model's output is too short to pick a stop string from: {free!r}"
        cut = len(tok.decode(tokens[:len(tokens) // 2]))
        stop = free[cut - 2:cut + 2]  # straddles two tokens: its first half must be held back
        expected = engine.generate_ids(ids, 24, [stop])
        assert expected.finish_reason == "stop" and stop not in expected.text
        parts = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=24, stop=stop, stream=True))
        pieces = [p.choices[0].text for p in parts]
        assert "".join(pieces) == expected.text and not any(stop in p for p in pieces) and len(pieces) > 3
        assert parts[-1].choices[0].finish_reason == "stop"
        by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=24, stop=[stop])
        assert by_ids.choices[0].text == expected.text and by_ids.usage.prompt_tokens == len(ids)


def test_stream_is_server_sent_events_ending_with_done(engine):
    with serving(engine) as srv:
        body = json.dumps({"messages": HELLO, "max_tokens": 5, "stream": True}).encode()
        status, headers, data = parse_http(raw_request(srv, http_post("/v1/chat/completions", body)))
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = data.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[-1]["choices"][0]["delta"] == {} and payloads[-1]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in payloads[0]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(pieces=st.lists(st.sampled_from(["a", "b", "\n", " ", "ab", "\ufffd", "stop", "x\n"]), min_size=1, max_size=30),
       stops=st.lists(st.sampled_from(["\n", "ab", "stop", "b\n", "xyz"]), max_size=3))
def test_stream_text_adds_up_to_the_cut_answer(pieces, stops):
    """Replays LocalLM.generate_ids's loop on string "tokens": the released pieces (every token but the last
    is fed back and seen) concatenate to cut_at_stop's final text, and no piece ever shows a stop string."""
    out: list[str] = []
    for piece in pieces:
        out.append(piece)
        if stops and cut_at_stop("".join(out), stops)[1]:
            break
    final = cut_at_stop("".join(out), stops)[0]
    stream = StreamText(stops)
    sent = [stream.update("".join(out[:k])) for k in range(1, len(out))]
    sent.append(stream.finish(final))
    assert "".join(sent) == final


# ------------------------------------------------------------------------------------------- refusals

BAD_REQUESTS = [  # (path, body, status, param)
    ("/v1/chat/completions", b"[1, 2]", 400, None),
    ("/v1/chat/completions", b"{not json", 400, None),
    ("/v1/chat/completions", b"\xff\xfe{}", 400, None),
    ("/v1/chat/completions", b"[" * 100_000, 400, None),
    ("/v1/chat/completions", b"", 400, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ("/v1/chat/completions", {"messages": ["hi"]}, 400, "messages[0]"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": HELLO, "stop": 7}, 400, "stop"),
    ("/v1/chat/completions", {"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": -4}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 2.5}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": "8"}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": True}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": HELLO, "max_tokens": 1e9}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": HELLO, "stream": "yes"}, 400, "stream"),
    ("/v1/chat/completions", {"messages": HELLO, "stream": True, "stream_options": [1]}, 400, "stream_options"),
    ("/v1/chat/completions", {"messages": HELLO, "n": 3}, 400, "n"),
    ("/v1/chat/completions", {"messages": HELLO, "logprobs": True}, 400, "logprobs"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": 123}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, -5]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "\ud800 hi"}, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi", "echo": True}, 400, "echo"),
    ("/v1/completions", {"prompt": "hi " * 2000, "max_tokens": 4}, 400, "max_tokens"),
    ("/v1/embeddings", {"input": "hi"}, 404, None),
]


def _body(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def test_bad_requests_get_openai_error_objects(engine, capfd):
    with serving(engine) as srv:
        for path, body, status, param in BAD_REQUESTS:
            code, _, data = parse_http(raw_request(srv, http_post(path, _body(body))))
            assert_error(code, json.loads(data), status, param)
        code, payload = post_json(srv, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 10**9})
        assert payload["error"]["code"] == "context_length_exceeded" and "1024" in payload["error"]["message"]
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /v1/models HTTP/2.0\r\n\r\n", 505),
    (b"DELETE /v1/models HTTP/1.1\r\n\r\n", 501),
    (b"GET /v1/models HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"GET /nowhere HTTP/1.1\r\n\r\n", 404),
    (b"GET /v1/models/other HTTP/1.1\r\n\r\n", 404),
    (b"GET /v1/chat/completions HTTP/1.1\r\n\r\n", 405),
    (b"POST /v1/models HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405),
    (b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
    (b"POST /v1/completions HTTP/1.1\r\nContent-Length: -3\r\n\r\n", 400),
    (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}", 400),  # body cut short
])
def test_http_level_errors_are_error_objects_too(server, request_bytes, status):
    code, headers, data = parse_http(raw_request(server, request_bytes, half_close=True))
    assert headers["content-type"] == "application/json"
    assert_error(code, json.loads(data), status)


def test_models_endpoint_reports_the_context(engine):
    with serving(engine, max_length=512) as srv:
        status, _, data = parse_http(raw_request(srv, b"GET /v1/models HTTP/1.1\r\n\r\n"))
        card = json.loads(data)["data"][0]
        assert status == 200 and card["id"] == "tiny" and card["max_model_len"] == 512
        status, _, data = parse_http(raw_request(srv, b"GET /v1/models/tiny HTTP/1.1\r\n\r\n"))
        assert status == 200 and json.loads(data)["id"] == "tiny"
        code, payload = post_json(srv, "/v1/completions", {"prompt": "w1 " * 500, "max_tokens": 20})
        assert_error(code, payload, 400, "max_tokens")


# ----------------------------------------------------------------------------------------- resilience


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_kib() -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(r"VmHWM:\s+(\d+)", fh.read()).group(1))


def test_a_50_mb_body_is_refused_without_being_read(engine):
    """413 arrives while the client is still sending, and the server's peak memory does not grow by the body."""
    with serving(engine) as srv:
        size = 50 << 20
        head = f"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {size}\r\n\r\n".encode()
        block = b'{"a": "' + b"x" * (1 << 20)
        with socket.create_connection(srv.server_address[:2], timeout=20) as s:
            s.sendall(head + block)  # 1 MiB of 50: the answer must not wait for the rest
            status, _, data = parse_http(read_all(s))
        assert_error(status, json.loads(data), 413)
        assert str(srv.max_body) in json.loads(data)["error"]["message"]

        reset = _reset_peak()
        before = _peak_kib()
        with socket.create_connection(srv.server_address[:2], timeout=20) as s:
            sender = threading.Thread(target=lambda: _send_quietly(s, head, block, size), daemon=True)
            sender.start()
            answer = read_all(s)
            sender.join(10)
        status, _, data = parse_http(answer)
        assert_error(status, json.loads(data), 413)
        if reset:
            assert _peak_kib() - before < 20 * 1024, "the server kept the refused body in memory"
        assert quick_answer(srv) < 1.0


def _send_quietly(sock: socket.socket, head: bytes, block: bytes, size: int) -> None:
    try:
        sock.sendall(head)
        for _ in range(size // len(block)):
            sock.sendall(block)
    except OSError:
        pass


def test_abandoned_generations_stop_and_the_queue_is_bounded(long_engine):
    """A 1e9-token request is refused; a client that leaves a nearly context-long generation (plain or
    streamed) frees the model at once; requests beyond the queue get 503; then a normal request is quick."""
    big = json.dumps({"messages": HELLO, "max_tokens": (1 << 20) - 100}).encode()
    with serving(long_engine, max_queue=1) as srv:
        code, payload = post_json(srv, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 1e9})
        assert_error(code, payload, 400, "max_tokens")
        assert payload["error"]["code"] == "context_length_exceeded"

        first = socket.create_connection(srv.server_address[:2], timeout=20)
        first.sendall(http_post("/v1/chat/completions", big))
        wait_for(srv.gate.run.locked)
        second = socket.create_connection(srv.server_address[:2], timeout=20)  # waits in the queue
        second.sendall(http_post("/v1/chat/completions", big))
        wait_for(lambda: srv.gate.admitted == 2)
        status, headers, data = parse_http(raw_request(srv, http_post("/v1/chat/completions", big)))
        assert_error(status, json.loads(data), 503)
        assert headers["retry-after"] == "1"
        first.close()
        second.close()
        wait_for(lambda: not srv.gate.run.locked() and srv.gate.admitted == 0, timeout=2)
        assert quick_answer(srv) < 1.0

        stream = json.dumps({"messages": HELLO, "max_tokens": (1 << 20) - 100, "stream": True}).encode()
        with socket.create_connection(srv.server_address[:2], timeout=20) as s:
            s.sendall(http_post("/v1/chat/completions", stream))
            seen = b""
            while seen.count(b"data: ") < 5:
                seen += s.recv(4096)
        wait_for(lambda: not srv.gate.run.locked(), timeout=2)
        assert quick_answer(srv) < 1.0


def test_a_hundred_malformed_requests_then_a_normal_one(engine):
    with serving(engine) as srv:
        for i in range(100):
            path, body, status, _ = BAD_REQUESTS[i % len(BAD_REQUESTS)]
            code, _, data = parse_http(raw_request(srv, http_post(path, _body(body))))
            assert code == status and set(json.loads(data)["error"]) == ERROR_KEYS
        assert quick_answer(srv) < 1.0


# --------------------------------------------------------------------------------------- random requests

_json = st.recursive(st.none() | st.booleans() | st.integers(-10, 10**12) | st.floats(allow_nan=True) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=8)
_options = {"max_tokens": st.integers(1, 12), "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=4),
            "stream": st.booleans(), "stream_options": st.just({"include_usage": True}), "temperature": st.floats(0, 2),
            "n": st.just(1), "model": st.text(max_size=8)}
_messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]),
                                            "content": st.text(max_size=30)}), min_size=1, max_size=3)
_valid = (st.fixed_dictionaries({"messages": _messages}, optional=_options).map(lambda d: ("/v1/chat/completions", d))
          | st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=30)}, optional=_options)
          .map(lambda d: ("/v1/completions", d)))
_field = st.sampled_from(["messages", "prompt", "max_tokens", "max_completion_tokens", "stop", "stream", "stream_options",
                          "n", "logprobs", "messages"])
_path = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/models", "/completions", "/x"])


@st.composite
def _requests(draw: Any) -> tuple[str, str, bytes]:
    """(method, path, body): valid requests, valid ones with one field made random, and random bodies."""
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "json", "bytes"]))
    path, body = draw(_valid)
    if kind == "mutated":
        body[draw(_field)] = draw(_json)
    if kind in ("json", "bytes"):
        path = draw(_path)
    raw = draw(st.binary(max_size=64)) if kind == "bytes" else json.dumps(draw(_json) if kind == "json" else body).encode()
    return draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT"])), path, raw


_token = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_header_value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


def _check_response(status: int, headers: dict[str, str], data: bytes) -> None:
    assert 200 <= status < 600 and not 300 <= status < 400
    if headers.get("content-type") == "text/event-stream":
        assert status == 200 and data.endswith(b"data: [DONE]\n\n")
        return
    payload = json.loads(data)
    if status >= 400:
        assert set(payload) == {"error"} and set(payload["error"]) == ERROR_KEYS
    else:
        assert payload.get("choices") or payload.get("data")


@pytest.fixture(scope="module")
def fuzz_server(engine):
    with serving(engine, max_length=48) as srv:  # short generations keep the test quick
        yield srv


@settings(max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=_requests(), headers=st.dictionaries(_token, _header_value, max_size=4),
       length=st.sampled_from(["right"] * 7 + ["missing", "garbage", "longer"]))
def test_random_requests_get_well_formed_answers(fuzz_server, request, headers, length):
    """Every answer is a well-formed HTTP response (2xx, 4xx or 5xx; an error object unless 2xx), and the
    server still answers the next request."""
    method, path, body = request
    headers = {k: v for k, v in headers.items() if k not in ("content-length", "transfer-encoding")}
    lengths = {"right": str(len(body)), "missing": None, "garbage": "12x", "longer": str(len(body) + 5)}
    if lengths[length] is not None:
        headers["Content-Length"] = lengths[length]
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    data = raw_request(fuzz_server, head.encode() + body, half_close=length == "longer")
    _check_response(*parse_http(data))
    assert parse_http(raw_request(fuzz_server, b"GET /v1/models HTTP/1.1\r\n\r\n"))[0] == 200


def test_the_fuzzed_server_still_answers(fuzz_server):
    assert quick_answer(fuzz_server) < 1.0


# ----------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("flags, words", [
    (["--port", "70000"], "--port"), (["--max-queue", "-1"], "--max-queue"), (["--max-body", "lots"], "--max-body"),
    (["--max-length", "0"], "length"),
])
def test_serve_flags_are_checked_before_loading(flags, words, capsys):
    code = main(["serve", "no-such-model", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0]
