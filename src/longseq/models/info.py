"""Model facts without loading weights: parameters, rotary dim, native context, KV-cache sizes."""

from __future__ import annotations

import json
from typing import Any

from longseq.models.loading import load_config
from longseq.core.errors import UserError, one_line
from longseq.models.rope import has_rope, head_dim, native_context_length, rope_dim


def kv_cache_bytes(config: Any, tokens: int, bytes_per_value: int = 2) -> int:
    """KV-cache size: 2 (K and V) x layers x kv_heads x head_dim x tokens x bytes."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim(config) * tokens * bytes_per_value


def count_parameters(config: Any) -> int:
    """Exact parameter count, from a meta-device model (no weights are materialized)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except ValueError as err:  # an encoder (BERT) or another architecture without a causal-LM head
        raise UserError(f"a {type(config).__name__} model is not a causal language model ({one_line(err, 120)}); "
                        "longseq works with decoder-only models such as Llama") from None
    return sum(p.numel() for p in model.parameters())


def model_info(spec: str) -> dict[str, Any]:
    """Architecture, parameter count, native/claimed context, RoPE parameters and KV-cache sizes."""
    config = load_config(spec)
    lengths = {"4k": 4096, "16k": 16384, "32k": 32768, "128k": 131072}
    return {
        "model": spec,
        "architecture": (config.architectures or [config.model_type])[0],
        "parameters": count_parameters(config),
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "attention_heads": config.num_attention_heads,
        "kv_heads": getattr(config, "num_key_value_heads", config.num_attention_heads),
        "rotary_dim": rope_dim(config) if has_rope(config) else None,
        "native_context": native_context_length(config),
        "max_position_embeddings": config.max_position_embeddings,
        "rope_parameters": dict(getattr(config, "rope_parameters", None) or {}),
        "longseq_extension": getattr(config, "longseq_extension", None),
        "kv_cache_bf16_bytes": {k: kv_cache_bytes(config, n) for k, n in lengths.items()},
    }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


NO_ROPE = "none (no rotary position embedding: longseq extend does not apply)"


def format_info(info: dict[str, Any]) -> str:
    """Human-readable form of :func:`model_info`."""
    lines = [
        f"model            {info['model']}",
        f"architecture     {info['architecture']}",
        f"parameters       {info['parameters']:,} ({info['parameters'] / 1e6:.1f}M)",
        f"layers           {info['layers']} (hidden {info['hidden_size']}, heads {info['attention_heads']}, "
        f"kv heads {info['kv_heads']}, rotary dim {info['rotary_dim'] or 'none'})",
        f"native context   {info['native_context']:,} tokens",
        f"max positions    {info['max_position_embeddings']:,}",
        f"rope             {json.dumps(info['rope_parameters'], sort_keys=True) if info['rotary_dim'] else NO_ROPE}",
    ]
    if info["longseq_extension"]:
        lines.append(f"extension        {json.dumps(info['longseq_extension'], sort_keys=True)}")
    lines.append("KV cache (bf16)  " + ", ".join(f"{k}: {_human(v)}" for k, v in info["kv_cache_bf16_bytes"].items()))
    return "\n".join(lines)
