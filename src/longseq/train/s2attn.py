"""Shifted sparse attention (S²-Attn), the training-time attention of LongLoRA.

Chen et al., "LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models", arXiv 2309.12307
(ICLR 2024), sec. 3.2; reference code dvlab-research/LongLoRA ``llama_attn_replace.py``.

Notation: B batch, H heads, N sequence length, D head dim, G group size (even), h = H // 2.

Heads ``0 .. h-1`` attend causally inside consecutive groups; heads ``h .. H-1`` inside groups shifted by
G/2. For an odd head count the extra head goes to the shifted half (heads with index < H // 2 are
unshifted). This is the *segmented* variant (the reference's current flash-attn path): tokens never
move, the first and the last shifted half-groups are separate short segments, so nothing wraps around
and no token sees a later one (the older roll variant leaks the last G/2 tokens into the first G/2)::

    unshifted heads   |0 ........ G|G ....... 2G|2G ....... 3G|3G ..... N|
    shifted heads     |0 .. G/2|G/2 ...... 3G/2|3G/2 ...... 5G/2|5G/2 .. N|

Any N works; the last segment may be partial. Each half costs O(N * G): the sequence is *viewed* as
N/G rows of G tokens (no copy) and run through ``scaled_dot_product_attention`` with ``is_causal``;
only the short first/last segments need separate calls. Padding masks are applied per segment.

In a model it is registered with transformers' ``AttentionInterface`` as :data:`IMPLEMENTATION`
("s2attn"). As in LongLoRA it is a training device only: in ``eval()`` mode, and whenever a KV cache is
in use, the registered function falls back to full causal attention (``sdpa``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IMPLEMENTATION = "s2attn"
DEFAULT_GROUP_RATIO = 0.25  # the paper's G = N/4 (ablation: N/4 and N/2 best)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None,
            dropout: float) -> torch.Tensor:
    """Causal SDPA over the last two dims; ``mask`` (bool, broadcastable to (..., L, L)) or None."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, dropout_p=dropout)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, dropout_p=dropout)


def _grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: int, start: int,
             keep: torch.Tensor | None, scale: float | None, dropout: float) -> torch.Tensor:
    """Causal attention inside segments [0, start), [start, start+G), [start+G, start+2G), ..., [.., N).

    Args:
        q, k, v: (B, h, N, D).
        keep: None; (B, 1|h, N) bool key mask; or (B, 1|h, N, N) bool full mask (only its diagonal
            blocks are read).

    Returns:
        (B, h, N, D).
    """
    b, h, n, d = q.shape
    dv = v.shape[-1]
    head = min(start, n)
    rows = (n - head) // group
    tail = n - head - rows * group
    sizes = [head, rows * group, tail]
    # split (not slicing): its backward is one cat, where slicing would zero-fill a full-size gradient
    # per segment.
    qs, ks, vs = (x.split(sizes, dim=2) for x in (q, k, v))
    pieces: list[torch.Tensor] = []
    if head:
        pieces.append(_attend(qs[0], ks[0], vs[0], _block(keep, 0, head), scale, dropout))
    if rows:
        # (B, h, rows*G, D) -> (B, h*rows, G, D): the groups become extra "heads" (a view when contiguous).
        qg = qs[1].reshape(b, h * rows, group, d)
        kg = ks[1].reshape(b, h * rows, group, d)
        vg = vs[1].reshape(b, h * rows, group, dv)
        out = _attend(qg, kg, vg, _grouped_mask(keep, head, rows, group, h), scale, dropout)
        pieces.append(out.reshape(b, h, rows * group, dv))
    if tail:
        pieces.append(_attend(qs[2], ks[2], vs[2], _block(keep, n - tail, n), scale, dropout))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)


def _block(keep: torch.Tensor | None, s: int, e: int) -> torch.Tensor | None:
    """Mask for one segment [s, e): (B, 1|h, L, L) bool, or None."""
    if keep is None:
        return None
    if keep.dim() == 3:  # key mask
        return _causal_keep(keep[..., s:e])
    return _causal_full(keep[..., s:e, s:e])


def _grouped_mask(keep: torch.Tensor | None, start: int, rows: int, group: int, h: int) -> torch.Tensor | None:
    """Mask for the (B, h*rows, G, D) view: (B, h*rows | rows, G, G) bool, or None."""
    if keep is None:
        return None
    b, hm = keep.shape[:2]
    end = start + rows * group
    if keep.dim() == 3:
        blocks = _causal_keep(keep[..., start:end].reshape(b, hm, rows, group))  # (B, hm, rows, G, G)
    else:
        sub = keep[..., start:end, start:end].reshape(b, hm, rows, group, rows, group)
        diag = torch.diagonal(sub, dim1=2, dim2=4)  # (B, hm, G, G, rows): the diagonal blocks only
        blocks = _causal_full(diag.permute(0, 1, 4, 2, 3))
    return blocks.expand(b, h, rows, group, group).reshape(b, h * rows, group, group)


def _causal_keep(keep: torch.Tensor) -> torch.Tensor:
    """(..., L) key-keep -> (..., L, L) causal & keep, diagonal always on."""
    length = keep.shape[-1]
    idx = torch.arange(length, device=keep.device)
    causal = idx[:, None] >= idx[None, :]
    return (keep.unsqueeze(-2) & causal) | torch.eye(length, dtype=torch.bool, device=keep.device)


def _causal_full(mask: torch.Tensor) -> torch.Tensor:
    """(..., L, L) allowed-mask -> causal & mask, diagonal always on."""
    length = mask.shape[-1]
    idx = torch.arange(length, device=mask.device)
    causal = idx[:, None] >= idx[None, :]
    return (mask & causal) | torch.eye(length, dtype=torch.bool, device=mask.device)


def _as_keep(mask: torch.Tensor | None, b: int, n: int) -> torch.Tensor | None:
    """Normalize an attention mask to a bool "may attend" tensor: (B, 1, N) key mask or (B, 1|H, N, N).

    Accepts a 2D (B, N) key-padding mask (1/True = real token), or a 4D bool / additive float mask as
    transformers builds them. Returns None when nothing is masked.
    """
    if mask is None:
        return None
    if mask.dim() == 2:
        keep = mask.to(torch.bool)
        if bool(keep.all()):
            return None
        return keep[:, None, -n:]
    if mask.dim() == 4:
        keep = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
        return keep[..., -n:, -n:]
    raise ValueError(f"attention mask must be 2D (batch, seq) or 4D (batch, heads, seq, seq), got {tuple(mask.shape)}")


def shifted_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group_size: int,
                             scale: float | None = None, attention_mask: torch.Tensor | None = None,
                             dropout: float = 0.0) -> torch.Tensor:
    """S²-Attn (LongLoRA, arXiv 2309.12307), causal, segmented (leak-free) variant.

    Args:
        q, k, v: (B, H, N, D); k and v already expanded to H heads for grouped-query attention.
        group_size: G, even, >= 2. Heads with index < H // 2 attend within [0, G), [G, 2G), ...; the
            others within [0, G/2), [G/2, 3G/2), ... . The last segment may be shorter.
        scale: softmax scale (default 1/sqrt(D)).
        attention_mask: optional (B, N) padding mask (1 = token, 0 = padding) or a 4D mask (bool "may
            attend", or additive float) of shape (B, 1|H, N, N); only its diagonal blocks are read.
        dropout: attention dropout probability.

    Returns:
        (B, H, N, D) attention output. Padded query positions get an arbitrary finite value.
    """
    if q.dim() != 4 or k.shape[:3] != q.shape[:3] or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v must be (batch, heads, seq, dim) with equal heads; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)} (expand grouped KV heads first)")
    if group_size < 2 or group_size % 2:
        raise ValueError(f"group size must be an even number >= 2 (the shift is G/2), got {group_size}")
    b, heads, n, _ = q.shape
    keep = _as_keep(attention_mask, b, n)
    half = heads // 2
    sizes = [half, heads - half]
    parts = zip(q.split(sizes, dim=1), k.split(sizes, dim=1), v.split(sizes, dim=1), (0, half), sizes,
                (0, group_size // 2))
    outs = []
    for qh, kh, vh, lo, count, start in parts:
        if count == 0:
            continue
        part_keep = keep if keep is None or keep.shape[1] == 1 else keep[:, lo:lo + count]
        outs.append(_grouped(qh, kh, vh, group_size, start, part_keep, scale, dropout))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def group_size_for(n: int, config: Any) -> int:
    """G for a training sequence of length n: ``config.s2attn_group_size`` if set, else the even number
    nearest below ``n * config.s2attn_group_ratio`` (default 1/4), at least 2."""
    fixed = getattr(config, "s2attn_group_size", None)
    if fixed:
        return int(fixed)
    ratio = getattr(config, "s2attn_group_ratio", None) or DEFAULT_GROUP_RATIO
    return max(2, int(n * ratio) // 2 * 2)


def s2attn_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function (see ``transformers.integrations.sdpa_attention``).

    query (B, H, N, D), key/value (B, Hkv, N, D) after RoPE with the global positions. Returns
    ((B, N, H, D), None). Falls back to full attention outside training or with a KV cache (q_len != kv_len).
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    n = query.shape[2]
    if not module.training or key.shape[2] != n or n < 2:
        if attention_mask is not None and attention_mask.dim() == 2:
            attention_mask = _full_causal_mask(attention_mask, n, key.shape[2])
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = shifted_sparse_attention(query, key, value, group_size_for(n, module.config), scale=scaling,
                                   attention_mask=attention_mask, dropout=dropout)
    return out.transpose(1, 2).contiguous(), None


def _full_causal_mask(pad: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
    """(B, kv) padding mask -> (B, 1, q, kv) bool causal mask for the full-attention fallback."""
    pad = pad[:, -kv_len:].to(torch.bool)
    qpos = torch.arange(kv_len - q_len, kv_len, device=pad.device)
    kpos = torch.arange(kv_len, device=pad.device)
    mask = (qpos[:, None] >= kpos[None, :])[None, None] & pad[:, None, None, :]
    return mask | (~mask.any(-1, keepdim=True))  # an all-padding row attends everywhere instead of NaN


def s2attn_mask(batch_size: int, q_length: int, kv_length: int, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor | None:
    """transformers mask-interface function: pass the 2D padding mask through (O(N), no N x N mask).

    The causal and group structure is applied inside :func:`s2attn_attention_forward`. Packed-sequence
    detection from jumps in ``position_ids`` is deliberately not applied, so randomized positions
    (Ruoss et al.) keep plain causal attention.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask


def register() -> str:
    """Register "s2attn" with transformers' attention and mask interfaces (idempotent); returns the name.

    Then ``model.set_attn_implementation("s2attn")`` (or ``attn_implementation="s2attn"`` at load) makes
    a Llama-family model train with S²-Attn; ``config.s2attn_group_size`` / ``s2attn_group_ratio`` set G.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, s2attn_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, s2attn_mask)
    return IMPLEMENTATION
