"""The training run of ``longseq train`` on accelerate: model setup, the optimizer loop, resume and export.

Methods and settings: :mod:`longseq.train.config`. The RoPE extension (``--rope``) is applied to the model
before training with :func:`longseq.models.rope.apply_rope`, so the saved checkpoint's config carries it.
Layout of ``--out DIR``::

    DIR/run.json          the resolved configuration (and the fingerprint that --resume checks)
    DIR/metrics.jsonl     one record per optimizer step (loss, lr, tokens/s, ...)
    DIR/checkpoint/       latest resumable state (accelerate save_state + data position), every K steps
    DIR/model/            final Hugging Face checkpoint, LoRA merged (plain transformers loads it)
    DIR/adapter/          with --save-adapter: the peft adapter (+ embeddings/norms for longlora)
    DIR/longseq-run.json  the folder's kind (train), DIR/.longseq.lock: held while a run writes

Nothing is written before every setting, the tokenizer and the data have been checked; a failed write
later is a one-line error that leaves the last checkpoint intact (:func:`longseq.train.checkpoint.write_errors`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from longseq.core.errors import UserError
from longseq.core.fsutil import append_jsonl, atomic_dir, atomic_write_text, read_jsonl
from longseq.core.rundir import claim_kind, lock_run_folder
from longseq.core.runtime import tune_process
from longseq.models.loading import check_output_path, load_config, load_model, load_tokenizer, pick_dtype
from longseq.models.rope import apply_rope, extend_config
from longseq.train.checkpoint import check_out_dir, fingerprint_hash, fingerprint_json, save_checkpoint, write_errors
from longseq.train.config import TrainConfig, s2attn_group_size, validate
from longseq.train.corpus import IGNORE_INDEX, TrainData, load_train_data

# LoRA targets per model family (attention projections); Llama-style names are the default.
LORA_TARGETS: dict[str, list[str]] = {
    "gpt_neox": ["query_key_value", "dense"],
    "default": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


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
    model, tokenizer = load_model(cfg.model, dtype="float32", tokenizer=cfg.tokenizer)
    return prepare_model(model, cfg), tokenizer


def _extends_rope(cfg: TrainConfig) -> bool:
    return cfg.rope != "none" or cfg.theta is not None


def prepare_model(model: Any, cfg: TrainConfig) -> Any:
    """Extend RoPE, pick the training attention, enable gradient checkpointing and wrap with peft.

    ``longlora``: attention "s2attn" with G from :func:`s2attn_group_size`; LoRA on the attention
    projections plus ``modules_to_save`` = the input embedding and every norm (with weight tying kept,
    so a tied lm_head trains together with the embedding, as one tensor). ``lora``: LoRA only.
    ``full``: the model as is, every parameter trainable.
    """
    import torch

    from longseq.train import s2attn

    if _extends_rope(cfg):
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
    """Randomized position ids (Ruoss et al. 2023), shape (rows, seq_len), drawn from [0, MAXLEN) by a
    generator keyed by (seed, step, micro-step)."""
    import torch

    from longseq.models.positions import sample_positions

    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + micro)
    ids = [sample_positions(cfg.seq_len, cfg.randomized_positions, generator=g) for _ in range(rows)]
    return torch.stack(ids).to(device)


def _check_before_loading(cfg: TrainConfig) -> dict[str, Any] | None:
    """Settings, RoPE factor/target/theta and the output folder, all before any weights load.

    Returns the checkpoint state to resume from (see :func:`check_out_dir`).
    """
    validate(cfg)
    check_output_path(cfg.out)
    if _extends_rope(cfg):
        extend_config(load_config(cfg.model), cfg.rope, factor=cfg.factor, target_length=cfg.target_length,
                      theta=cfg.theta)
    claim_kind(cfg.out, "train", record=False)  # a folder of another command is refused
    return check_out_dir(cfg)


def _mixed_precision(cfg: TrainConfig) -> str:
    """accelerate's ``mixed_precision`` for ``cfg.precision`` (auto: bf16 where the hardware has it)."""
    import torch

    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if pick_dtype("auto") == torch.bfloat16 else "fp32"
    return "bf16" if precision == "bf16" else "no"


def _record_run(out: Path, cfg: TrainConfig, data: TrainData, model: Any, step: int) -> None:
    """Write ``run.json`` and drop the metrics records after ``step`` (those steps will be redone)."""
    record = {"config": dataclasses.asdict(cfg), "fingerprint": fingerprint_json(cfg),
              "data": {"kind": data.kind, "examples": len(data), "tokens": data.tokens},
              "parameters": trainable_summary(model)}
    atomic_write_text(out / "run.json", json.dumps(record, indent=2, default=str))
    kept = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("step", 0) <= step]
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))


def _accumulate_step(accelerator: Any, model: Any, cfg: TrainConfig, data: TrainData, step: int,
                     step_idx: list[int]) -> tuple[float, int, int]:
    """Forward and backward every micro-step of optimizer step ``step``; no optimizer update.

    Loss = sum of token losses / loss tokens of the whole optimizer step (all micro-steps, all processes),
    so accumulation and data parallelism give the gradient of one big batch. Returns (this process's
    loss sum, its non-padding tokens, the step's loss tokens over all processes).
    """
    import torch

    world, rank = accelerator.num_processes, accelerator.process_index
    step_tokens = max(int((data.labels[step_idx, 1:] != IGNORE_INDEX).sum()), 1)
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
                logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE_INDEX,
                reduction="sum")
            # accelerate (or DeepSpeed) divides by grad_accum and DDP/FSDP average over processes.
            accelerator.backward(loss_sum * (world * cfg.grad_accum / step_tokens))
        loss_sum_local += float(loss_sum.detach())
        tokens += int(batch["attention_mask"].sum())
    return loss_sum_local, tokens, step_tokens


TOKENIZER_HINT = "pass --tokenizer SPEC (the model whose tokenizer it uses), or copy that tokenizer's files into it"


def _claim_out(out: Path, cfg: TrainConfig, stack: contextlib.ExitStack) -> dict[str, Any] | None:
    """Create ``out``, mark it as a train folder and lock it for this process (main process only); then check
    it again under the lock (another run may have started in between). Returns the state to resume from."""
    with write_errors(out, "the run folder"):
        out.mkdir(parents=True, exist_ok=True)
        claim_kind(out, "train")
    stack.enter_context(lock_run_folder(out))
    return check_out_dir(cfg)


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary with the output paths and the last loss.

    Every bad setting, a missing tokenizer and unusable data are refused before anything is written. A failed
    write (full disk, read-only folder) is a one-line :class:`UserError`; the last checkpoint stays intact.
    """
    from accelerate import Accelerator

    tune_process("spin")  # a training run owns the cores: core/runtime.py
    resume_state = _check_before_loading(cfg)
    out = Path(cfg.out)
    mixed_precision = _mixed_precision(cfg)
    # Data problems (too short, empty, malformed) surface before any weights are loaded.
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, fix=TOKENIZER_HINT)
    data = load_train_data(cfg.data, tokenizer, cfg.seq_len, cfg.data_split, cfg.text_field)
    try:
        accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=cfg.grad_accum)
    except ValueError as err:  # accelerate fixes the precision once per process
        if "already been initialized" not in str(err):
            raise
        raise UserError(f"this Python process already trained with another precision than {cfg.precision!r} "
                        "(accelerate keeps one per process); use the same precision or a new process") from None
    with contextlib.ExitStack() as stack:
        if accelerator.is_main_process:
            resume_state = _claim_out(out, cfg, stack)
        return _run(accelerator, cfg, out, data, resume_state, progress)


def _run(accelerator: Any, cfg: TrainConfig, out: Path, data: TrainData, resume_state: dict[str, Any] | None,
         progress: bool) -> dict[str, Any]:
    """The optimizer loop of :func:`train` from ``resume_state`` (or step 0), checkpoints and the export."""
    import torch
    from accelerate.utils import set_seed
    from tqdm import tqdm
    from transformers import get_constant_schedule_with_warmup

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
        with write_errors(out, "run.json"):
            _record_run(out, cfg, data, model, step)

    per_step = cfg.batch_size * accelerator.num_processes * cfg.grad_accum  # examples per optimizer step
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.method}", unit="step", file=sys.stderr,
               disable=not (progress and accelerator.is_local_main_process), dynamic_ncols=True)
    delay = float(os.environ.get("LONGSEQ_TRAIN_STEP_DELAY", "0"))  # test hook: widens the SIGKILL window
    started, done_tokens, loss_value = time.time(), 0, float("nan")
    while step < cfg.steps:
        t0 = time.time()
        step_idx = step_indices(len(data), step, per_step, cfg.seed)
        loss_sum_local, tokens, step_tokens = _accumulate_step(accelerator, model, cfg, data, step, step_idx)
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
            with write_errors(out, "metrics.jsonl"):
                append_jsonl(out / "metrics.jsonl", {
                    "step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0], "tokens": tokens_all,
                    "tokens_per_s": round(tokens_all / dt, 1), "step_s": round(dt, 3),
                    "elapsed_s": round(time.time() - started, 2)})
        bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tokens_all / dt:.0f}")
        bar.update(1)
        if step % cfg.save_every == 0 or step == cfg.steps:
            with write_errors(out, "the checkpoint"):
                save_checkpoint(accelerator, out, {"step": step, "examples_seen": step * per_step,
                                                   "fingerprint": fingerprint_hash(cfg)})
        if delay:
            time.sleep(delay)
    bar.close()
    result = {"out": str(out), "steps": step, "loss": loss_value, "tokens": done_tokens,
              "parameters": trainable_summary(model)}
    with write_errors(out, "the final model"):
        result.update(export(accelerator, model, tokenizer, cfg))
    return result


def _reduce_sum(accelerator: Any, value: float) -> float:
    """``value`` summed over every process."""
    import torch

    if accelerator.num_processes == 1:
        return value
    return float(accelerator.reduce(torch.tensor(value, device=accelerator.device), reduction="sum"))


# ------------------------------------------------------------------------------------------ export


def export(accelerator: Any, model: Any, tokenizer: Any, cfg: TrainConfig) -> dict[str, Any]:
    """Write DIR/model (merged HF checkpoint, full attention, extended RoPE) and optionally DIR/adapter."""
    from longseq.train import s2attn

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
