"""Run folders across commands: each records its kind and another command refuses it; one run at a time
(two real processes); a lab's training child dies with the lab."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from longseq.cli import main
from longseq.core.errors import UserError
from longseq.core.fsutil import read_jsonl
from longseq.core.rundir import KIND_MARKER, claim_kind, lock_run_folder, run_kind


def _err(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    """One folder of each kind, as its command leaves it (marker and signature files)."""
    made = {}
    for kind, files in {"eval": {"run.json": '{"model": "m", "prompt_format": "raw"}', "samples.jsonl": ""},
                        "lab": {"lab.json": '{"size": "test"}'},
                        "lengthgen": {"runs.jsonl": ""},
                        "train": {"run.json": '{"fingerprint": {}}', "metrics.jsonl": ""}}.items():
        folder = tmp_path / kind
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        claim_kind(folder, kind)
        made[kind] = folder
    return made


def test_every_folder_records_its_kind_and_old_folders_are_recognized_by_their_files(folders, tmp_path):
    for kind, folder in folders.items():
        assert json.loads((folder / KIND_MARKER).read_text()) == {"kind": kind}
        (folder / KIND_MARKER).unlink()
        assert run_kind(folder) == kind  # written before the marker existed
    assert run_kind(tmp_path / "missing") is None and run_kind(tmp_path) is None
    with pytest.raises(UserError, match=r"holds a longseq lab run, not a eval run; choose another --out"):
        claim_kind(folders["lab"], "eval")


@pytest.mark.parametrize("kind,argv", [
    ("eval", ["lab", "--size", "test", "--out"]),
    ("lab", ["eval", "MODEL", "--lengths", "512", "--samples", "1", "--no-progress", "--out"]),
    ("lengthgen", ["eval", "MODEL", "--lengths", "512", "--samples", "1", "--no-progress", "--out"]),
    ("train", ["eval", "MODEL", "--lengths", "512", "--samples", "1", "--no-progress", "--out"]),
    ("eval", ["lengthgen", "--preset", "quick", "--out"]),
    ("eval", ["train", "MODEL", "--data", "DATA", "--seq-len", "64", "--steps", "1", "--method", "full", "--rope", "none", "--out"]),
])
def test_a_command_refuses_the_folder_of_another(folders, tiny_llama, tmp_path, capsys, kind, argv):
    data = tmp_path / "data.txt"
    data.write_text("some words " * 200)
    folder = folders[kind]
    before = _snapshot(folder)
    argv = [str(tiny_llama) if a == "MODEL" else str(data) if a == "DATA" else a for a in argv]
    assert main([*argv, str(folder)]) == 2
    err = _err(capsys)
    assert len(err) == 1 and f"holds a longseq {kind} run, not a {argv[0]} run; choose another --out" in err[0], err
    assert _snapshot(folder) == before  # nothing mixed in


_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from longseq.core.rundir import lock_run_folder
    with lock_run_folder(sys.argv[1]):
        Path(sys.argv[2]).write_text("held")
        time.sleep(60)
""")


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_eval_into_a_folder_in_use_is_refused(tiny_llama, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out), str(tmp_path / "held")])
    try:
        _wait_for(tmp_path / "held")
        code = main(["eval", str(tiny_llama), "--lengths", "512", "--samples", "1", "--no-progress", "--out", str(out)])
        err = _err(capsys)
        assert code == 2 and len(err) == 1 and f"another longseq run is using {out}" in err[0], err
        assert not (out / "samples.jsonl").exists() and not (out / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    with lock_run_folder(out):  # the kernel dropped the killed holder's lock: the folder is free again
        pass


def test_two_real_evals_into_one_folder_never_duplicate_a_sample(tiny_llama, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "longseq", "eval", str(tiny_llama), "--tasks", "passkey",
           "--lengths", "512", "--samples", "4", "--no-progress", "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    print("exit codes", codes)
    # either the second one found the folder in use (one-line error), or it started after the first had
    # finished and resumed with nothing left to do
    assert codes in ([0, 2], [0, 0]), results
    for code, err in results:
        if code == 2:
            assert err.strip().splitlines()[-1].startswith(f"longseq: error: another longseq run is using {out}")
    keys = [(r["task"], r["length"], r["index"]) for r in read_jsonl(out / "samples.jsonl")]
    assert sorted(keys) == [("passkey", 512, i) for i in range(4)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and [r["n"] for r in summary["results"]] == [4]


# ------------------------------------------------------------------------------- the lab's training child

_LAB_PARENT = textwrap.dedent("""
    import sys
    from longseq.lab.run import _sigterm_as_exit
    from longseq.lab.stages import run_child
    # the child writes its pid, starts a grandchild in its group and sleeps
    child = ("import os, subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
             "open(sys.argv[1], 'w').write(f'{os.getpid()} {g.pid}'); time.sleep(120)")
    with _sigterm_as_exit():
        run_child([sys.executable, "-c", child, sys.argv[1]], None)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _gone(pids: list[int], timeout: float = 20.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_training_child_dies_with_the_lab(tmp_path, sig):
    pids_file = tmp_path / "pids"
    parent = subprocess.Popen([sys.executable, "-c", _LAB_PARENT, str(pids_file)])
    try:
        _wait_for(pids_file)
        time.sleep(0.2)
        child, grandchild = map(int, pids_file.read_text().split())
        assert _alive(child) and _alive(grandchild)
        os.kill(parent.pid, sig)
        parent.wait(30)
        # SIGKILL: the kernel kills the child (PDEATHSIG); SIGTERM: the lab kills the child's whole group
        assert _gone([child] if sig == signal.SIGKILL else [child, grandchild])
    finally:
        parent.kill()
        parent.wait()
        for pid in map(int, pids_file.read_text().split()) if pids_file.exists() else ():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
