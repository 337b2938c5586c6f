"""``longseq export-lm-eval``: longseq's tasks as an lm-evaluation-harness task folder.

For every planned (task, length) cell the folder gets ``longseq_<task>_<length>.yaml`` (a ``generate_until``
task) and ``longseq_<task>_<length>.jsonl`` (its documents: the exact prompt text ``longseq eval`` feeds the
model, the expected answer, the generation budget), plus ``utils.py``, the glue the YAML files name: it loads
the documents from the folder (``custom_dataset``) and scores a generation with longseq's own scorer
(:func:`process_results`). So ``lm_eval --include_path DIR --tasks longseq_passkey_4k`` runs the same prompts
and scoring on any harness backend (hf, vllm, local-completions); the tags ``longseq`` and
``longseq_<task>`` select every exported length at once.

The generation is greedy with no harness stop string (``until: []``; the harness still stops at EOS): the
harness cuts at the first stop string even before any answer text, while ``longseq eval`` skips leading blank
lines (:func:`longseq.models.generation.cut_at_stop`), so the cut is done here, in :func:`process_results`.
Perplexity (``ppl``) is not exported: its windows are token ids, and the harness scores text it re-tokenizes
with its own rolling windows (use its ``wikitext`` task).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from longseq.core.errors import UserError
from longseq.core.fsutil import atomic_dir, atomic_write_text
from longseq.core.tables import fmt_len
from longseq.eval.engine import cut_at_stop, resolve_prompt_format
from longseq.eval.plan import EvalConfig, plan
from longseq.eval.tasks import EVAL_TASKS, GenerationTask, JsonlTask, PlannedSample, RunContext
from longseq.eval.tasks.generate import prompt_builder
from longseq.eval.tasks.jsonl import score_answers

UTILS_HEADER = '"""lm-evaluation-harness glue of the tasks written by `longseq export-lm-eval`'
UTILS_PY = UTILS_HEADER + ''' (needs longseq importable)."""
from pathlib import Path

from longseq.eval.lmeval import doc_to_target, doc_to_text, load_docs, process_results  # noqa: F401


def load(file, **kwargs):
    """The documents of one exported task, read from this folder."""
    return load_docs(Path(__file__).parent / file)
'''

_YAML = """task: {name}
tag:
  - longseq
  - {tag}
custom_dataset: !function utils.load
dataset_kwargs:
  file: {data}
test_split: test
output_type: generate_until
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
process_results: !function utils.process_results
generation_kwargs:
  until: []
  max_gen_toks: {max_new_tokens}
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: score
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def harness_tag(task: str, subtask: str = "") -> str:
    """``longseq_passkey``, ``longseq_ruler``, ``longseq_ruler_niah_single``, ``longseq_<file stem>`` (jsonl)."""
    base = EVAL_TASKS[task].label if isinstance(EVAL_TASKS[task], JsonlTask) else task
    return "longseq_" + re.sub(r"[^a-z0-9]+", "_", f"{base}_{subtask}" if subtask else base, flags=re.I).strip("_").lower()


def harness_name(task: str, subtask: str, length: int) -> str:
    """``longseq_passkey_4k``, ``longseq_ruler_niah_single_4k``, ``longseq_<file stem>_4k`` (jsonl tasks)."""
    return f"{harness_tag(task, subtask)}_{fmt_len(length)}"


def sample_document(ctx: RunContext, sample: PlannedSample) -> dict[str, Any]:
    """One harness document: the prompt text, the generation budget and what the scorer needs."""
    task = EVAL_TASKS[sample.task]
    if isinstance(task, JsonlTask):
        rec, _, text, tokens = task.prompt(ctx, sample)
        expected: Any = rec.answers
        budget, metric = rec.max_new_tokens, rec.metric
    else:
        gen = task.subtask(sample.subtask) if hasattr(task, "subtask") else task
        if not isinstance(gen, GenerationTask):
            raise UserError(f"task '{sample.task}' cannot be exported to lm-evaluation-harness (it scores "
                            "log-likelihoods of token windows, not generations); drop it from --tasks")
        sized = prompt_builder(ctx).build(gen, sample)
        text, tokens, expected = sized.text, sized.tokens, sized.prompt.expected
        budget, metric = gen.max_new_tokens, ""
    return {"prompt": text, "target": json.dumps(expected), "task": sample.task, "subtask": sample.subtask,
            "length": sample.length, "index": sample.index, "prompt_tokens": tokens, "max_new_tokens": budget,
            "metric": metric}


def export_lm_eval(cfg: EvalConfig, out: str | Path) -> list[str]:
    """Write the harness task folder of ``cfg``'s plan (one method: prompts do not depend on it) to ``out``;
    returns the task names. Every prompt is built before anything is written."""
    from longseq.models.loading import load_tokenizer

    cfg.validate()
    tokenizer = load_tokenizer(cfg.model)
    ctx = RunContext(cfg, tokenizer, resolve_prompt_format(cfg.prompt_format, tokenizer))
    first = cfg.cells[0][0]
    groups: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    for sample in plan(cfg):
        if sample.method == first:
            name = harness_name(sample.task, sample.subtask, sample.length)
            groups.setdefault(name, (harness_tag(sample.task), []))[1].append(sample_document(ctx, sample))
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file; pass a folder")
    if folder.exists() and any(folder.iterdir()) and not _is_export(folder):
        raise UserError(f"--out {folder} holds other files; choose a new or empty folder (an earlier export there "
                        "is replaced whole)")
    with atomic_dir(folder, overwrite=True) as tmp:  # no stale task of an earlier export survives
        atomic_write_text(tmp / "utils.py", UTILS_PY)
        for name, (tag, docs) in groups.items():
            atomic_write_text(tmp / f"{name}.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
            atomic_write_text(tmp / f"{name}.yaml", _YAML.format(
                name=name, tag=tag, data=f"{name}.jsonl", max_new_tokens=max(d["max_new_tokens"] for d in docs)))
    return list(groups)


def _is_export(folder: Path) -> bool:
    """Whether ``folder`` was written by :func:`export_lm_eval` (its ``utils.py`` starts with our header)."""
    utils = folder / "utils.py"
    return utils.is_file() and utils.read_text(encoding="utf-8", errors="replace").startswith(UTILS_HEADER)


# ------------------------------------------------------------------- called by the harness (utils.py)


def load_docs(path: str | Path) -> Any:
    """The harness dataset of one exported task: ``DatasetDict({"test": ...})``."""
    import datasets

    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def doc_to_text(doc: dict[str, Any]) -> str:
    """The prompt exactly as ``longseq eval`` renders it (no template engine in between)."""
    return doc["prompt"]


def doc_to_target(doc: dict[str, Any]) -> str:
    return doc["target"]


def score_doc(doc: dict[str, Any], output: str) -> float:
    """longseq's score of a harness generation: cut at the first newline after the answer started, then the
    task's scorer (or the record's metric for ``jsonl:`` tasks)."""
    text, _ = cut_at_stop(output, ("\n",))
    expected = json.loads(doc["target"])
    if doc["metric"]:
        return score_answers(text, expected, doc["metric"])
    task = EVAL_TASKS[doc["task"]]
    gen = task.subtask(doc["subtask"]) if hasattr(task, "subtask") else task
    return float(gen.score(text, expected))


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """The harness hook: ``{"score": ...}`` of the one generation in ``results``."""
    return {"score": score_doc(doc, results[0])}
