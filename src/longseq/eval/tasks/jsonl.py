"""``jsonl:PATH``: a user's own long-context records (LongBench-style QA over a document) as an eval task.

Each non-blank line of PATH is a JSON object::

    {"context": "<long text>", "question": "...", "answers": ["...", ...],
     "id": "optional", "metric": "substring|exact|f1|rouge-l (optional)", "max_new_tokens": 32 (optional)}

The prompt is ``JSONL_INSTRUCTION``, the context, the question, then the answer prefix ``Answer:``. Records
meet the ``--lengths`` grid in one of two ways:
  * bucketed (default): a record goes to the smallest tested length that holds its whole prompt (in the
    model's tokens, raw format), so a cell at L holds the records of (previous L, L] tokens, as LongBench-E
    groups its records by length; records longer than the largest length are left out (the report counts them);
  * ``--truncate middle``: every record is evaluated at every length, its context cut in the middle (the
    first and last halves kept) when the prompt is longer than L, as LongBench's ``pred.py`` truncates
    prompts to the model's window; shorter records stay whole.
Each cell takes the first ``--samples`` records (file order) it gets. A sample's index is its line number,
so resuming and the report work as for the built-in tasks.

A record's score is the best over its answers (LongBench's ``max`` over ground truths) of its metric:
``substring`` (the normalized answer occurs in the normalized output), ``exact`` (normalized strings equal),
``f1`` (SQuAD / LongBench token F1 after normalization) or ``rouge-l`` (the ``rouge-score`` package's ROUGE-L
F-measure). SQuAD's normalization (lowercase, no punctuation, no articles, single spaces) is a few lines,
written here because no installed library exposes it without loading a dataset script.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from longseq.core.errors import UserError, unknown_choice
from longseq.core.tables import fmt_len
from longseq.eval.engine import encode, render
from longseq.eval.tasks.hook import EVAL_TASKS, EvalTask, PlannedSample, RunContext, Settings
from longseq.eval.tasks.scoring import score_contains

JSONL_PREFIX = "jsonl:"
JSONL_INSTRUCTION = "Read the text below and answer the question that follows it."
ANSWER_PREFIX = "Answer:"
DEFAULT_MAX_NEW_TOKENS = 32
TRUNCATE_MODES = ("middle",)
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, punctuation removed, articles a/an/the removed, whitespace collapsed."""
    text = (text or "").lower()
    text = text.translate(_NO_PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_score(output: str, answer: str) -> float:
    """1 if the normalized output equals the normalized answer."""
    return float(normalize_answer(output) == normalize_answer(answer))


def f1_score(output: str, answer: str) -> float:
    """Token F1 of the normalized output against the normalized answer (SQuAD's, LongBench's ``qa_f1_score``)."""
    pred, gold = normalize_answer(output).split(), normalize_answer(answer).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def rouge_l_score(output: str, answer: str) -> float:
    """ROUGE-L F-measure (``rouge_score.rouge_scorer``, its default tokenizer: lowercase alphanumeric words)."""
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"]).score(answer, output or "")["rougeL"].fmeasure)


METRICS: dict[str, Callable[[str, str], float]] = {
    "substring": score_contains, "exact": exact_score, "f1": f1_score, "rouge-l": rouge_l_score}


def score_answers(output: str, answers: list[str], metric: str) -> float:
    """Best score of ``output`` over the reference ``answers`` under ``metric``."""
    return max(METRICS[metric](output, a) for a in answers)


@dataclass(frozen=True)
class Record:
    """One validated line of a records file."""

    line: int
    id: str
    context: str
    question: str
    answers: list[str]
    metric: str
    max_new_tokens: int

    def body(self, context: str | None = None) -> str:
        """The prompt text before the answer prefix (``context`` replaces the record's, e.g. truncated)."""
        return f"{JSONL_INSTRUCTION}\n\n{self.context if context is None else context}\n\nQuestion: {self.question}"


def _record(where: str, line: int, raw: str) -> Record:
    """Parse and check one line; every problem is a one-line error naming ``file:line``."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}:{line}: not valid JSON ({err.msg} at column {err.colno}); each line must be one "
                        "JSON object") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}:{line}: expected a JSON object with context, question and answers")
    for key in ("context", "question"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise UserError(f"{where}:{line}: '{key}' must be a non-empty string")
    answers = obj.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise UserError(f"{where}:{line}: 'answers' must be a non-empty list of non-empty strings")
    metric = obj.get("metric", "substring")
    if metric not in METRICS:
        raise UserError(f"{where}:{line}: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    budget = obj.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise UserError(f"{where}:{line}: 'max_new_tokens' must be a whole number >= 1, got {budget!r}")
    return Record(line, str(obj.get("id", line)), obj["context"], obj["question"], answers, metric, budget)


def read_records(path: str) -> list[Record]:
    """All records of ``path`` (blank lines skipped); the first bad line is a one-line error."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"--tasks jsonl:{path}: no such file; pass a .jsonl file of context/question/answers records")
    records = []
    with open(file, encoding="utf-8") as fh:
        for line, raw in enumerate(fh, 1):
            if raw.strip():
                records.append(_record(path, line, raw))
    if not records:
        raise UserError(f"{path}: no records; each line must be a JSON object with context, question and answers")
    if any(r.metric == "rouge-l" for r in records):
        try:
            import rouge_score  # noqa: F401
        except ImportError:
            raise UserError(f"{path}: metric rouge-l needs the rouge-score package; pip install rouge-score") from None
    return records


class JsonlTask(EvalTask):
    """The records of one file, bucketed by length or truncated to it (see module docstring)."""

    hf_only = ""

    def __init__(self, name: str):
        self.name = name
        self.path = name[len(JSONL_PREFIX):]
        self.description = f"your records in {self.path}"
        self._loaded: dict[str, tuple[list[Record], list[int]]] = {}
        self.too_long = 0

    @property
    def label(self) -> str:
        return Path(self.path).stem or self.path

    def records(self, model: str) -> tuple[list[Record], list[int]]:
        """The file's records and their raw prompt lengths in ``model``'s tokens (read once per model)."""
        if model not in self._loaded:
            from longseq.models.loading import load_tokenizer

            records = read_records(self.path)
            tok = load_tokenizer(model)
            sizes = [len(encode(tok, render(r.body(), ANSWER_PREFIX, "\n", "raw", tok), "raw")) for r in records]
            self._loaded[model] = (records, sizes)
        return self._loaded[model]

    def plan(self, settings: Settings, method: str, length: int) -> list[PlannedSample]:
        """The first ``samples`` records of the bucket ``length`` (or of the file, with ``--truncate middle``)."""
        records, sizes = self.records(getattr(settings, "model"))
        truncate = getattr(settings, "truncate", None)
        if truncate is not None and truncate not in TRUNCATE_MODES:
            raise unknown_choice("--truncate mode", str(truncate), TRUNCATE_MODES)
        if truncate:
            chosen = records
        else:
            limits = (getattr(settings, "task_lengths", None) or {}).get(self.name)
            grid = sorted({L for m, L in getattr(settings, "cells") if m == method and (not limits or L in limits)})
            lower = max((L for L in grid if L < length), default=0)
            chosen = [r for r, n in zip(records, sizes) if lower < n <= length]
            self.too_long = sum(n > grid[-1] for n in sizes)
        return [PlannedSample(method, self.name, "", length, r.line) for r in chosen[:settings.samples]]

    def _by_line(self, ctx: RunContext) -> dict[int, Record]:
        records, _ = self.records(getattr(ctx.settings, "model"))
        return ctx.once(f"{self.name}|lines", lambda: {r.line: r for r in records})

    def prompt(self, ctx: RunContext, sample: PlannedSample) -> tuple[Record, str, str, int]:
        """(record, body, rendered text, its tokens) of ``sample``, the context cut in the middle to fit."""
        cache = ctx.once(f"{self.name}|prompts", dict)
        if sample.key[2:] not in cache:
            cache[sample.key[2:]] = self._fit(ctx, self._by_line(ctx)[sample.index], sample.length)
        return cache[sample.key[2:]]

    def _fit(self, ctx: RunContext, rec: Record, length: int) -> tuple[Record, str, str, int]:
        """LongBench's middle truncation, on the context only so that the question and prefix stay whole."""
        def rendered(context: str) -> tuple[str, str, int]:
            body = rec.body(context)
            text = render(body, ANSWER_PREFIX, "\n", ctx.fmt, ctx.tokenizer)
            return body, text, len(encode(ctx.tokenizer, text, ctx.fmt))

        body, text, n = rendered(rec.context)
        if n <= length or not getattr(ctx.settings, "truncate", None):
            return rec, body, text, n
        ids = ctx.tokenizer(rec.context, add_special_tokens=False)["input_ids"]
        keep = len(ids) - (n - length)
        while keep > 0:
            head = keep // 2
            cut = ctx.tokenizer.decode(ids[:head]) + ctx.tokenizer.decode(ids[len(ids) - (keep - head):])
            body, text, n = rendered(cut)
            if n <= length:
                return rec, body, text, n
            keep -= n - length
        raise UserError(f"{self.path}:{rec.line}: the question and instructions alone exceed {fmt_len(length)} tokens; "
                        "use longer --lengths")

    def prepare(self, ctx: RunContext, sample: PlannedSample) -> None:
        self.prompt(ctx, sample)

    def run(self, ctx: RunContext, engine: Any, sample: PlannedSample) -> dict[str, Any]:
        rec, body, text, tokens = self.prompt(ctx, sample)
        gen = engine.answer(body, text, ctx.fmt, rec.max_new_tokens)
        return {"prompt_tokens": tokens, "depth": None, "expected": rec.answers, "output": gen.text,
                "score": score_answers(gen.text, rec.answers, rec.metric), "new_tokens": gen.new_tokens,
                "seconds": round(gen.seconds, 3), "id": rec.id, "metric": rec.metric}

    def report_section(self, rows: list[dict[str, Any]]) -> list[str]:
        """How the records met the grid (and how many were too long to be evaluated)."""
        metrics = sorted({r.metric for recs, _ in self._loaded.values() for r in recs})
        note = (f"`{self.name}` ({', '.join(metrics)}): " + ", ".join(f"{r['method']} {fmt_len(r['length'])}: "
                                                                    f"{r['n']} records" for r in rows))
        if self.too_long:
            note += (f"; {self.too_long} records are longer than the largest length and were not evaluated "
                     "(`--truncate middle` cuts them to each length)")
        return [note + ".", ""]


def register_jsonl_tasks(names: list[str]) -> None:
    """Add a :class:`JsonlTask` to :data:`EVAL_TASKS` for every ``jsonl:PATH`` in ``names`` (files are read
    later, when the run is planned)."""
    for name in names:
        if isinstance(name, str) and name.startswith(JSONL_PREFIX) and name not in EVAL_TASKS:
            if not name[len(JSONL_PREFIX):]:
                raise UserError("--tasks jsonl: needs a file, e.g. --tasks jsonl:data/qa.jsonl")
            EVAL_TASKS[name] = JsonlTask(name)
