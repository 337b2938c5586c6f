"""The eval-task hook: everything the run loop, the summary and the report ask of a ``longseq eval`` task.

A task is an :class:`EvalTask` in :data:`EVAL_TASKS`. It expands a (method, length) cell into its
:class:`PlannedSample` s, checks before any model is loaded that each can be built, turns one sample into
the fields of its ``samples.jsonl`` record, folds the scored records of a cell into the extra keys of its
result row, and says how its row reads in the tables and plots. The generic code never names a task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class PlannedSample:
    """One sample to run: (method, task, subtask, length, index) plus the needle depth where one is asked."""

    method: str
    task: str
    subtask: str
    length: int
    index: int
    depth: float | None = None

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        return (self.method, self.task, self.subtask, self.length, self.index)

    @property
    def label(self) -> str:
        """``task`` or ``task/subtask`` (progress bar, RNG key of the generated prompt)."""
        return f"{self.task}/{self.subtask}" if self.subtask else self.task


def record_key(rec: dict[str, Any]) -> tuple[str, str, str, int, int]:
    """The :attr:`PlannedSample.key` of a ``samples.jsonl`` record."""
    return (rec["method"], rec["task"], rec.get("subtask") or "", int(rec["length"]), int(rec["index"]))


class Settings(Protocol):
    """The run settings tasks read (an :class:`longseq.eval.plan.EvalConfig` provides them). RULER also reads
    an optional ``ruler_qa`` (the QA data files, a list of paths) when the settings have it."""

    samples: int
    seed: int
    depths: list[float] | None
    ppl_text: str | None


@dataclass
class RunContext:
    """What the tasks of one run share: its settings, the tokenizer and prompt format, per-run objects."""

    settings: Settings
    tokenizer: Any
    fmt: str
    shared: dict[str, Any] = field(default_factory=dict)

    def once(self, key: str, make: Callable[[], T]) -> T:
        """The per-run object ``key``, built by ``make()`` on first use (prompt cache, perplexity text)."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]


def score_panel(ax: Any, threshold: float) -> None:
    """A score axis in [0, 1] with the effective-length threshold drawn (score_vs_length.png)."""
    ax.set_ylim(-0.05, 1.05)
    ax.axhline(threshold, color="gray", ls="--", lw=0.8)
    ax.set_ylabel("score")


class EvalTask(ABC):
    """One ``longseq eval`` task. Subclasses set ``name`` and ``description`` and implement :meth:`run`.

    Class attributes a task may override: ``label`` (its row name in the tables), ``shown`` (the result-row
    key its table cells and score panel show), ``in_effective_length`` (whether its score counts towards
    the effective length), ``hf_only`` (why it needs ``--backend hf``; empty when any backend can run it)
    and ``report_note`` (a sentence for report.md's preamble on how to read its rows).
    """

    name: str
    description: str
    shown: str = "score"
    in_effective_length: bool = True
    hf_only: str = ""
    report_note: str = ""

    @property
    def label(self) -> str:
        return self.name

    def plan(self, settings: Settings, method: str, length: int) -> list[PlannedSample]:
        """The samples of one (method, length) cell: ``settings.samples`` indices by default."""
        return [PlannedSample(method, self.name, "", length, i) for i in range(settings.samples)]

    def prepare(self, ctx: RunContext, sample: PlannedSample) -> None:
        """Raise :class:`UserError` now, before any model is loaded, if ``sample`` cannot be built."""

    @abstractmethod
    def run(self, ctx: RunContext, engine: Any, sample: PlannedSample) -> dict[str, Any]:
        """Run one sample on ``engine``; the record fields after its key (``prompt_tokens`` ... ``score``)."""

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Keys added to (or replacing, e.g. ``score``) a cell's result row, from the cell's records."""
        return {}

    def style_panel(self, ax: Any, threshold: float) -> None:
        """Axis style of the task's panel in score_vs_length.png."""
        score_panel(ax, threshold)

    def report_section(self, rows: list[dict[str, Any]]) -> list[str]:
        """Extra report.md lines (before the effective-length table) from the task's result rows."""
        return []

    def plots(self, rows: list[dict[str, Any]], out: Path) -> list[str]:
        """Extra figures written to ``out`` from the task's result rows; returns their file names."""
        return []


EVAL_TASKS: dict[str, EvalTask] = {}
"""Every task ``--tasks`` accepts, in the order ``--help`` lists them (filled by :mod:`longseq.eval.tasks`)."""


def task_names() -> list[str]:
    """All task names accepted by ``--tasks``."""
    return list(EVAL_TASKS)


def effective_tasks(names: list[str]) -> list[str]:
    """The tasks among ``names`` whose scores enter the effective length."""
    return [t for t in names if EVAL_TASKS[t].in_effective_length]
