"""The lab's size presets, extension targets and fine-tuning arms."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LabSize:
    """Model, data and budget of one lab run. ``native`` is the pre-training context L."""

    native: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int  # lab tokenizer size (byte-level BPE trained on the lab corpus)
    prose_chars: int  # at most this much standard-library docstring prose
    retrieval_share: float  # share of training rows that end with a passkey or lines document
    # Pre-training runs in four phases, each a ``longseq train`` run: (1) ``copy_*``: rows of repeated lists of
    # words and numbers, where the model learns to copy from its context, digits included; (2) ``short_*``: rows
    # that all end with curriculum documents; (3) ``pretrain_*``: rows of L tokens, ``retrieval_share`` of them
    # curriculum; (1-3) at ``pretrain_lr``; (4) ``anneal_steps`` more such rows at the lower ``anneal_lr``
    # (0 steps: no fourth phase).
    copy_len: int
    copy_steps: int
    copy_batch: int
    short_len: int
    short_steps: int
    short_batch: int
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    anneal_steps: int
    anneal_lr: float
    finetune_steps: int
    finetune_batch: int
    finetune_lr: float  # full fine-tuning
    lora_lr: float  # LoRA / LongLoRA (adapters need a larger step than full weights)
    seeds: int  # fine-tuning seeds per arm
    eval_samples: int
    lengthgen_steps: int  # the randomized-positions benchmark run (Even Pairs, RoPE vs randomized RoPE)
    lengthgen_seeds: int


_DEFAULT = LabSize(native=512, hidden=384, layers=5, heads=6, kv_heads=2, intermediate=1024, vocab=1024,
                   prose_chars=2_000_000, retrieval_share=0.8, copy_len=128, copy_steps=800, copy_batch=16,
                   short_len=256, short_steps=300, short_batch=8, pretrain_steps=400, pretrain_batch=4,
                   pretrain_lr=5e-4, anneal_steps=300, anneal_lr=2e-4, finetune_steps=20, finetune_batch=2,
                   finetune_lr=3e-4, lora_lr=1.5e-3, seeds=2, eval_samples=10, lengthgen_steps=1000,
                   lengthgen_seeds=2)

SIZES: dict[str, LabSize] = {
    "default": _DEFAULT,
    # The default's model and data, trained and judged briefly: a smoke run whose verdicts are not meant to be read.
    "quick": replace(_DEFAULT, copy_steps=150, short_steps=50, pretrain_steps=100, anneal_steps=0, finetune_steps=6,
                     seeds=1, eval_samples=4, lengthgen_steps=300, lengthgen_seeds=1),
    # For the test suite: every stage runs, nothing is expected to be learned.
    "test": LabSize(native=512, hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, vocab=600,
                    prose_chars=50_000, retrieval_share=0.5, copy_len=128, copy_steps=2, copy_batch=2,
                    short_len=256, short_steps=2, short_batch=2, pretrain_steps=3, pretrain_batch=2,
                    pretrain_lr=1e-3, anneal_steps=2, anneal_lr=5e-4, finetune_steps=2, finetune_batch=1,
                    finetune_lr=1e-3, lora_lr=1e-3, seeds=1, eval_samples=1, lengthgen_steps=20, lengthgen_seeds=1),
}

FACTORS = (4, 8)  # extension targets, as multiples of L
FT_FACTOR = 4  # fine-tuning length = 4L
ZERO_SHOT = ("none", "pi", "ntk", "yarn")  # RoPE methods evaluated without training


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
