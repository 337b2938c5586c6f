"""Property-based bad input over every command's argument parser (hypothesis).

Random argv for every (sub)command of :func:`longseq.cli.build_parser`: a random subset of its flags (required
ones always), each with a random value (nan, inf, negative, huge, empty, non-numeric, fractional lengths, valid
choices, paths that are files, folders, missing or under a file) goes through :func:`longseq.cli.main` in process.
The property: the command ends with exit code 0 or 2 (argparse's own exits included), a 2 from longseq prints
exactly one ``longseq: error:`` line, and nothing raises.

Expensive work is made unreachable, not skipped: models are a tiny checkpoint, missing paths or an offline Hub
id (never the default model), and the first model forward, Python child process, server loop or lab pipeline
raises :class:`ReachedWork` (a ``BaseException``, so no ``except Exception`` swallows it): the input passed every
check before the work, which counts as handled. The run is deterministic (``derandomize``) and bounded by
:data:`BUDGET_S` seconds (``LONGSEQ_FUZZ_BUDGET``); ``LONGSEQ_FUZZ_REPORT=1`` prints the tally (inputs tried,
outcomes, per command) and every unhandled input.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import signal
import socketserver
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longseq import cli

BUDGET_S = float(os.environ.get("LONGSEQ_FUZZ_BUDGET", "30"))  # seconds of inputs; more finds more
MAX_EXAMPLES = int(os.environ.get("LONGSEQ_FUZZ_EXAMPLES", "400"))

GENERIC = ["nan", "inf", "-inf", "NaN", "-1", "0", "1", "2", "7", "-0.5", "0.5", "1.5", "1e9", "-1e9", "1e308",
           "99999999999999999999", "", " ", "abc", "1000.7", "1k", "4k", "1.3k", "0k", "-4k", "1m", "16m", "1,2",
           "2k,2k", ",", "none", "quick", "default", "yarn", "pi", "passkey"]
TYPED = {int: ["-1", "0", "1", "2", "7", "-5", "99999999999999999999"],
         float: ["nan", "inf", "-inf", "-1", "0", "0.5", "1.5", "1e9", "1e308", "-0.5", "1e-12"]}
MODEL_DESTS = ("model", "tokenizer")
PATH_DESTS = ("out", "db", "memory", "config", "data", "calib", "heldout", "ppl_text", "file", "inputs")
# Never drawn: with a server URL the OpenAI client retries an unreachable server for 40-100 s before its
# one-line error, which would spend the whole budget on one input.
SKIP_DESTS = ("base_url", "api_model")


class ReachedWork(BaseException):
    """Raised where the expensive work would start (a model forward, a child process, a server loop)."""


def _reached(*args: Any, **kwargs: Any) -> None:
    raise ReachedWork()


_POPEN = subprocess.Popen


def _popen(cmd: Any, *args: Any, **kwargs: Any) -> Any:
    """A Python child (lab's training and eval stages) is work; anything else (ldconfig for ctypes) runs."""
    first = cmd[0] if isinstance(cmd, (list, tuple)) and cmd else cmd
    if "python" in Path(str(first)).name:
        raise ReachedWork()
    return _POPEN(cmd, *args, **kwargs)


@pytest.fixture(scope="module")
def pools(tmp_path_factory, make_tiny_llama) -> dict[str, Any]:
    """Paths of every kind the values draw from (built once)."""
    root = tmp_path_factory.mktemp("fuzz")
    tiny = make_tiny_llama(root / "tiny")
    text = root / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 50)
    jsonl = root / "records.jsonl"
    jsonl.write_text('{"text": "a b c"}\n{"instruction": 1}\n{torn')
    recipe = root / "recipe.yaml"
    recipe.write_text("lr: .nan\nsteps: many\nwarmup_steps: -3\n")
    empty = root / "empty-dir"
    empty.mkdir()
    return {
        "root": root,
        "model": [str(tiny), str(root / "missing-model"), str(text), "nobody/nothing", "", str(empty), "smolm2"],
        "path": [str(text), str(jsonl), str(recipe), str(empty), str(root / "missing" / "x"), str(text / "x"),
                 "", "NEW"],
        "host": ["127.0.0.1", "", "256.1.1.1"],
    }


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], list]:
    """(sub)command path -> its actions (help excluded), for every leaf of the parser tree."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]}
    out: dict[tuple[str, ...], list] = {}
    for action in subs:
        for name, sub in action.choices.items():
            out.update(_commands(sub, path + (name,)))
    return out


def _value(data: Any, action: argparse.Action, pools: dict[str, Any], workdir: Path) -> str:
    if action.dest in MODEL_DESTS:
        return data.draw(st.sampled_from(pools["model"]))
    if action.dest in PATH_DESTS:
        value = data.draw(st.sampled_from(pools["path"]))
        return str(workdir / f"new-{action.dest}") if value == "NEW" else value
    if action.dest == "host":
        return data.draw(st.sampled_from(pools["host"]))
    choices = [str(c) for c in action.choices] if action.choices else []
    return data.draw(st.sampled_from(GENERIC + choices * 3 + TYPED.get(action.type, []) * 3))


def draw_argv(data: Any, commands: dict, pools: dict[str, Any], workdir: Path) -> list[str]:
    """A random command line: the command path, every required flag and positional, a few optional flags."""
    path = data.draw(st.sampled_from(sorted(commands)))
    actions = commands[path]
    positionals = [a for a in actions if not a.option_strings]
    optional = [a for a in actions if a.option_strings and not a.required and a.dest not in SKIP_DESTS]
    chosen = [a for a in actions if a.option_strings and a.required]
    chosen += data.draw(st.lists(st.sampled_from(optional), max_size=5, unique_by=lambda a: a.dest)) if optional else []
    if "model" not in {a.dest for a in chosen} and any(a.dest == "model" and a.option_strings for a in optional):
        chosen.append(next(a for a in optional if a.dest == "model"))  # never the default (real) model
    argv = list(path)
    for action in chosen:
        argv.append(data.draw(st.sampled_from(action.option_strings)))
        if action.nargs != 0:
            argv.append(_value(data, action, pools, workdir))
    for action in positionals:  # positionals last: a flag value may never be read as one
        argv.append(_value(data, action, pools, workdir))
    return argv


@contextlib.contextmanager
def _sandbox(workdir: Path):
    """cwd in ``workdir`` (relative default outputs land there), stdin at EOF, the expensive work unreachable,
    and process-wide settings a command may change (threads, signal handlers, cwd) restored afterwards."""
    import torch

    threads, cwd = torch.get_num_threads(), os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    env = dict(os.environ)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(torch.nn.Module, "__call__", _reached))
        stack.enter_context(mock.patch.object(subprocess, "Popen", _popen))
        stack.enter_context(mock.patch.object(socketserver.BaseServer, "serve_forever", _reached))
        import longseq.lab.run as lab_run

        if hasattr(lab_run, "run_stages"):  # the lab's data preparation is work too (minutes, in process)
            stack.enter_context(mock.patch.object(lab_run, "run_stages", _reached))
        stack.enter_context(mock.patch.object(sys, "stdin", io.StringIO("")))
        os.chdir(workdir)
        try:
            yield
        finally:
            os.chdir(cwd)
            torch.set_num_threads(threads)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            os.environ.clear()
            os.environ.update(env)


def run_argv(argv: list[str], workdir: Path) -> tuple[str, str]:
    """(outcome, detail): outcome ``exit-0`` / ``exit-2`` / ``argparse-N`` / ``reached-work`` are handled;
    anything else (another exit code, an exception, a 2 without exactly one error line) is not."""
    err, out = io.StringIO(), io.StringIO()
    try:
        with _sandbox(workdir), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = cli.main(argv)
    except SystemExit as exc:  # argparse: bad flag or value (2), --help (0)
        code = exc.code if isinstance(exc.code, int) else 2
        return (f"argparse-{code}", err.getvalue()[-300:]) if code in (0, 2) else (f"bad-exit-{code}", "")
    except ReachedWork:
        return "reached-work", ""
    except BaseException as exc:  # noqa: BLE001 - the property: nothing else may escape
        return f"raised {type(exc).__name__}", f"{type(exc).__name__}: {exc}"[:300]
    text = err.getvalue()
    if "Traceback" in text:
        return "traceback-printed", text[-300:]
    if code == 2:
        lines = [line for line in text.splitlines() if line.startswith("longseq: error:")]
        return ("exit-2", lines[0]) if len(lines) == 1 else ("exit-2-without-one-error-line", text[-300:])
    return (f"exit-{code}", "") if code == 0 else (f"bad-exit-{code}", text[-300:])


HANDLED = ("exit-0", "exit-2", "argparse-0", "argparse-2", "reached-work")


def test_random_argv_never_escapes_as_a_traceback(pools):
    commands = _commands(cli.build_parser())
    results: list[tuple[list[str], str, str]] = []
    timings: list[tuple[float, list[str]]] = []
    start = time.monotonic()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def fuzz(data: Any) -> None:
        workdir = Path(tempfile.mkdtemp(dir=pools["root"], prefix="run-"))
        argv = draw_argv(data, commands, pools, workdir)  # drawn every time: hypothesis replays the same draws
        if time.monotonic() - start > BUDGET_S:
            return
        t0 = time.monotonic()
        outcome, detail = run_argv(argv, workdir)
        results.append((argv, outcome, detail))
        timings.append((time.monotonic() - t0, argv))

    fuzz()
    tally = collections.Counter(outcome for _, outcome, _ in results)
    failures = [r for r in results if r[1] not in HANDLED]
    if os.environ.get("LONGSEQ_FUZZ_REPORT"):
        per_command = collections.Counter(" ".join(argv[:2] if argv[0] == "memory" else argv[:1])
                                          for argv, _, _ in results)
        print(f"\nfuzz: {len(results)} inputs, {len(results) - len(failures)} handled; {dict(tally)}")
        print(f"per command: {dict(per_command)}")
        print("slowest:", [(round(t, 1), " ".join(a)) for t, a in sorted(timings, reverse=True)[:8]])
        for argv, outcome, detail in failures:
            print(f"UNHANDLED {outcome}: longseq {' '.join(repr(a) if ' ' in a or not a else a for a in argv)}"
                  f"\n    {detail}")
    assert len(results) >= 20, f"only {len(results)} inputs in {BUDGET_S} s"
    assert len(tally) >= 3  # not one outcome for everything: the inputs really vary
    assert not failures, "\n".join(f"{o}: {argv} -> {d}" for argv, o, d in failures[:10])


def test_the_harness_sees_a_traceback_and_an_exit_1(pools, tmp_path, monkeypatch):
    """The property can fail: an escaping exception and a wrong exit code are both reported."""
    monkeypatch.setattr(cli, "tune_process", lambda wait="passive": (_ for _ in ()).throw(ValueError("boom")))
    assert run_argv(["info", pools["model"][0]], tmp_path) == ("raised ValueError", "ValueError: boom")
    monkeypatch.setattr(cli, "tune_process", lambda wait="passive": None)
    monkeypatch.setattr(cli, "main", lambda argv: 1)
    assert run_argv(["info"], tmp_path)[0] == "bad-exit-1"
