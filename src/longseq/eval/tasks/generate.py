"""Generated-prompt tasks: prompt generators sized in the evaluated model's tokens, answered and scored.

Every generated prompt is a pure function of ``(task, length, seed, index)`` and the tokenizer: the
random state is ``random.Random(f"{task}|{length}|{seed}|{index}")`` (string seeds are hashed with
SHA-512, so they do not depend on ``PYTHONHASHSEED``). A generator maps a size knob ``n`` (filler
characters, number of lines, number of words...) to a prompt; :func:`size_prompt` binary-searches the
largest ``n`` whose rendered prompt fits the task's token budget and checks that it fills at least
``1 - LENGTH_TOLERANCE`` of it, as RULER sizes its haystacks with the evaluated tokenizer. The budget is
``length - max_new_tokens`` for the tasks whose reference sizes prompt plus answer to the length (RULER,
LongEval), ``length`` for passkey; tasks whose unit is coarse (whole conversations, lines, paragraphs,
documents) take the largest count that fits without the lower bound; NIAH fixes its context at
``length - 200`` tokens, as its reference does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from longseq.core.errors import UserError
from longseq.eval.engine import encode, render
from longseq.eval.tasks.hook import EvalTask, PlannedSample, RunContext

LENGTH_TOLERANCE = 0.02


@dataclass
class Prompt:
    """One generated test case, before the prompt format (raw / chat) is applied.

    ``body`` is the user-facing text (instructions, context, question); ``answer_prefix`` the completion
    start appended after it (raw) or after the assistant header (chat). ``expected`` is what the scorer
    needs; ``depth`` the relative position of the (first) needle in the context, when there is one.
    """

    body: str
    answer_prefix: str
    expected: Any
    depth: float | None = None
    sep: str = "\n"
    meta: dict[str, Any] = field(default_factory=dict)


Generator = Callable[[random.Random, int, dict[str, Any]], Prompt]


@dataclass(frozen=True)
class GenerationTask(EvalTask):
    """A generated-prompt task: a generator ``(rng, n, opts) -> Prompt``, a scorer ``(output, expected) ->
    [0,1]``, the generation budget and a first guess of the size knob per token (for the binary search).

    ``stop``: stop strings of the answer (empty: up to ``max_new_tokens`` or EOS, as RULER, LongChat and
    NIAH generate); ``fit_answer``: the prompt plus ``max_new_tokens`` must fit the length (RULER's
    ``max_seq_length`` counts the tokens to generate); ``tolerance``: the least fill of the budget, or
    None for whole-unit tasks; ``fixed_units``: ``length -> n`` when the reference fixes the size knob
    instead of searching it (NIAH's context of ``length - 200`` tokens); ``optional_example``: when
    the smallest prompt does not fit, retry with ``opts['example'] = False`` (RULER's one-shot examples,
    left out at lengths too short for them).
    """

    name: str
    generate: Generator
    score: Callable[[str, Any], float]
    max_new_tokens: int
    units_per_token: float
    description: str
    stop: tuple[str, ...] = ("\n",)
    fit_answer: bool = False
    tolerance: Optional[float] = LENGTH_TOLERANCE
    fixed_units: Optional[Callable[[int], int]] = None
    optional_example: bool = False

    def budget(self, length: int) -> int:
        """Prompt tokens allowed at ``length``."""
        return length - self.max_new_tokens if self.fit_answer else length

    def data(self, ctx: RunContext) -> dict[str, Any]:
        """Per-run data handed to the generator in ``opts`` (none by default; RULER qa: its data set)."""
        return {}

    def prepare(self, ctx: RunContext, sample: PlannedSample) -> None:
        prompt_builder(ctx).build(self, sample, self.data(ctx))

    def run(self, ctx: RunContext, engine: Any, sample: PlannedSample) -> dict[str, Any]:
        sized = prompt_builder(ctx).build(self, sample, self.data(ctx))
        gen = engine.answer(sized.prompt.body, sized.text, ctx.fmt, self.max_new_tokens, stop=self.stop)
        return {"prompt_tokens": sized.tokens, "depth": sized.prompt.depth, "expected": sized.prompt.expected,
                "output": gen.text, "score": float(self.score(gen.text, sized.prompt.expected)),
                "new_tokens": gen.new_tokens, "seconds": round(gen.seconds, 3),
                **({"meta": sized.prompt.meta} if sized.prompt.meta else {})}


def register(name: str, score: Callable[[str, Any], float], max_new_tokens: int, units_per_token: float,
             registry: dict[str, Any], kind: type[GenerationTask] = GenerationTask,
             **options: Any) -> Callable[[Generator], Generator]:
    """Decorator adding a generator to ``registry`` as a ``kind`` task (its description: the docstring's
    first line; ``options``: the other :class:`GenerationTask` fields); the generator is returned unchanged."""

    def deco(fn: Generator) -> Generator:
        registry[name] = kind(name, fn, score, max_new_tokens, units_per_token,
                              (fn.__doc__ or "").strip().split("\n")[0], **options)
        return fn

    return deco


# ----------------------------------------------------------------------------------------------- sizing


def sample_rng(task: str, length: int, seed: int, index: int) -> random.Random:
    """Deterministic RNG for one sample: a function of (task, length, seed, index) only."""
    return random.Random(f"{task}|{length}|{seed}|{index}")


class TooShort(UserError):
    """The length cannot hold the task's smallest prompt."""


@dataclass
class SizedPrompt:
    """A prompt rendered and sized: the final ``text`` and its ``tokens`` count in the model's tokenizer."""

    prompt: Prompt
    text: str
    tokens: int
    units: int


def size_prompt(task: GenerationTask, length: int, seed: int, index: int, count: Callable[[Prompt], tuple[str, int]],
                opts: dict[str, Any] | None = None, key: str | None = None) -> SizedPrompt:
    """Build the prompt of ``task`` whose rendered token count is the largest within ``task.budget(length)``.

    ``count(prompt) -> (rendered text, token count)`` applies the prompt format and the tokenizer. The
    size knob is binary-searched (or fixed by ``task.fixed_units``); the result must fill the budget
    within ``task.tolerance``. ``key`` (default the task's name) names the task in the RNG seed and in errors.
    """
    opts = {**(opts or {}), "length": length}
    if task.optional_example and "example" not in opts:
        try:
            return size_prompt(task, length, seed, index, count, {**opts, "example": True}, key)
        except TooShort:
            opts["example"] = False
    name = key or task.name
    budget = task.budget(length)

    def build(n: int) -> SizedPrompt:
        p = task.generate(sample_rng(name, length, seed, index), n, opts)
        text, tokens = count(p)
        return SizedPrompt(p, text, tokens, n)

    def too_short(tokens: int) -> TooShort:
        return TooShort(f"length {length} is too short for task '{name}' (its fixed text alone is {tokens} "
                         "tokens); use longer --lengths")

    if task.fixed_units is not None:
        units = task.fixed_units(length)
        fixed = build(units) if units > 0 else None
        if fixed is None or fixed.tokens > budget:
            raise too_short(fixed.tokens if fixed else length - units)
        return fixed
    lo_p = build(0 if task.units_per_token > 0.5 else 1)
    if lo_p.tokens > budget:
        raise too_short(lo_p.tokens)
    lo, hi = lo_p.units, max(lo_p.units + 1, int((budget - lo_p.tokens) * task.units_per_token * 1.05))
    best, hi_p = lo_p, build(hi)
    while hi_p.tokens <= budget:  # grow until the upper bound overshoots
        best, lo = hi_p, hi
        hi = int(hi * 1.5) + 1
        hi_p = build(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        mid_p = build(mid)
        if mid_p.tokens <= budget:
            best, lo = mid_p, mid
        else:
            hi = mid
    if task.tolerance is not None and best.tokens < (1 - task.tolerance) * budget:
        raise UserError(f"cannot size task '{name}' to {budget} tokens (got {best.tokens}); the tokenizer packs its "
                        "text too coarsely at this length, try a longer length")
    return best


class PromptBuilder:
    """Builds and caches sized prompts in one tokenizer and prompt format (they do not depend on the RoPE
    method, so every method of a run shares them)."""

    def __init__(self, tokenizer: Any, fmt: str, seed: int):
        self.tokenizer, self.fmt, self.seed = tokenizer, fmt, seed
        self._cache: dict[tuple[str, str, int, int], SizedPrompt] = {}

    def count(self, p: Prompt) -> tuple[str, int]:
        """The prompt as the engine will feed it, and its token count."""
        text = render(p.body, p.answer_prefix, p.sep, self.fmt, self.tokenizer)
        return text, len(encode(self.tokenizer, text, self.fmt))

    def build(self, task: GenerationTask, sample: PlannedSample, extra: dict[str, Any] | None = None) -> SizedPrompt:
        """The sized prompt of ``sample``, generated by ``task`` (a RULER sample: its subtask's).

        Generators get ``opts`` with ``tokenizer`` (token-level placement such as NIAH's depth, parts sized
        on their own such as RULER's vt example), ``index``, ``depth`` when asked, and ``extra`` (per-task
        data, e.g. a QA data set).
        """
        key = (sample.task, sample.subtask, sample.length, sample.index)
        if key not in self._cache:
            opts = {"tokenizer": self.tokenizer, "index": sample.index, **(extra or {})}
            if sample.depth is not None:
                opts["depth"] = sample.depth
            self._cache[key] = size_prompt(task, sample.length, self.seed, sample.index, self.count, opts,
                                           key=sample.label)
        return self._cache[key]


def prompt_builder(ctx: RunContext) -> PromptBuilder:
    """The run's shared prompt builder."""
    return ctx.once("prompts", lambda: PromptBuilder(ctx.tokenizer, ctx.fmt, ctx.settings.seed))
