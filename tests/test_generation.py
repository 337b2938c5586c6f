"""The LLM I/O layer of ``longseq.models``: the greedy loop, the repetition penalty, the stop rule, chat
encoding and the OpenAI client's one-line errors (tiny random Llama with SmolLM2's tokenizer)."""

from __future__ import annotations

import socket

import pytest
import torch

from longseq.core.errors import UserError
from longseq.memory.llm import TransformersChat
from longseq.models.generation import LocalLM, cut_at_stop, repetition_penalized
from longseq.models.loading import load_model
from longseq.models.openai_client import OpenAIClient

MESSAGES = [{"role": "user", "content": "My dog is called Biscuit. What is my dog's name?"}]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return load_model(str(tiny_llama), dtype="float32")


class GeneratedOnlyPenalty:
    """Reference: the logits processor the SCM agent passed to ``model.generate`` before the shared loop."""

    def __init__(self, prompt_len: int, penalty: float) -> None:
        self.prompt_len, self.penalty = prompt_len, penalty

    def __call__(self, input_ids, scores):
        gen = input_ids[:, self.prompt_len:]
        if gen.shape[1] == 0:
            return scores
        picked = scores.gather(1, gen)
        picked = picked.where(picked < 0, picked / self.penalty).where(picked >= 0, picked * self.penalty)
        return scores.scatter(1, gen, picked)


def _reference(model, tok, ids: list[int], max_new_tokens: int, penalty: float | None = None) -> list[int]:
    x = torch.tensor([ids])
    procs = [GeneratedOnlyPenalty(len(ids), penalty)] if penalty else None
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tok.eos_token_id, logits_processor=procs)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("chunk_size", [16384, 37, 1])
def test_greedy_loop_matches_generate_with_and_without_chunked_prefill(tiny, chunk_size):
    model, tok = tiny
    lm = LocalLM(model, tok, chunk_size=chunk_size)
    ids = torch.randint(100, 5000, (150,), generator=torch.Generator().manual_seed(1)).tolist()
    ref = _reference(model, tok, ids, 16)
    ref = ref[: next((i for i, t in enumerate(ref) if t in lm.eos_ids), len(ref))]
    gen = lm.generate_ids(ids, 16, stop=())
    assert gen.text == tok.decode(ref, skip_special_tokens=True)
    assert gen.new_tokens == len(ref) and gen.finish_reason == ("length" if len(ref) == 16 else "stop")


def test_repetition_penalty_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 4.0]], dtype=torch.bfloat16)
    out = repetition_penalized(logits, [0, 1, 1, 4], 2.0)
    assert out.dtype == torch.float32
    assert out.tolist() == [[1.0, -2.0, 0.5, -3.0, 2.0]]
    assert repetition_penalized(logits, [], 2.0).tolist() == logits.float().tolist()
    assert repetition_penalized(logits, [0], 1.0).tolist() == logits.float().tolist()


def test_penalized_loop_matches_generate_with_the_old_logits_processor(tiny):
    model, tok = tiny
    lm = LocalLM(model, tok)
    ids = lm.chat_ids(MESSAGES)
    plain = _reference(model, tok, ids, 24)
    ref = _reference(model, tok, ids, 24, penalty=1.3)
    assert ref != plain  # the penalty matters on this prompt: a random model repeats itself
    ref = ref[: next((i for i, t in enumerate(ref) if t in lm.eos_ids), len(ref))]
    assert lm.generate_ids(ids, 24, stop=(), repetition_penalty=1.3).text == tok.decode(ref, skip_special_tokens=True)
    chat = TransformersChat(model, tok)
    assert chat.complete(MESSAGES, max_new_tokens=24) == tok.decode(ref, skip_special_tokens=True).strip()
    assert chat.count_messages(MESSAGES) == len(ids)
    with pytest.raises(ValueError, match="exceeds"):
        chat.complete(MESSAGES, max_new_tokens=chat.context_length)


def test_chat_ids_equal_the_tokenized_chat_template(smol_tokenizer, tiny):
    model, _ = tiny
    enc = smol_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    assert LocalLM(model, smol_tokenizer).chat_ids(MESSAGES) == list(enc["input_ids"])


@pytest.mark.parametrize("text,stop,expected", [
    (" 123.\nline foo", ("\n",), (" 123.", True)),
    ("\n\n 123\nmore", ("\n",), ("\n\n 123", True)),  # leading blank lines are kept, the stop needs output first
    (" 123", ("\n",), (" 123", False)),
    ("a. b\nc", ("\n", ". "), ("a", True)),  # the earliest stop string wins, whatever its order in ``stop``
    ("a\nb. c", (". ", "\n"), ("a", True)),
    ("answer\nmore", (), ("answer\nmore", False)),
    ("answer", ("",), ("answer", False)),  # an empty stop string never matches
    ("\n\n", ("\n",), ("\n\n", False)),
])
def test_stop_rule(text, stop, expected):
    assert cut_at_stop(text, stop) == expected


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_client_errors_are_one_line(chat_server):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    client = OpenAIClient(url, "x", timeout=5)
    for call in (client.check, lambda: client.complete("hi", 2), lambda: client.chat(MESSAGES, 2)):
        with pytest.raises(UserError) as err:
            call()
        assert str(err.value).startswith(f"cannot reach the server at {url}") and "\n" not in str(err.value)
    with chat_server(lambda messages, max_tokens, stop: "(A) yes\nmore", model="served") as live:
        with pytest.raises(UserError) as err:
            OpenAIClient(live, "other").chat(MESSAGES, 2)
        assert str(err.value).startswith(f"server at {live} answered 404: ") and "\n" not in str(err.value)
        gen = OpenAIClient(live, "served").chat(MESSAGES, 2, stop=("\n",))
        assert (gen.text, gen.finish_reason) == ("(A) yes", "stop")
