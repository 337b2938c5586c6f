"""Stage 1 of the lab: the tokenizer, the training rows, the held-out text and the initial random model.

Prose is the shipped haystack text (its tail held out for perplexity) plus the docstrings of Python's own
standard library. The pre-training mixture is a retrieval curriculum: a share of the rows end with curriculum
documents, each followed by EOS: passkey and LongEval-lines prompts with their answers (built by the eval task
generators, so the model learns the very formats ``longseq eval`` asks) and repeated random-word lists, of
random sizes up to the row length, preceded by prose; the other rows are prose. Every row is exactly one
training sequence (``seq_len - 1`` tokens, then the EOS that ``longseq train`` puts between documents), so no
document is cut in two by packing.
"""

from __future__ import annotations

import ast
import json
import math
import random
import sysconfig
from pathlib import Path
from typing import Any, Iterator

from longseq.core.fsutil import atomic_dir
from longseq.eval.tasks import EVAL_TASKS, haystack_text
from longseq.eval.tasks.text import words
from longseq.lab.presets import FT_FACTOR, LabSize
from longseq.lab.tokenizer import EOS, build_tokenizer

RETRIEVAL = ("passkey", "lines")  # the eval tasks the model must learn
CURRICULUM = (*RETRIEVAL, "repeat", "repeat")  # document kinds of the curriculum rows, drawn uniformly
# The answer as the training documents write it after the task's answer prefix: lines repeats the record's
# "<value>" form, so the copy the model must learn is of the same tokens it saw in the record.
ANSWER_FORMAT = {"passkey": " {}.", "lines": " <{}>."}


def docstring_prose(max_chars: int) -> list[str]:
    """English prose from the docstrings of Python's standard library, read with ``ast`` (nothing imported).

    Deterministic for a given Python version; every machine has it, so the lab needs no download.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    total = 0
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if any(part in ("test", "tests", "idlelib", "site-packages", "lib2to3") for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200 and doc.count(" ") > len(doc) / 12:
                    docs.append(" ".join(doc.split()))
                    total += len(docs[-1])
                    if total >= max_chars:
                        return docs
    return docs


def retrieval_doc(task: str, rng: random.Random, units: int) -> str:
    """One curriculum document: a passkey or lines prompt with its answer (``units`` filler characters or
    lines), a ``repeat`` document (``units`` random words, then the same words again) or a ``lists`` one
    (the same with numbers among the words)."""
    if task in ("repeat", "lists"):
        return repeat_doc(rng, units, numbers=0.4 if task == "lists" else 0.0)
    p = EVAL_TASKS[task].generate(rng, units, {})
    return f"{p.body}{p.sep}{p.answer_prefix}{ANSWER_FORMAT[task].format(p.expected)}"


def repeat_doc(rng: random.Random, items: int, numbers: float = 0.0) -> str:
    """``items`` random words (the lines task's adjectives and nouns), then the same words three more times.

    With ``numbers`` > 0, each item is instead a random number of 1-5 digits with that probability: the copy
    then covers digits, which passkeys and line values are made of.

    Every word of the later copies is predictable only by looking back at the first (the repeated random
    sequences of Olsson et al. 2022): a dense training signal for the in-context copying (induction heads) that
    passkey and lines retrieval rely on, and the material of the lab's copy test (:mod:`longseq.lab.probe`).
    """
    vocab = [*words()["adjectives"], *words()["nouns"]]
    listing = " ".join(str(rng.randrange(10 ** rng.randint(1, 5))) if numbers and rng.random() < numbers
                       else rng.choice(vocab) for _ in range(max(items, 1)))
    return f"Here is a list: {listing}.\nThe list again: {listing}.\nAnd again: {listing}.\nOnce more: {listing}."


class RowBuilder:
    """Training rows of exactly ``n`` tokens (before the EOS packing adds): prose, or prose + curriculum docs.

    Prose is read from one token stream, cycled; document sizes are log-uniform in tokens from the smallest
    one up to what is left of the row (the curriculum covers every length up to the training length).
    """

    def __init__(self, tok: Any, prose: list[str], seed: int) -> None:
        self.tok, self.rng = tok, random.Random(seed)
        self.stream = self._ids("\n\n".join(prose))
        self.pos = 0
        # tokens per unit of each task's size knob, from two probes (linear in the units)
        self.rate: dict[str, tuple[float, float]] = {}
        for task, (a, b) in (("passkey", (100, 4000)), ("lines", (1, 40)), ("repeat", (5, 60)), ("lists", (5, 60))):
            ta, tb = (len(self._ids(retrieval_doc(task, random.Random(0), u))) for u in (a, b))
            self.rate[task] = (ta - a * (tb - ta) / (b - a), (tb - ta) / (b - a))

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _prose(self, k: int) -> list[int]:
        """The next ``k`` tokens of the prose stream (wrapping around)."""
        out: list[int] = []
        while len(out) < k:
            take = self.stream[self.pos:self.pos + k - len(out)]
            out += take
            self.pos = (self.pos + len(take)) % len(self.stream)
        return out

    def _doc(self, task: str, budget: int) -> tuple[str, int]:
        """A ``task`` document of at most ``budget`` tokens, its size log-uniform from the smallest up; returns
        (text, tokens), or ("", 0) when even the smallest one does not fit."""
        fixed, per_unit = self.rate[task]
        low = int(fixed) + 8
        if budget < low:
            return "", 0
        target = math.exp(self.rng.uniform(math.log(low), math.log(budget)))
        units = max(1, int((target - fixed) / per_unit))
        while True:
            doc = retrieval_doc(task, self.rng, units)
            n = len(self._ids(doc))
            if n <= budget:
                return doc, n
            if units == 1:
                return "", 0
            units = max(1, int(units * 0.9))

    def row(self, n: int, retrieval: bool, kinds: tuple[str, ...] = CURRICULUM) -> str:
        """A row of exactly ``n`` tokens: prose, or prose followed by retrieval documents (random tasks and
        sizes, added while they fit) that end the row. Short documents are the most frequent, so a row teaches
        the copy several times; the longest fill the whole row."""
        while True:  # a row whose seam cannot be tokenized to exactly n is drawn again: packing must not shift
            text = self._try_row(n, retrieval, kinds)
            if text is not None:
                return text

    def _try_row(self, n: int, retrieval: bool, kinds: tuple[str, ...]) -> str | None:
        """One draw of :meth:`row`; None when decode/encode at the prose seam never lands on ``n`` tokens."""
        docs, used = [], 0
        while retrieval:
            doc, k = self._doc(self.rng.choice(kinds), n - used - 2 * (len(docs) + 1))
            if not doc:
                break
            docs.append(doc)
            used += k + 2
        tail = EOS.join(docs)  # the model learns to stop after an answer, as the eval's generation needs
        k = n - used
        start = self.pos
        for _ in range(4):  # decode/encode at the seam can merge or split a token: adjust k to hit n exactly
            self.pos = start
            prose = self.tok.decode(self._prose(k)) if k > 0 else ""
            text = f"{prose}\n\n{tail}" if tail and prose else (tail or prose)
            err = len(self._ids(text)) - n
            if err == 0:
                return text
            k -= err
        return None

    def rows(self, count: int, n: int, share: float, kinds: tuple[str, ...] = CURRICULUM) -> Iterator[str]:
        """``count`` rows of ``n`` tokens, a ``share`` of them ending with documents of ``kinds``."""
        for _ in range(count):
            yield self.row(n, self.rng.random() < share, kinds)


def _prose(size: LabSize) -> tuple[list[str], str]:
    """(training prose documents, held-out text): the shipped text's last quarter is never trained on."""
    shipped = haystack_text()
    cut = int(len(shipped) * 0.75)
    return [shipped[:cut], *docstring_prose(size.prose_chars)], shipped[cut:]


def build_data(out: Path, size: LabSize, seed: int) -> dict[str, str]:
    """Write the tokenizer, ``data/pretrain_copy.jsonl`` (``size.copy_len``, repeated lists of words and numbers),
    ``data/pretrain_short.jsonl`` (``size.short_len``, curriculum rows only),
    ``data/pretrain.jsonl`` and ``data/pretrain_anneal.jsonl`` (L, new rows of the same mixture),
    ``data/finetune.jsonl`` (4L) and ``data/heldout.txt``.

    Cached: a finished ``data/`` (``done.json``) is reused. The tokenizer is trained on the prose and a
    sample of retrieval documents of every size, then every row is measured with it.
    """
    data = out / "data"
    paths = {k: str(data / f"{k}.jsonl") for k in ("pretrain_copy", "pretrain_short", "pretrain", "pretrain_anneal",
                                                       "finetune")}
    paths["heldout"] = str(data / "heldout.txt")
    paths["tokenizer"] = str(out / "tokenizer")
    if (data / "done.json").is_file() and (out / "tokenizer" / "tokenizer.json").is_file():
        return paths
    prose, heldout = _prose(size)
    rng = random.Random(seed)
    sample = [retrieval_doc(t, rng, {"passkey": rng.randint(100, 4000), "lines": rng.randint(1, 40),
                                     "repeat": rng.randint(5, 60)}[t]) for t in CURRICULUM for _ in range(100)]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build_tokenizer(out / "tokenizer", prose + sample, size.vocab))
    builder = RowBuilder(tok, prose, seed)
    with atomic_dir(data, overwrite=True) as tmp:
        for name, n, count, share, kinds in (
                ("pretrain_copy", size.copy_len, size.copy_steps * size.copy_batch, 1.0, ("lists",)),
                ("pretrain_short", size.short_len, size.short_steps * size.short_batch, 1.0, CURRICULUM),
                ("pretrain", size.native, size.pretrain_steps * size.pretrain_batch, size.retrieval_share, CURRICULUM),
                ("pretrain_anneal", size.native, size.anneal_steps * size.pretrain_batch, size.retrieval_share,
                 CURRICULUM),
                ("finetune", size.native * FT_FACTOR, size.finetune_steps * size.finetune_batch, size.retrieval_share,
                 CURRICULUM)):
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as fh:
                for text in builder.rows(count, n - 1, share, kinds):
                    fh.write(json.dumps({"text": text}) + "\n")
        (tmp / "heldout.txt").write_text(heldout, encoding="utf-8")
        (tmp / "done.json").write_text(json.dumps({"prose_chars": sum(map(len, prose)), "vocab": len(tok)}))
    return paths


def build_init(out: Path, size: LabSize, seed: int, tokenizer: str) -> str:
    """A random Llama (untied embeddings) at the native context with the lab tokenizer, saved to ``init/``."""
    target = out / "init"
    if (target / "config.json").is_file():
        return str(target)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        # Untied, as in Llama 2: with a tied embedding the digits, which training only ever sees in random
        # order, are pushed to one output direction and so become one input vector (mean cosine between the
        # ten digit embeddings 0.92 after pre-training), and no head can copy a passkey it cannot tell apart.
        max_position_embeddings=size.native, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_dir(target, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return str(target)


def embedding_share(model_dir: str) -> dict[str, int | float]:
    """Parameters of the token embeddings (input and output; a tied pair counted once) vs the whole model,
    read from its config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):  # shapes only: no weights are allocated
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    inp, outp = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    embed = inp.numel() + (0 if outp is inp else outp.numel())
    return {"parameters": total, "embedding": embed, "share": embed / total}
