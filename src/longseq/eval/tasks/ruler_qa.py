"""RULER's QA subtasks on data files the user gives: ``qa_1`` (SQuAD 2.0 dev) and ``qa_2`` (HotpotQA dev,
distractor setting), as NVIDIA/RULER ``scripts/data/synthetic/qa.py``.

A sample asks the ``index``-th answerable question of the file (RULER takes question ``index`` in file
order too) among as many documents as fit the length: the question's own documents, then the other
paragraphs of its article (SQuAD), then random documents of the file, shuffled and numbered
``Document i:``. Scored with ``string_match_part`` (any gold answer as a substring). The files are never
downloaded: ``ruler_qa`` (``--ruler-qa``) names them; each file's format picks its subtask.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from longseq.core.errors import UserError, one_line
from longseq.eval.tasks.generate import GenerationTask, Prompt, register
from longseq.eval.tasks.hook import RunContext, Settings
from longseq.eval.tasks.scoring import string_match_part

QA_TEMPLATE = ("Answer the question based on the given documents. Only give me the answer and do not output any other "
               "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
               "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}")
QA_PREFIX = " Answer:"
QA_DOCUMENT = "Document {i}:\n{document}"


@dataclass(frozen=True)
class QaData:
    """Questions ``{"query", "outputs", "context": [doc ids], "more_context": [doc ids]}`` and documents."""

    questions: list[dict[str, Any]]
    docs: list[str]


def _doc_index(docs: list[str]) -> tuple[list[str], dict[str, int]]:
    unique = sorted(set(docs))
    return unique, {d: i for i, d in enumerate(unique)}


def read_squad(data: Any) -> QaData:
    """SQuAD 2.0 JSON (``{"data": [{"paragraphs": [{"context", "qas"}]}]}``): answerable questions only;
    the other paragraphs of the same article are the first distractors (``read_squad``)."""
    docs, ids = _doc_index([p["context"] for d in data["data"] for p in d["paragraphs"]])
    questions = []
    for article in data["data"]:
        same = [ids[p["context"]] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            own = ids[p["context"]]
            for qa in p["qas"]:
                if not qa.get("is_impossible", False):
                    questions.append({"query": qa["question"], "outputs": [a["text"] for a in qa["answers"]],
                                      "context": [own], "more_context": [i for i in same if i != own]})
    return QaData(questions, docs)


def read_hotpotqa(data: Any) -> QaData:
    """HotpotQA JSON (``[{"question", "answer", "context": [[title, [sentences]]]}]``): a document is
    ``title\\nsentences`` (``read_hotpotqa``)."""
    def doc(title: str, sents: list[str]) -> str:
        return f"{title}\n{''.join(sents)}"

    docs, ids = _doc_index([doc(t, p) for d in data for t, p in d["context"]])
    questions = [{"query": d["question"], "outputs": [d["answer"]], "context": [ids[doc(t, p)] for t, p in d["context"]],
                  "more_context": []} for d in data]
    return QaData(questions, docs)


@dataclass(frozen=True)
class QaFormat:
    """One QA data set: what it is, where RULER downloads it, its reader and the first JSON character."""

    title: str
    url: str
    read: Callable[[Any], QaData]
    opening: str


QA_FORMATS = {
    "qa_1": QaFormat("SQuAD 2.0 dev", "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json", read_squad, "{"),
    "qa_2": QaFormat("HotpotQA dev distractor", "http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json",
                     read_hotpotqa, "["),
}
_WHERE = "; ".join(f"{k} reads {f.title} ({f.url})" for k, f in QA_FORMATS.items())


def _given(settings: Settings) -> list[str]:
    files = getattr(settings, "ruler_qa", None) or []
    return [x.strip() for x in (files.split(",") if isinstance(files, str) else files) if x.strip()]


def _first_char(path: Path) -> str:
    with path.open("r", encoding="utf-8", errors="replace") as f:
        while ch := f.read(1):
            if not ch.isspace():
                return ch
    return ""


def qa_files(settings: Settings) -> dict[str, str]:
    """``{subtask: path}`` of the QA files given; a missing, unreadable or unknown file is a UserError."""
    found: dict[str, str] = {}
    for name in _given(settings):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"RULER QA file {name} does not exist; {_WHERE}: download it on a machine with internet "
                            "and pass its path")
        ch = _first_char(path)
        sub = next((k for k, f in QA_FORMATS.items() if f.opening == ch), None)
        if sub is None:
            raise UserError(f"{name} is neither SQuAD 2.0 JSON (an object) nor HotpotQA JSON (a list); {_WHERE}")
        if sub in found:
            raise UserError(f"two {QA_FORMATS[sub].title} files given ({found[sub]}, {name}); pass one")
        found[sub] = str(path)
    return found


def qa_subtasks(settings: Settings) -> list[str]:
    """The QA subtasks whose data files are given, in RULER's order."""
    files = qa_files(settings)
    return [k for k in QA_FORMATS if k in files]


@functools.lru_cache(maxsize=4)
def load_qa(subtask: str, path: str) -> QaData:
    """The questions and documents of ``path`` read as ``subtask``'s format (cached)."""
    fmt = QA_FORMATS[subtask]
    try:
        data = fmt.read(json.loads(Path(path).read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise UserError(f"{path} is not a valid {fmt.title} file ({one_line(err, 120)}); {_WHERE}") from None
    if not data.questions:
        raise UserError(f"{path} has no answerable question; pass the {fmt.title} file ({fmt.url})")
    return data


@dataclass(frozen=True)
class QaTask(GenerationTask):
    """A RULER QA subtask: its generator reads the data set of the file given for it."""

    def data(self, ctx: RunContext) -> dict[str, Any]:
        files = qa_files(ctx.settings)
        if self.name not in files:
            raise UserError(f"RULER {self.name} needs its data file; {_WHERE}: pass it with --ruler-qa FILE")
        return {"qa": load_qa(self.name, files[self.name])}


RULER_QA_SUBTASKS: dict[str, GenerationTask] = {}


@register("qa_2", string_match_part, 32, 1 / 120, RULER_QA_SUBTASKS, kind=QaTask, stop=(), fit_answer=True,
          tolerance=None)
@register("qa_1", string_match_part, 32, 1 / 150, RULER_QA_SUBTASKS, kind=QaTask, stop=(), fit_answer=True,
          tolerance=None)
def gen_qa(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER qa: a question among n documents (its own, then distractors), numbered 'Document i:'."""
    data: QaData = opts["qa"]
    q = data.questions[int(opts.get("index", 0)) % len(data.questions)]
    own, more = list(q["context"]), list(q["more_context"])
    n = max(n, len(own))
    if n < len(data.docs):
        if n - len(own) > len(more):
            taken = set(own + more)
            others = [i for i in range(len(data.docs)) if i not in taken]
            picked = own + more + rng.sample(others, n - len(own) - len(more))
        else:
            picked = own + rng.sample(more, n - len(own))
        docs = [data.docs[i] for i in picked]
    else:
        docs = (data.docs * (n // len(data.docs) + 1))[:n]
    rng.shuffle(docs)
    context = "\n\n".join(QA_DOCUMENT.format(i=i + 1, document=d) for i, d in enumerate(docs))
    return Prompt(QA_TEMPLATE.format(context=context, query=q["query"]), QA_PREFIX, list(q["outputs"]), sep="",
                  meta={"documents": n})
