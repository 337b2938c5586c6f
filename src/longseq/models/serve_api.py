"""The OpenAI wire format of ``longseq serve``: request checks, response bodies and stream chunks.

Every request is checked here before any generation. What a client got wrong is raised as
:class:`ApiError`, which the server answers with the OpenAI error object
``{"error": {"message", "type", "param", "code"}}``. Supported fields: ``prompt`` (a string, one string in a
list, or token ids) or ``messages`` (roles system, developer, user, assistant; content a string or text parts),
``max_tokens`` / ``max_completion_tokens``, ``stop`` (a string or up to 4), ``stream`` and
``stream_options.include_usage``. Sampling fields (``temperature``, ``top_p``, ...) are accepted and ignored:
decoding is greedy. Fields that would change the answer's shape (``n`` > 1, ``logprobs``, ``echo``, tools)
are refused rather than silently ignored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import unquote

from longseq.core.errors import one_line
from longseq.models.generation import Generation, chat_text

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4  # as the OpenAI API
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context
BYTES_PER_TOKEN = 16  # default body cap per context token (JSON-escaped text is ~4-12 bytes a token)
MIN_BODY = 1 << 20
# Fields whose non-empty value asks for something a greedy single-answer server cannot give.
UNSUPPORTED = ("echo", "logprobs", "top_logprobs", "suffix", "tools", "functions", "tool_choice", "function_call")


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and the OpenAI error object of :meth:`payload`."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code

    def payload(self) -> dict[str, Any]:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ApiRequest:
    """A checked request of endpoint ``kind`` ("chat" or "text")."""

    kind: str
    prompt: str | list[int]  # text to encode (``fmt`` says how) or token ids
    fmt: str  # "raw" or "chat" (see :func:`longseq.models.generation.encode`), or "ids" for token ids
    max_tokens: int | None  # None: the rest of the context
    stop: list[str]
    stream: bool
    include_usage: bool


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _invalid(param: str, expected: str, value: Any) -> ApiError:
    shown = f" ({one_line(repr(value), 30)})" if isinstance(value, (int, float, str)) and not isinstance(value, bool) else ""
    return ApiError(f"'{param}' must be {expected}, got {_type_name(value)}{shown}", param=param, code="invalid_type")


def _positive_int(body: dict[str, Any], param: str) -> int | None:
    """``body[param]`` as an int >= 1 (integral JSON numbers such as ``1e9`` included), or None when absent."""
    value = body.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise _invalid(param, "an integer", value)
    if value < 1:
        raise ApiError(f"'{param}' must be at least 1, got {value:g}", param=param, code="integer_below_min_value")
    return int(value)


def _stop(body: dict[str, Any]) -> list[str]:
    value = body.get("stop")
    stops = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _invalid("stop", "a string or a list of strings", value)
    if len(stops) > MAX_STOP:
        raise ApiError(f"'stop' takes at most {MAX_STOP} strings, got {len(stops)}", param="stop")
    return [s for s in stops if s]


def _flag(body: dict[str, Any], param: str, default: bool = False) -> bool:
    value = body.get(param, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(param, "a boolean", value)
    return value


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _invalid("stream_options", "an object", options)
    return _flag(options, "include_usage") if "include_usage" in options else False


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for param in UNSUPPORTED:
        if body.get(param):
            raise ApiError(f"'{param}' is not supported by longseq serve (greedy text only); remove it", param=param,
                           code="unsupported_parameter")
    for param in ("n", "best_of"):
        if body.get(param) not in (None, 1):
            raise ApiError(f"'{param}' must be 1: decoding is greedy, so every answer would be the same", param=param,
                           code="unsupported_parameter")


def _content(message: dict[str, Any], where: str) -> str:
    """A message's text: a string, or the text parts of a content array joined by newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"] for p in content)
    raise _invalid(f"{where}.content", 'a string or a list of {"type": "text", "text": ...} parts', content)


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("'messages' must be a non-empty array of {role, content} objects", param="messages",
                       code="invalid_type" if not isinstance(messages, list) else "empty_array")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(where, "an object", message)
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(f"'{where}.role' must be one of {', '.join(ROLES)}, got {one_line(repr(role), 40)}",
                           param=f"{where}.role", code="invalid_value")
        # developer messages are the newer name of system messages; chat templates know "system"
        out.append({"role": "system" if role == "developer" else role, "content": _content(message, where)})
    return out


def _chat_prompt(body: dict[str, Any], tokenizer: Any) -> tuple[str, str]:
    messages = _messages(body)
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError("this model has no chat template; send a prompt to /v1/completions instead", param="messages")
    try:
        return chat_text(tokenizer, messages), "chat"
    except Exception as err:  # jinja2 errors of the template (e.g. roles that must alternate)
        raise ApiError(f"the model's chat template refused these messages: {one_line(err, 200)}",
                       param="messages") from None


def _text_prompt(body: dict[str, Any], tokenizer: Any) -> tuple[str | list[int], str]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, "raw"
    vocab = len(tokenizer)
    if isinstance(prompt, list) and prompt and all(type(t) is int and 0 <= t < vocab for t in prompt):
        return prompt, "ids"
    raise ApiError(f"'prompt' must be a string or a list of token ids in [0, {vocab}) (one prompt per request), "
                   f"got {_type_name(prompt)}", param="prompt", code="invalid_type")


PROMPTS: dict[str, Callable[[dict[str, Any], Any], tuple[Any, str]]] = {"chat": _chat_prompt, "text": _text_prompt}
ENDPOINTS = {"/chat/completions": "chat", "/completions": "text"}  # see clean_path


def clean_path(path: str) -> str:
    """``path`` without query, trailing slash, percent-escapes or the ``/v1`` prefix (both forms are served)."""
    return unquote(path.split("?", 1)[0]).rstrip("/").removeprefix("/v1")


def endpoint(path: str) -> str | None:
    """The endpoint kind ("chat" or "text") of a POST ``path``, or None."""
    return ENDPOINTS.get(clean_path(path))


def no_route(method: str, path: str) -> ApiError:
    """405 for a known path asked with the wrong method, else 404."""
    clean = clean_path(path)
    if clean in ENDPOINTS or clean == "/models" or clean.startswith("/models/"):
        return ApiError(f"{method} is not allowed on {one_line(path, 80)}", 405, code="method_not_allowed")
    return ApiError(f"unknown path {one_line(path, 80)}; use /v1/models, /v1/completions or /v1/chat/completions",
                    404, code="unknown_url")


def _is_unicode(text: str) -> bool:
    """False for a lone surrogate (valid in JSON, refused by tokenizers)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def parse_request(kind: str, body: Any, tokenizer: Any) -> ApiRequest:
    """Check a decoded JSON ``body`` for endpoint ``kind``; raise :class:`ApiError` on the first problem."""
    if not isinstance(body, dict):
        raise ApiError(f"the request body must be a JSON object, got {_type_name(body)}", code="invalid_type")
    _refuse_unsupported(body)
    if kind == "chat":
        max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    else:
        max_tokens = _positive_int(body, "max_tokens") or COMPLETION_MAX_TOKENS
    stop, stream, include_usage = _stop(body), _flag(body, "stream"), _include_usage(body)
    prompt, fmt = PROMPTS[kind](body, tokenizer)
    if isinstance(prompt, str) and not _is_unicode(prompt):
        raise ApiError("the prompt is not valid Unicode text (it holds a lone surrogate such as \\ud800)",
                       param="messages" if kind == "chat" else "prompt", code="invalid_value")
    return ApiRequest(kind, prompt, fmt, max_tokens, stop, stream, include_usage)


def completion_budget(req: ApiRequest, prompt_tokens: int, context: int) -> int:
    """The number of tokens to generate: ``req.max_tokens``, or the rest of ``context`` when it is None.

    Raises :class:`ApiError` when the prompt is empty or prompt + completion exceed ``context``.
    """
    prompt_param = "messages" if req.kind == "chat" else "prompt"
    if prompt_tokens == 0:
        raise ApiError("the prompt is empty (0 tokens); send some text", param=prompt_param, code="empty_prompt")
    budget = max(context - prompt_tokens, 1) if req.max_tokens is None else req.max_tokens
    if prompt_tokens + budget > context:
        raise ApiError(f"this model's maximum context length is {context} tokens, but {prompt_tokens + budget} were "
                       f"requested ({prompt_tokens} in the prompt, {budget} for the completion); shorten the prompt "
                       "or max_tokens, or start the server with a larger --max-length",
                       param=prompt_param if req.max_tokens is None else "max_tokens", code="context_length_exceeded")
    return budget


# ---------------------------------------------------------------------------------------------- responses

OBJECTS = {"chat": ("chatcmpl", "chat.completion", "chat.completion.chunk"),
           "text": ("cmpl", "text_completion", "text_completion")}


def response_id(kind: str) -> str:
    return f"{OBJECTS[kind][0]}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_payload(kind: str, model: str, gen: Generation, prompt_tokens: int) -> dict[str, Any]:
    """The whole (non-streamed) response body of a chat or text completion."""
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": gen.text}}
    else:
        choice = {"index": 0, "text": gen.text}
    choice.update(logprobs=None, finish_reason=gen.finish_reason)
    return {"id": response_id(kind), "object": OBJECTS[kind][1], "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage(prompt_tokens, gen.new_tokens)}


def chunk_payload(kind: str, rid: str, model: str, text: str | None, finish: str | None = None,
                  role: bool = False) -> dict[str, Any]:
    """One server-sent event of a stream: ``text`` (None in the final chunk) and the finish reason once known.

    Chat streams open with a chunk whose delta carries the role, and close with an empty delta, as OpenAI's.
    """
    if kind == "chat":
        delta: dict[str, str] = {"role": "assistant", "content": ""} if role else {}
        if text is not None and not role:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta}
    else:
        choice = {"index": 0, "text": text or ""}
    choice.update(logprobs=None, finish_reason=finish)
    return {"id": rid, "object": OBJECTS[kind][2], "created": int(time.time()), "model": model, "choices": [choice]}


class StreamText:
    """Turns the growing decoded output into stream pieces whose concatenation is the final answer.

    A piece is released only when no later token can change it: the last ``len(stop) - 1`` characters stay
    back (they may start a stop string, which the final text cuts off; :func:`cut_at_stop` only ever cuts
    after text it has seen) and so does an incomplete UTF-8 character (decoded as U+FFFD until its last
    byte arrives).
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.sent = ""

    def update(self, text: str) -> str:
        """The new piece to send given the output ``text`` decoded so far (may be empty)."""
        if not text.startswith(self.sent):  # decoding changed released text: wait for the final answer
            return ""
        safe = max(len(text) - self.hold, len(self.sent))
        bad = text.find("\ufffd", len(self.sent), safe)
        piece = text[len(self.sent):safe if bad < 0 else bad]
        self.sent += piece
        return piece

    def finish(self, final: str) -> str:
        """The last piece: whatever of the final answer ``final`` was not sent yet."""
        piece = final[len(self.sent):] if final.startswith(self.sent) else ""
        self.sent += piece
        return piece
