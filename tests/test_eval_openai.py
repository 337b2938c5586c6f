"""The openai backend against a real OpenAI-compatible HTTP server (``longseq serve``) on loopback."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from longseq.cli import main
from longseq.eval.run import EvalConfig, run_eval


@pytest.fixture(scope="module")
def server(tiny_llama):
    from longseq.models.serve import make_server

    srv = make_server(str(tiny_llama), port=0, dtype="float32", name="tiny")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_server_speaks_the_openai_protocol(server):
    import openai

    client = openai.OpenAI(base_url=server.url, api_key="EMPTY", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    resp = client.completions.create(model="tiny", prompt="The pass key is", max_tokens=5, temperature=0)
    assert isinstance(resp.choices[0].text, str) and resp.usage.prompt_tokens == 4
    assert 1 <= resp.usage.completion_tokens <= 5
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert chat.choices[0].message.role == "assistant"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt=123, max_tokens=3)


def test_openai_backend_matches_the_local_engine(server, tiny_llama, tmp_path):
    """Same prompts, same greedy model: the HTTP backend's outputs equal the in-process engine's."""
    common = dict(model=str(tiny_llama), tasks=["passkey", "lines"], cells=[("none", 512)], samples=2, seed=4)
    remote = run_eval(EvalConfig(out=str(tmp_path / "remote"), backend="openai", base_url=server.url,
                                 api_model="tiny", dtype="float32", **common), progress=False, quiet=True)
    local = run_eval(EvalConfig(out=str(tmp_path / "local"), dtype="float32", **common), progress=False, quiet=True)
    read = lambda p: [json.loads(x) for x in (p / "samples.jsonl").read_text().splitlines()]  # noqa: E731
    r, l = read(tmp_path / "remote"), read(tmp_path / "local")
    assert len(r) == 4
    assert [x["output"] for x in r] == [x["output"] for x in l]
    assert [x["prompt_tokens"] for x in r] == [x["prompt_tokens"] for x in l]
    assert remote["results"] == local["results"]
    assert remote["backend"] == "openai"


def test_server_down_is_a_one_line_error(tiny_llama, tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["eval", str(tiny_llama), "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}/v1",
                 "--lengths", "512", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot reach the server" in err[0]
    assert not (tmp_path / "o").exists()
