"""What a ``longseq eval`` run evaluates: its settings (:class:`EvalConfig`), the presets, and the planned
samples of the (task x method x length) grid."""

from __future__ import annotations

from dataclasses import dataclass, field

from longseq.core.errors import UserError, unknown_choice
from longseq.eval.tasks import EVAL_TASKS, PlannedSample, task_names
from longseq.eval.tasks.jsonl import register_jsonl_tasks
from longseq.models.rope import METHODS

RULER_THRESHOLD = 0.856
BACKENDS = ("hf", "openai")


@dataclass(frozen=True)
class Preset:
    """A named evaluation plan: tasks, (method, lengths) groups and samples per cell; ``task_lengths`` limits a
    task to some of the lengths (:attr:`EvalConfig.task_lengths`)."""

    tasks: tuple[str, ...]
    groups: tuple[tuple[str, tuple[int, ...]], ...]
    samples: int
    task_lengths: dict[str, tuple[int, ...]] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # `make demo` (under 10 minutes on a 2-core CPU without AMX): passkey up to the native 8k and at 16k (2x)
    # with plain RoPE and with YaRN, and LongEval lines at 1k only (SmolLM2-135M fails it from 1k on). The four
    # 16k prompts are ~3/4 of the run time.
    "quick": Preset(("passkey", "lines"), (("none", (1024, 4096, 8192, 16384)), ("yarn", (16384,))), 2,
                    task_lengths={"lines": (1024,)}),
    "full": Preset(("passkey", "lines", "topics", "niah", "ruler", "ppl"),
                   tuple((m, (1024, 2048, 4096, 8192, 16384)) for m in ("none", "pi", "yarn", "ntk", "abf")), 5),
}


@dataclass
class EvalConfig:
    """Everything that defines an evaluation run (see ``longseq eval --help``)."""

    model: str
    out: str
    tasks: list[str] = field(default_factory=lambda: ["passkey"])
    cells: list[tuple[str, int]] = field(default_factory=lambda: [("none", 1024), ("none", 2048), ("none", 4096)])
    samples: int = 5
    seed: int = 0
    threshold: float = RULER_THRESHOLD
    backend: str = "hf"
    prompt_format: str = "auto"
    dtype: str = "auto"
    chunk_size: int = 16384
    target_length: int | None = None
    depths: list[float] | None = None
    ppl_text: str | None = None
    ruler_qa: list[str] | None = None
    base_url: str | None = None
    api_model: str | None = None
    api_key: str | None = None
    truncate: str | None = None
    task_lengths: dict[str, tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        """Register the run's ``jsonl:PATH`` tasks (a user's own records) so every lookup by name finds them."""
        register_jsonl_tasks(self.tasks)

    def validate(self) -> None:
        """Raise :class:`UserError` on the first invalid setting (nothing is written before this passes)."""
        from longseq.models.loading import DTYPES

        for t in self.tasks:
            if t not in EVAL_TASKS:
                raise unknown_choice("task", t, task_names())
        for m, length in self.cells:
            if m not in METHODS:
                raise unknown_choice("RoPE method", m, METHODS)
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise UserError(f"lengths are whole numbers of tokens >= 1, got {length!r}")
        if not self.tasks or not self.cells:
            raise UserError("nothing to evaluate; give --tasks, --methods and --lengths (or --preset quick)")
        task = next((t for i, t in enumerate(self.tasks) if t in self.tasks[:i]), None)
        if task is not None:
            raise UserError(f"--tasks lists {task} twice; give each task once")
        cell = next((c for i, c in enumerate(self.cells) if c in self.cells[:i]), None)
        if cell is not None:
            raise UserError(f"method {cell[0]} at length {cell[1]} is listed twice; give each method and length once")
        for flag, value in (("--samples", self.samples), ("--chunk-size", self.chunk_size),
                            ("--target-length", self.target_length or 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{flag} must be >= 1 (a whole number), got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"--seed must be a whole number >= 0, got {self.seed!r}")
        if self.dtype not in DTYPES:
            raise unknown_choice("dtype", str(self.dtype), DTYPES)
        if not 0 <= self.threshold <= 1:
            raise UserError(f"--threshold must be in [0, 1] (scores are fractions), got {self.threshold}")
        if self.backend not in BACKENDS:
            raise unknown_choice("backend", self.backend, BACKENDS)
        if self.backend == "openai":
            if not self.base_url:
                raise UserError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
            for t in self.tasks:
                if EVAL_TASKS[t].hf_only:
                    raise UserError(f"task '{t}' {EVAL_TASKS[t].hf_only}; run it with --backend hf")
            if any(m != "none" for m, _ in self.cells):
                raise UserError("with --backend openai the server owns the RoPE setup; use --methods none")
        for d in self.depths or []:
            if not 0 <= d <= 1:
                raise UserError(f"depths are fractions in [0, 1] (or percents 0-100), got {d}")


def plan(cfg: EvalConfig) -> list[PlannedSample]:
    """All samples of the run, method-major (one model load per method), then length, task, the task's order;
    a task limited by ``cfg.task_lengths`` skips the other lengths."""
    limits = cfg.task_lengths or {}
    for task, lengths in limits.items():
        if task not in cfg.tasks or not lengths:
            raise UserError(f"task_lengths names '{task}' with lengths {list(lengths)}; give tasks of the run, each "
                            "with at least one length")
    samples = []
    for method in dict.fromkeys(m for m, _ in cfg.cells):
        for length in sorted({L for m, L in cfg.cells if m == method}):
            for task in cfg.tasks:
                if task not in limits or length in limits[task]:
                    samples += EVAL_TASKS[task].plan(cfg, method, length)
    return samples
