"""``longseq train``: LongLoRA, LoRA and full fine-tuning (incl. ABF continual pre-training) on accelerate."""

from __future__ import annotations

import argparse
import json
from typing import Any

from longseq.train.config import TRAIN_METHODS, TrainConfig, field_names, load_recipe
from longseq.train.trainer import train


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Recipe values (``--config``) overridden by every flag the user actually typed."""
    values: dict[str, Any] = load_recipe(args.config) if args.config else {}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    for name in field_names():
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    return TrainConfig.from_dict(values)


def _cmd_train(args: argparse.Namespace) -> int:
    result = train(config_from_args(args))
    print(json.dumps(result, indent=2, default=str))
    return 0


def add_cli(sub: Any) -> None:
    """Register ``longseq train``."""
    p = sub.add_parser(
        "train", help="LongLoRA / LoRA / full fine-tuning with an extended RoPE (accelerate)",
        description="Methods: " + "; ".join(f"{m.name}: {m.help}" for m in TRAIN_METHODS.values())
        + ". Flags override --config recipe values. Multi-GPU: accelerate launch --config_file configs/accelerate/... "
          "-m longseq train ...",
    )
    p.add_argument("model", nargs="?", default=None, help="alias, folder, .gguf or Hub id (default smollm2-135m)")
    p.add_argument("--config", help="YAML recipe (see configs/); flags override its values")
    p.add_argument("--tokenizer", help="take the tokenizer from this spec (for a checkpoint saved without one)")
    p.add_argument("--method", help="longlora (default) | lora | full")
    p.add_argument("--rope", help="RoPE extension: pi (default) | yarn | abf | none | ntk | dynamic-ntk | llama3")
    p.add_argument("--factor", type=float, help="RoPE scale s = target / native length")
    p.add_argument("--target-length", help="target context in tokens (e.g. 16k); s = target / native")
    p.add_argument("--theta", type=float, help="RoPE base (abf: default 500000)")
    p.add_argument("--data", help="text file or folder, .jsonl/.json ({text} or {instruction, output}), or datasets name")
    p.add_argument("--data-split", help="split of a datasets name (default train)")
    p.add_argument("--text-field", help="text field of JSONL / datasets records (default text)")
    p.add_argument("--seq-len", help="tokens per training sequence (e.g. 8192 or 8k)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--out", help="output folder (checkpoints, metrics.jsonl, model/)")
    p.add_argument("--resume", action="store_const", const=True, help="continue the run in --out from its checkpoint")
    p.add_argument("--randomized-positions", metavar="MAXLEN", help="sample position_ids from [0, MAXLEN) per sequence")
    p.add_argument("--batch-size", type=int, help="sequences per process per micro-step (default 1)")
    p.add_argument("--grad-accum", type=int, help="micro-steps per optimizer step (default 8)")
    p.add_argument("--lr", type=float, help="peak learning rate, in (0, 1] (default 2e-5)")
    p.add_argument("--warmup-steps", type=int, help="linear warm-up steps (>= 0), then constant (default 20)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay, in [0, 1] (default 0)")
    p.add_argument("--adam-beta1", type=float, help="AdamW beta1, in [0, 1) (default 0.9)")
    p.add_argument("--adam-beta2", type=float, help="AdamW beta2, in [0, 1) (default 0.95, as in the paper)")
    p.add_argument("--max-grad-norm", type=float, help="gradient clipping norm >= 0 (default 1.0; 0 = off)")
    p.add_argument("--lora-r", type=int, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=int, help="LoRA alpha (default 16)")
    p.add_argument("--lora-dropout", type=float, help="LoRA dropout, in [0, 1) (default 0)")
    p.add_argument("--group-ratio", type=float, help="S²-Attn group size as a fraction of seq-len, in (0, 1] (default 0.25)")
    p.add_argument("--group-size", help="S²-Attn group size in tokens (overrides --group-ratio)")
    p.add_argument("--precision", help="auto (default: bf16 where native) | fp32 | bf16")
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_const", const=False)
    p.add_argument("--save-every", type=int, help="checkpoint every K steps (default 50)")
    p.add_argument("--save-adapter", action="store_const", const=True, help="also keep the unmerged adapter in DIR/adapter")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_cmd_train, omp_wait="spin")
