"""The lab's size presets, extension targets and fine-tuning arms."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabSize:
    """Model, data and budget of one lab run. ``native`` is the pre-training context L."""

    native: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    prose_chars: int  # docstring prose added to the shipped text
    synthetic_docs: int  # passkey + lines documents per corpus
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    finetune_steps: int
    finetune_batch: int
    finetune_lr: float  # full fine-tuning
    lora_lr: float  # LoRA / LongLoRA (adapters need a larger step than full weights)
    eval_samples: int


SIZES: dict[str, LabSize] = {
    "default": LabSize(native=256, hidden=128, layers=4, heads=4, kv_heads=2, intermediate=384,
                       prose_chars=3_000_000, synthetic_docs=3000, pretrain_steps=1200, pretrain_batch=8,
                       pretrain_lr=1.5e-3, finetune_steps=60, finetune_batch=2, finetune_lr=3e-4, lora_lr=1.5e-3,
                       eval_samples=6),
    "quick": LabSize(native=256, hidden=96, layers=3, heads=4, kv_heads=2, intermediate=256,
                     prose_chars=1_000_000, synthetic_docs=1500, pretrain_steps=400, pretrain_batch=8,
                     pretrain_lr=2e-3, finetune_steps=25, finetune_batch=2, finetune_lr=3e-4, lora_lr=1.5e-3,
                     eval_samples=4),
    # For the test suite: every stage runs, nothing is expected to be learned.
    "test": LabSize(native=256, hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64,
                    prose_chars=50_000, synthetic_docs=40, pretrain_steps=3, pretrain_batch=2,
                    pretrain_lr=1e-3, finetune_steps=2, finetune_batch=1, finetune_lr=1e-3, lora_lr=1e-3,
                    eval_samples=1),
}

FACTORS = (4, 8)  # extension targets, as multiples of L
FT_FACTOR = 4  # fine-tuning length = 4L
ZERO_SHOT = ("none", "pi", "ntk", "yarn")  # RoPE methods evaluated without training
LAB_TASKS = ("ppl", "passkey", "lines")  # eval tasks run on every model


@dataclass(frozen=True)
class FineTune:
    """One fine-tuning arm of the lab."""

    name: str
    method: str
    rope: str
    label: str


FINETUNES: tuple[FineTune, ...] = (
    FineTune("ft-direct", "full", "none", "full fine-tune, no RoPE change (extrapolation)"),
    FineTune("ft-pi", "full", "pi", "PI + full fine-tune"),
    FineTune("ft-abf", "full", "abf", "ABF continual pre-training (base 500000)"),
    FineTune("ft-longlora", "longlora", "pi", "LongLoRA (S²-Attn + LoRA + embeddings/norms), PI"),
    FineTune("ft-lora", "lora", "pi", "LoRA only, PI"),
)
