"""``longseq train``: LongLoRA, LoRA and full fine-tuning (incl. ABF continual pre-training) on accelerate.

Methods (:data:`METHODS`):
  * ``longlora`` - Chen et al., "LongLoRA", arXiv 2309.12307: S²-Attn (:mod:`longseq.s2attn`) during
    training + LoRA (peft; r=8, alpha=16 on q/k/v/o) + fully trainable token embedding and every norm
    ("LoRA+", paper Table 2). lm_head is trained only where it is tied to the embedding.
  * ``lora``     - the paper's baseline: the same LoRA, full attention, nothing else trainable.
  * ``full``     - every weight trained, full attention. With ``--rope abf --theta 500000`` on packed
    long text this is Llama 2 Long's ABF continual pre-training (Xiong et al., arXiv 2309.16039).

The RoPE extension (``--rope``) is applied to the model before training with :func:`longseq.rope.apply_rope`,
so the saved checkpoint's config carries it. Layout of ``--out DIR``::

    DIR/run.json          the resolved configuration (and the fingerprint that --resume checks)
    DIR/metrics.jsonl     one record per optimizer step (loss, lr, tokens/s, ...)
    DIR/checkpoint/       latest resumable state (accelerate save_state + data position), every K steps
    DIR/model/            final Hugging Face checkpoint, LoRA merged (plain transformers loads it)
    DIR/adapter/          with --save-adapter: the peft adapter (+ embeddings/norms for longlora)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longseq.core.errors import UserError, unknown_choice
from longseq.core.fsutil import append_jsonl, atomic_dir, atomic_write_text, read_jsonl


@dataclass(frozen=True)
class Method:
    """What a training method makes trainable and which attention it trains with."""

    name: str
    s2attn: bool
    lora: bool
    embed_and_norms: bool
    help: str


METHODS: dict[str, Method] = {
    "longlora": Method("longlora", True, True, True, "S²-Attn + LoRA + trainable embeddings and norms (LongLoRA)"),
    "lora": Method("lora", False, True, False, "LoRA on attention only, full attention (LongLoRA's baseline)"),
    "full": Method("full", False, False, False, "every weight trained, full attention (e.g. ABF continual pre-training)"),
}

# LoRA targets per model family (attention projections); Llama-style names are the default.
LORA_TARGETS: dict[str, list[str]] = {
    "gpt_neox": ["query_key_value", "dense"],
    "default": ["q_proj", "k_proj", "v_proj", "o_proj"],
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

    # Fields that may differ between a run and its resumption (everything else must match).
    RESUMABLE_CHANGES = ("steps", "out", "resume", "save_every", "save_adapter")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k.replace("-", "_") not in names]
        if unknown:
            raise unknown_choice(f"key in {where}", unknown[0], names)
        return cls(**{k.replace("-", "_"): v for k, v in values.items()})

    def fingerprint(self) -> dict[str, Any]:
        """The settings that define a run (resume refuses a checkpoint whose fingerprint differs)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RESUMABLE_CHANGES}

    @property
    def method_spec(self) -> Method:
        return METHODS[self.method]


def load_recipe(path: str) -> dict[str, Any]:
    """Read a YAML recipe into a dict of :class:`TrainConfig` fields (validated)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe {path} does not exist")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"recipe {path} is not valid YAML: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(values, dict):
        raise UserError(f"recipe {path} must be a mapping of training options")
    TrainConfig.from_dict(values, where=path)
    return values


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
    from longseq.models.rope import METHODS as ROPE_METHODS

    if cfg.method not in METHODS:
        raise unknown_choice("training method", cfg.method, METHODS)
    if cfg.rope not in ROPE_METHODS:
        raise unknown_choice("RoPE method", cfg.rope, ROPE_METHODS)
    if cfg.precision not in PRECISIONS:
        raise unknown_choice("precision", cfg.precision, PRECISIONS)
    if not cfg.data:
        raise UserError("no training data; pass --data PATH (text file/folder, .jsonl, or a datasets name)")
    if not cfg.out:
        raise UserError("no output folder; pass --out DIR")
    for name in ("seq_len", "steps", "batch_size", "grad_accum", "save_every", "lora_r"):
        if int(getattr(cfg, name)) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.seq_len < 2:
        raise UserError("--seq-len must be >= 2")
    if cfg.lr <= 0:
        raise UserError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.randomized_positions is not None and cfg.randomized_positions < cfg.seq_len:
        raise UserError(f"--randomized-positions {cfg.randomized_positions} is below --seq-len {cfg.seq_len}; "
                        "the position range must hold a whole sequence")
    if cfg.method_spec.s2attn:
        s2attn_group_size(cfg)


# ------------------------------------------------------------------------------------------ model setup


def _lora_targets(model: Any) -> list[str]:
    return LORA_TARGETS.get(model.config.model_type, LORA_TARGETS["default"])


def _extra_trainable(model: Any) -> list[str]:
    """Module-name suffixes of the input embedding and every norm layer ("embed" and "norm" in LongLoRA)."""
    emb = model.get_input_embeddings()
    names = set()
    for name, module in model.named_modules():
        if module is emb or "norm" in type(module).__name__.lower():
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def build_model(cfg: TrainConfig) -> tuple[Any, Any]:
    """Load the model (fp32 master weights) and :func:`prepare_model` it; returns (model, tokenizer)."""
    from longseq.models.loading import load_model

    model, tokenizer = load_model(cfg.model, dtype="float32")
    return prepare_model(model, cfg), tokenizer


def prepare_model(model: Any, cfg: TrainConfig) -> Any:
    """Extend RoPE, pick the training attention, enable gradient checkpointing and wrap with peft.

    ``longlora``: attention "s2attn" with G from :func:`s2attn_group_size`; LoRA on the attention
    projections plus ``modules_to_save`` = the input embedding and every norm (with weight tying kept,
    so a tied lm_head trains together with the embedding, as one tensor). ``lora``: LoRA only.
    ``full``: the model as is, every parameter trainable.
    """
    import torch

    from . import s2attn
    from longseq.models.rope import apply_rope

    if cfg.rope != "none" or cfg.theta is not None:
        apply_rope(model, cfg.rope, factor=cfg.factor, target_length=cfg.target_length, theta=cfg.theta)
    model.config.use_cache = False
    spec = cfg.method_spec
    if spec.s2attn:
        s2attn.register()
        model.config.s2attn_group_size = s2attn_group_size(cfg)
        model.set_attn_implementation(s2attn.IMPLEMENTATION)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if spec.lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(cfg.seed)  # LoRA A init
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        extra = _extra_trainable(model) if spec.embed_and_norms else None
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                          target_modules=_lora_targets(model), modules_to_save=extra, task_type="CAUSAL_LM",
                          ensure_weight_tying=bool(extra) and tied)
        model = get_peft_model(model, lcfg)
    model.train()
    return model


def trainable_summary(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": train, "total": total}


# ------------------------------------------------------------------------------------------ checkpoints


def _fingerprint_hash(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_out_dir(cfg: TrainConfig) -> dict[str, Any] | None:
    """Refuse to clobber another run. Returns the checkpoint state to resume from, or None to start fresh."""
    out = Path(cfg.out)
    run_file = out / "run.json"
    if out.exists() and any(out.iterdir()) and not run_file.is_file():
        raise UserError(f"{out} exists and is not a longseq training folder; choose another --out")
    if not run_file.is_file():
        return None
    if not cfg.resume:
        raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    saved = json.loads(run_file.read_text())
    ours = json.loads(json.dumps(cfg.fingerprint(), default=str))
    if saved.get("fingerprint") != ours:
        diff = sorted(k for k in set(saved.get("fingerprint", {})) | set(ours)
                      if saved.get("fingerprint", {}).get(k) != ours.get(k))
        raise UserError(f"{out} holds a checkpoint of another run (differs in: {', '.join(diff)}); "
                        "resume with the same settings or choose another --out")
    ckpt = _latest_checkpoint(out)
    if ckpt is None:
        return None
    return json.loads((ckpt / "state.json").read_text()) | {"path": str(ckpt)}


def _latest_checkpoint(out: Path) -> Path | None:
    # A kill between the two renames in save_checkpoint leaves only checkpoint.old; it is still complete.
    for name in ("checkpoint", "checkpoint.old"):
        p = out / name
        if (p / "state.json").is_file():
            return p
    return None


def save_checkpoint(accelerator: Any, out: Path, state: dict[str, Any]) -> None:
    """accelerate ``save_state`` (model, optimizer, scheduler, RNG) + ``state.json``, swapped in atomically."""
    tmp, final, old = out / "checkpoint.tmp", out / "checkpoint", out / "checkpoint.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()  # every process's RNG file is in before the swap
    if accelerator.is_main_process:
        atomic_write_text(tmp / "state.json", json.dumps(state, indent=2))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# ------------------------------------------------------------------------------------------ training


def step_indices(n: int, step: int, per_step: int, seed: int) -> list[int]:
    """Example indices of optimizer step ``step``: a fresh seeded permutation per epoch, read in order.

    The data position is a pure function of (step, seed), so a resumed run sees exactly the examples
    the uninterrupted run would have seen.
    """
    import torch

    out = []
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        out.append(int(torch.randperm(n, generator=g)[offset]))
    return out


def _positions(cfg: TrainConfig, step: int, micro: int, rows: int, device: Any) -> Any:
    """Randomized position ids (Ruoss et al. 2023) from a generator keyed by (seed, step, micro-step)."""
    import torch

    from longseq.models.positions import sample_positions

    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + micro)
    return torch.stack([sample_positions(cfg.seq_len, cfg.randomized_positions, generator=g) for _ in range(rows)]).to(device)


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary with the output paths and the last loss."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm
    from transformers import get_constant_schedule_with_warmup

    from transformers import AutoTokenizer

    from longseq.train.corpus import load_train_data
    from longseq.models.loading import local_dir, pick_dtype
    from longseq.core.runtime import tune_process

    tune_process()

    validate(cfg)
    if cfg.rope != "none" or cfg.theta is not None:  # factor/target/theta errors before any weights load
        from longseq.models.loading import load_config
        from longseq.models.rope import extend_config

        extend_config(load_config(cfg.model), cfg.rope, factor=cfg.factor, target_length=cfg.target_length,
                      theta=cfg.theta)
    resume_state = check_out_dir(cfg)
    out = Path(cfg.out)
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if pick_dtype("auto") == torch.bfloat16 else "fp32"
    # Data problems (too short, empty, malformed) surface before any weights are loaded.
    tokenizer = AutoTokenizer.from_pretrained(str(local_dir(cfg.model)))
    data = load_train_data(cfg.data, tokenizer, cfg.seq_len, cfg.data_split, cfg.text_field)
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no",
                              gradient_accumulation_steps=cfg.grad_accum)
    ds = getattr(accelerator.state, "deepspeed_plugin", None)
    if ds is not None:  # no prepared DataLoader to read the micro-batch size from
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    set_seed(cfg.seed)
    model, tokenizer = build_model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    # The scheduler is stepped by hand once per optimizer step (accelerate's prepared scheduler would
    # step once per process) and registered so that save_state/load_state carry it.
    scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=cfg.warmup_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    step = 0
    if resume_state is not None:
        accelerator.load_state(resume_state["path"])
        step = int(resume_state["step"])
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        summary = trainable_summary(model)
        atomic_write_text(out / "run.json", json.dumps({"config": dataclasses.asdict(cfg),
                                                        "fingerprint": json.loads(json.dumps(cfg.fingerprint(), default=str)),
                                                        "data": {"kind": data.kind, "examples": len(data), "tokens": data.tokens},
                                                        "parameters": summary}, indent=2, default=str))
        # Records written after the last checkpoint belong to steps that will be redone.
        kept = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("step", 0) <= step]
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))

    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = cfg.batch_size * world * cfg.grad_accum  # examples per optimizer step
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.method}", unit="step", file=sys.stderr,
               disable=not (progress and accelerator.is_local_main_process), dynamic_ncols=True)
    delay = float(os.environ.get("LONGSEQ_TRAIN_STEP_DELAY", "0"))  # test hook: widens the SIGKILL window
    started, done_tokens, loss_value = time.time(), 0, float("nan")
    while step < cfg.steps:
        t0 = time.time()
        step_idx = step_indices(len(data), step, per_step, cfg.seed)
        # Loss = sum of token losses / loss tokens of the whole optimizer step (all micro-steps, all
        # processes), so accumulation and data parallelism give the gradient of one big batch.
        step_tokens = max(int((data.labels[step_idx, 1:] != -100).sum()), 1)
        loss_sum_local, tokens = 0.0, 0
        for micro in range(cfg.grad_accum):
            base = (micro * world + rank) * cfg.batch_size
            idx = step_idx[base: base + cfg.batch_size]
            batch = {k: getattr(data, k)[idx].to(accelerator.device) for k in ("input_ids", "labels", "attention_mask")}
            if cfg.randomized_positions:
                batch["position_ids"] = _positions(cfg, step, micro * world + rank, len(idx), accelerator.device)
            with accelerator.accumulate(model):  # no gradient sync (DDP/DeepSpeed) until the last micro-step
                with accelerator.autocast():
                    # attention_mask is always passed: without it transformers reads jumps in
                    # position_ids (randomized positions) as packed-sequence boundaries.
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   position_ids=batch.get("position_ids")).logits
                loss_sum = torch.nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100,
                    reduction="sum")
                # accelerate (or DeepSpeed) divides by grad_accum and DDP/FSDP average over processes.
                accelerator.backward(loss_sum * (world * cfg.grad_accum / step_tokens))
            loss_sum_local += float(loss_sum.detach())
            tokens += int(batch["attention_mask"].sum())
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = _reduce_sum(accelerator, loss_sum_local) / step_tokens
        tokens_all = int(_reduce_sum(accelerator, float(tokens)))
        done_tokens += tokens_all
        dt = time.time() - t0
        if accelerator.is_main_process:
            append_jsonl(out / "metrics.jsonl", {"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                                                 "tokens": tokens_all, "tokens_per_s": round(tokens_all / dt, 1),
                                                 "step_s": round(dt, 3), "elapsed_s": round(time.time() - started, 2)})
        bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tokens_all / dt:.0f}")
        bar.update(1)
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_checkpoint(accelerator, out, {"step": step, "examples_seen": step * per_step,
                                               "fingerprint": _fingerprint_hash(cfg.fingerprint())})
        if delay:
            time.sleep(delay)
    bar.close()
    result = {"out": str(out), "steps": step, "loss": loss_value, "tokens": done_tokens,
              "parameters": trainable_summary(model)}
    result.update(export(accelerator, model, tokenizer, cfg))
    return result


# The package-level name (``longseq.train_model``): ``longseq.train`` is this submodule once it is imported.
train_model = train


def _reduce_sum(accelerator: Any, value: float) -> float:
    import torch

    if accelerator.num_processes == 1:
        return value
    return float(accelerator.reduce(torch.tensor(value, device=accelerator.device), reduction="sum"))


def export(accelerator: Any, model: Any, tokenizer: Any, cfg: TrainConfig) -> dict[str, Any]:
    """Write DIR/model (merged HF checkpoint, full attention, extended RoPE) and optionally DIR/adapter."""
    from . import s2attn

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model)  # gathers FSDP / ZeRO-3 shards
    paths: dict[str, Any] = {}
    if not accelerator.is_main_process:
        return paths
    out = Path(cfg.out)
    if cfg.method_spec.lora and cfg.save_adapter:
        with atomic_dir(out / "adapter", overwrite=True) as tmp:
            unwrapped.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        paths["adapter"] = str(out / "adapter")
    # LoRA is merged from the unwrapped model (complete under one process, DDP and ZeRO-2); full
    # fine-tuning saves the gathered state dict, which is also right for FSDP and ZeRO-3.
    merged = unwrapped.merge_and_unload() if cfg.method_spec.lora else unwrapped
    cfg_obj = merged.config
    cfg_obj.use_cache = True
    for key in ("s2attn_group_size", "s2attn_group_ratio"):
        if hasattr(cfg_obj, key):
            delattr(cfg_obj, key)
    if cfg_obj._attn_implementation == s2attn.IMPLEMENTATION:
        merged.set_attn_implementation("sdpa")
    cfg_obj.longseq_training = {"method": cfg.method, "seq_len": cfg.seq_len, "steps": cfg.steps, "rope": cfg.rope,
                                "data": cfg.data}
    if merged.is_activation_checkpointing:
        merged.activation_checkpointing_disable()
    with atomic_dir(out / "model", overwrite=True) as tmp:
        merged.save_pretrained(tmp, state_dict=None if cfg.method_spec.lora else state)
        tokenizer.save_pretrained(tmp)
    paths["model"] = str(out / "model")
    return paths


# ------------------------------------------------------------------------------------------ CLI


_FLAG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Recipe values (``--config``) overridden by every flag the user actually typed."""
    values: dict[str, Any] = load_recipe(args.config) if args.config else {}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    for name in _FLAG_FIELDS:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    if args.model is not None:
        values["model"] = args.model
    return TrainConfig.from_dict(values)


def _cmd_train(args: argparse.Namespace) -> int:
    from longseq.core.parsing import parse_length

    if args.target_length is not None:
        args.target_length = parse_length(args.target_length)
    for name in ("seq_len", "randomized_positions", "group_size"):
        if getattr(args, name) is not None:
            setattr(args, name, parse_length(getattr(args, name)))
    cfg = config_from_args(args)
    result = train(cfg)
    print(json.dumps(result, indent=2, default=str))
    return 0


def add_cli(sub: Any) -> None:
    """Register ``longseq train``."""
    p = sub.add_parser(
        "train", help="LongLoRA / LoRA / full fine-tuning with an extended RoPE (accelerate)",
        description="Methods: " + "; ".join(f"{m.name}: {m.help}" for m in METHODS.values())
        + ". Flags override --config recipe values. Multi-GPU: accelerate launch --config_file configs/accelerate/... "
          "-m longseq train ...",
    )
    p.add_argument("model", nargs="?", default=None, help="alias, folder, .gguf or Hub id (default smollm2-135m)")
    p.add_argument("--config", help="YAML recipe (see configs/); flags override its values")
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
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-5)")
    p.add_argument("--warmup-steps", type=int, help="linear warm-up steps, then constant (default 20)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--adam-beta2", type=float, help="AdamW beta2 (default 0.95, as in the paper)")
    p.add_argument("--max-grad-norm", type=float, help="gradient clipping (default 1.0; 0 = off)")
    p.add_argument("--lora-r", type=int, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=int, help="LoRA alpha (default 16)")
    p.add_argument("--lora-dropout", type=float)
    p.add_argument("--group-ratio", type=float, help="S²-Attn group size as a fraction of seq-len (default 0.25)")
    p.add_argument("--group-size", help="S²-Attn group size in tokens (overrides --group-ratio)")
    p.add_argument("--precision", help="auto (default: bf16 where native) | fp32 | bf16")
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_const", const=False)
    p.add_argument("--save-every", type=int, help="checkpoint every K steps (default 50)")
    p.add_argument("--save-adapter", action="store_const", const=True, help="also keep the unmerged adapter in DIR/adapter")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_cmd_train)
