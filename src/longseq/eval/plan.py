"""What a ``longseq eval`` run evaluates: its settings (:class:`EvalConfig`), the presets, and the planned
samples of the (task x method x length) grid."""

from __future__ import annotations

from dataclasses import dataclass, field

from longseq.core.errors import UserError, unknown_choice
from longseq.eval.tasks import EVAL_TASKS, PlannedSample, task_names
from longseq.models.rope import METHODS

RULER_THRESHOLD = 0.856
BACKENDS = ("hf", "openai")


@dataclass(frozen=True)
class Preset:
    """A named evaluation plan: tasks, (method, lengths) groups and samples per cell."""

    tasks: tuple[str, ...]
    groups: tuple[tuple[str, tuple[int, ...]], ...]
    samples: int


PRESETS: dict[str, Preset] = {
    # `make demo`: passkey and lines up to the native 8k with plain RoPE, then 16k with and without YaRN.
    "quick": Preset(("passkey", "lines"), (("none", (1024, 2048, 4096, 8192, 16384)), ("yarn", (16384,))), 2),
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
    base_url: str | None = None
    api_model: str | None = None
    api_key: str | None = None

    def validate(self) -> None:
        """Raise :class:`UserError` on the first invalid setting."""
        for t in self.tasks:
            if t not in EVAL_TASKS:
                raise unknown_choice("task", t, task_names())
        for m, _ in self.cells:
            if m not in METHODS:
                raise unknown_choice("RoPE method", m, METHODS)
        if not self.tasks or not self.cells:
            raise UserError("nothing to evaluate; give --tasks, --methods and --lengths (or --preset quick)")
        if self.samples < 1:
            raise UserError(f"--samples must be >= 1, got {self.samples}")
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
    """All samples of the run, method-major (one model load per method), then length, task, the task's order."""
    samples = []
    for method in dict.fromkeys(m for m, _ in cfg.cells):
        for length in sorted({L for m, L in cfg.cells if m == method}):
            for task in cfg.tasks:
                samples += EVAL_TASKS[task].plan(cfg, method, length)
    return samples
