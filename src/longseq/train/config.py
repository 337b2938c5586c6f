"""The configuration of a ``longseq train`` run: methods, :class:`TrainConfig`, YAML recipes, validation.

Methods (:data:`TRAIN_METHODS`):
  * ``longlora`` - Chen et al., "LongLoRA", arXiv 2309.12307: S²-Attn (:mod:`longseq.train.s2attn`) during
    training + LoRA (peft; r=8, alpha=16 on q/k/v/o) + fully trainable token embedding and every norm
    ("LoRA+", paper Table 2). lm_head is trained only where it is tied to the embedding.
  * ``lora``     - the paper's baseline: the same LoRA, full attention, nothing else trainable.
  * ``full``     - every weight trained, full attention. With ``--rope abf --theta 500000`` on packed
    long text this is Llama 2 Long's ABF continual pre-training (Xiong et al., arXiv 2309.16039).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longseq.core.errors import UserError, one_line, unknown_choice
from longseq.core.parsing import parse_length
from longseq.models.rope import MAX_FACTOR, MAX_THETA, check_number
from longseq.models.rope import METHODS as ROPE_METHODS


@dataclass(frozen=True)
class Method:
    """What a training method makes trainable and which attention it trains with."""

    name: str
    s2attn: bool
    lora: bool
    embed_and_norms: bool
    help: str


TRAIN_METHODS: dict[str, Method] = {
    "longlora": Method("longlora", True, True, True, "S²-Attn + LoRA + trainable embeddings and norms (LongLoRA)"),
    "lora": Method("lora", False, True, False, "LoRA on attention only, full attention (LongLoRA's baseline)"),
    "full": Method("full", False, False, False, "every weight trained, full attention (e.g. ABF continual pre-training)"),
}

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """Every knob of a training run. YAML recipes (``--config``) use these field names."""

    model: str = "smollm2-135m"  # alias, folder, .gguf or Hub id
    method: str = "longlora"  # longlora | lora | full
    rope: str = "pi"  # any longseq RoPE method: none | pi | yarn | abf | ntk | dynamic-ntk | llama3
    factor: float | None = None  # RoPE scale s = target / native
    target_length: int | None = None  # or the target context L' (s = L'/L)
    theta: float | None = None  # new RoPE base (abf; default 500000)
    data: str = ""  # text file/folder, .jsonl/.json, or a datasets name
    data_split: str = "train"  # split of a datasets name
    text_field: str = "text"  # field holding the text in JSONL/datasets
    seq_len: int = 8192  # tokens per training sequence
    steps: int = 1000  # optimizer steps
    out: str = ""  # output folder
    batch_size: int = 1  # sequences per process per micro-step
    grad_accum: int = 8  # micro-steps per optimizer step
    lr: float = 2e-5  # peak learning rate (paper: 2e-5 for 7B/13B)
    warmup_steps: int = 20  # linear warm-up, then constant (LongLoRA README schedule)
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95  # the paper's 0.95 (its code leaves HF's 0.999)
    max_grad_norm: float = 1.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    group_ratio: float = 0.25  # S²-Attn group size G = ratio * seq_len (paper: 1/4)
    group_size: int | None = None  # or G in tokens
    precision: str = "auto"  # auto (bf16 autocast where native) | fp32 | bf16
    gradient_checkpointing: bool = True
    save_every: int = 50  # checkpoint every K optimizer steps
    seed: int = 0
    randomized_positions: int | None = None  # MAXLEN: position_ids sampled from [0, MAXLEN) (Ruoss et al.)
    save_adapter: bool = False  # also keep the unmerged adapter in DIR/adapter
    resume: bool = False  # continue from DIR/checkpoint
    tokenizer: str | None = None  # spec to take the tokenizer from, for a checkpoint saved without one

    # Fields that may differ between a run and its resumption (everything else must match).
    RESUMABLE_CHANGES = ("steps", "out", "resume", "save_every", "save_adapter")
    # Fields added after runs were recorded: left out of the fingerprint while unset, so those runs resume.
    ADDED_LATER = ("tokenizer",)

    def __post_init__(self) -> None:
        """Check every field's type and range (:func:`check_fields`): the Python API refuses what the CLI does."""
        check_fields(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "TrainConfig":
        """Build from recipe/flag values (``-`` or ``_`` in keys); an unknown key is a :class:`UserError`."""
        names = field_names()
        unknown = [k for k in values if k.replace("-", "_") not in names]
        if unknown:
            raise unknown_choice(f"key in {where}", unknown[0], names)
        try:
            return cls(**{k.replace("-", "_"): v for k, v in values.items()})
        except UserError as err:
            raise UserError(f"{where}: {err}" if where != "config" else str(err)) from None

    def fingerprint(self) -> dict[str, Any]:
        """The settings that define a run (resume refuses a checkpoint whose fingerprint differs)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in self.RESUMABLE_CHANGES and not (k in self.ADDED_LATER and v is None)}

    @property
    def method_spec(self) -> Method:
        return TRAIN_METHODS[self.method]


def field_names() -> set[str]:
    """The :class:`TrainConfig` field names (= recipe keys and the flags' ``dest`` names)."""
    return {f.name for f in dataclasses.fields(TrainConfig)}


def load_recipe(path: str) -> dict[str, Any]:
    """Read a YAML recipe into a dict of :class:`TrainConfig` fields (validated)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe {path} does not exist")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"recipe {path} is not valid YAML: {one_line(err, 200)}") from None
    if not isinstance(values, dict):
        raise UserError(f"recipe {path} must be a mapping of training options")
    TrainConfig.from_dict(values, where=path)
    return values


@dataclass(frozen=True)
class Bound:
    """Type and range of a numeric field: ``low <= value <= high``, with ``<`` on the side that is not closed
    (``high`` None: no upper bound); ``optional``: None allowed; ``length``: also ``8k``-style strings."""

    kind: type
    low: float
    high: float | None = None
    low_closed: bool = True
    high_closed: bool = True
    optional: bool = False
    length: bool = False


NUMBERS: dict[str, Bound] = {
    "factor": Bound(float, 1.0, MAX_FACTOR, optional=True),
    "target_length": Bound(int, 1, optional=True, length=True),
    "theta": Bound(float, 1.0, MAX_THETA, low_closed=False, optional=True),
    "seq_len": Bound(int, 2, length=True),
    "steps": Bound(int, 1),
    "batch_size": Bound(int, 1),
    "grad_accum": Bound(int, 1),
    "lr": Bound(float, 0.0, 1.0, low_closed=False),
    "warmup_steps": Bound(int, 0),
    "weight_decay": Bound(float, 0.0, 1.0),
    "adam_beta1": Bound(float, 0.0, 1.0, high_closed=False),  # torch.optim.AdamW: 0 <= beta < 1
    "adam_beta2": Bound(float, 0.0, 1.0, high_closed=False),
    "max_grad_norm": Bound(float, 0.0),  # 0 = no clipping
    "lora_r": Bound(int, 1),
    "lora_alpha": Bound(int, 1),
    "lora_dropout": Bound(float, 0.0, 1.0, high_closed=False),
    "group_ratio": Bound(float, 0.0, 1.0, low_closed=False),
    "group_size": Bound(int, 2, optional=True, length=True),
    "save_every": Bound(int, 1),
    "seed": Bound(int, 0, 2**32 - 1),
    "randomized_positions": Bound(int, 1, optional=True, length=True),
}
CHOICES: dict[str, tuple[str, Any]] = {
    "method": ("training method", TRAIN_METHODS), "rope": ("RoPE method", ROPE_METHODS),
    "precision": ("precision", PRECISIONS),
}
STRINGS = ("model", "method", "rope", "data", "data_split", "text_field", "out", "precision")
OPTIONAL_STRINGS = ("tokenizer",)
BOOLS = ("gradient_checkpointing", "save_adapter", "resume")


def _flag(name: str) -> str:
    return f"{name} (--{name.replace('_', '-')})"


def _coerce(name: str, value: Any, bound: Bound) -> Any:
    """A recipe or API value as the field's type: YAML reads ``2e-5`` as a string, ``1e3`` too; ``8k`` is a
    length. Integral floats become ints. Anything else is returned as is (and refused by the range check)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if bound.length:
            try:
                return parse_length(value)
            except UserError as err:
                raise UserError(f"{_flag(name)}: {err}") from None
        try:
            value = float(value)
        except ValueError:
            return value
    if bound.kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_fields(cfg: TrainConfig) -> None:
    """Types and ranges of every field (numbers finite and in range, choices known, strings strings);
    raises :class:`UserError` naming the field, its flag and the valid range. Values are coerced in place
    (see :func:`_coerce`)."""
    for name, bound in NUMBERS.items():
        value = getattr(cfg, name)
        if value is None and bound.optional:
            continue
        value = _coerce(name, value, bound)
        if bound.kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
            raise UserError(f"{_flag(name)} must be a whole number, got {value!r}")
        check_number(_flag(name), value, bound.low, bound.high, bound.low_closed, bound.high_closed)
        setattr(cfg, name, value)
    for name in STRINGS + OPTIONAL_STRINGS:
        value = getattr(cfg, name)
        if not isinstance(value, str) and not (value is None and name in OPTIONAL_STRINGS):
            raise UserError(f"{_flag(name)} must be a string, got {value!r}")
    for name in BOOLS:
        if not isinstance(getattr(cfg, name), bool):
            raise UserError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    for name, (kind, choices) in CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise unknown_choice(kind, getattr(cfg, name), choices)


def s2attn_group_size(cfg: TrainConfig) -> int:
    """G for ``cfg``; raises :class:`UserError` unless G is even and divides ``seq_len``."""
    if cfg.group_size is not None:
        g = int(cfg.group_size)
    else:
        exact = cfg.seq_len * cfg.group_ratio
        g = int(round(exact))
        if abs(exact - g) > 1e-9:
            raise UserError(f"--group-ratio {cfg.group_ratio} x --seq-len {cfg.seq_len} = {exact:g} is not a whole "
                            "number of tokens; pick a seq-len divisible by 1/ratio or pass --group-size")
    if g < 2 or g % 2:
        raise UserError(f"S²-Attn group size {g} must be an even number >= 2 (half the heads shift by G/2); "
                        "change --group-size/--group-ratio")
    if cfg.seq_len % g:
        raise UserError(f"S²-Attn group size {g} does not divide --seq-len {cfg.seq_len}; "
                        f"use a seq-len that is a multiple of {g} or another --group-size")
    return g


def validate(cfg: TrainConfig) -> None:
    """Check everything that needs no model weights; raise :class:`UserError` with the fix."""
    check_fields(cfg)  # again: fields may have been assigned after construction
    if not cfg.data:
        raise UserError("no training data; pass --data PATH (text file/folder, .jsonl, or a datasets name)")
    if not cfg.out:
        raise UserError("no output folder; pass --out DIR")
    if cfg.randomized_positions is not None and cfg.randomized_positions < cfg.seq_len:
        raise UserError(f"--randomized-positions {cfg.randomized_positions} is below --seq-len {cfg.seq_len}; "
                        "the position range must hold a whole sequence")
    if cfg.method_spec.s2attn:
        s2attn_group_size(cfg)
