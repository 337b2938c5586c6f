"""Encoder-only transformer with pluggable (randomized) positional encodings.

Ruoss et al., "Randomized Positional Encodings Boost Length Generalization of Transformers" (ACL 2023,
arXiv 2305.16843); reference: google-deepmind/randomized_positional_encodings (``models/``).

Architecture as in the reference ``models/transformer.py``: non-causal, post-LN, embeddings scaled by
sqrt(d), no biases in q/k/v/o, ReLU FFN, dropout 0.1 after attention and FFN and, for the absolute PEs only,
after adding the position encoding (only in training: the reference leaves it on at evaluation, a defect we
do not copy), linear read-out, and Haiku's initializers (:func:`init_like_reference`). Shapes: B batch, T tape length, H heads, D width,
Dh = D / H head width.

Positional encodings (``PES``, named in :mod:`longseq.lengthgen.protocol` so that validation needs no
torch): ``none``, ``sin_cos``, ``learned``, ``rope``, ``relative`` (Transformer-XL), ``alibi`` and
``randomized_<pe>`` for each but ``none``. A randomized PE replaces the positions 0..T-1 with
:func:`longseq.models.positions.sample_positions` (an ordered random subset of [0, L)),
drawn anew at every forward pass, in training and evaluation alike. As in the reference, absolute PEs draw
once per forward pass and the attention-level PEs (rope, relative, alibi) draw once per layer; set
``ModelConfig.resample="forward"`` to share one draw across layers. All sequences of a batch share a draw.

Relative PE: the Transformer-XL logit ``(q_i+u)·k_j + (q_i+v)·W_R R(p_i - p_j)`` with R the sinusoid of
the signed distance. We randomize positions and use their exact signed differences; the reference samples
distances instead, mirrors one side, and gathers outside its L-row table (its issue #2), which we avoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from longseq.core.errors import UserError, unknown_choice
from longseq.lengthgen.protocol import ABSOLUTE, split_pe
from longseq.models.positions import sample_positions


@dataclass
class ModelConfig:
    """Model hyper-parameters; the defaults are the paper's (5 layers, width 64, 8 heads, FFN 256)."""

    vocab_size: int  # input tokens, plus one blank placeholder appended by the model
    output_size: int
    pe: str = "none"
    d_model: int = 64
    n_layers: int = 5
    n_heads: int = 8
    d_ff: int = 256
    dropout: float = 0.1
    max_len: int = 2048  # L: randomized positions range, and the rows of the learned table
    max_time: float = 10_000.0  # sinusoid / rotary base
    resample: str = "layer"  # rope/relative/alibi draw per "layer" (reference) or once per "forward"

    def __post_init__(self) -> None:
        split_pe(self.pe)
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2 or self.d_model % 2:
            raise UserError(f"d_model={self.d_model} must split into {self.n_heads} heads of even width")
        if self.resample not in ("layer", "forward"):
            raise unknown_choice("resample mode", self.resample, ("layer", "forward"))


def sinusoid(positions: torch.Tensor, dim: int, max_time: float = 10_000.0) -> torch.Tensor:
    """``(T,)`` positions -> ``(T, dim)`` table ``[sin(p w_0..), cos(p w_0..)]`` (not interleaved),
    ``w_i = max_time^(-2i/dim)`` (Vaswani et al. 2017, laid out as in the reference)."""
    freqs = max_time ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
    angles = positions.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def rotate(x: torch.Tensor, positions: torch.Tensor, max_time: float = 10_000.0) -> torch.Tensor:
    """RoPE (Su et al. 2021) on interleaved pairs (2k, 2k+1), as in the reference.

    x: ``(B, H, T, Dh)``; positions: ``(T,)``; angle ``p * max_time^(-k/(Dh/2))``, k = 0..Dh/2-1.
    """
    dh = x.shape[-1]
    freqs = max_time ** (-torch.arange(dh // 2, dtype=torch.float32, device=x.device) / (dh // 2))
    angles = positions.float()[:, None] * freqs[None, :]  # (T, Dh/2)
    cos, sin = angles.cos(), angles.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al. 2022), the fairseq recipe: geometric from 2^(-8/h); for a head
    count that is not a power of two, the next power's odd-indexed slopes fill up the rest."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_2(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = power_of_2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(power_of_2(closest) + extra)


def alibi_bias(positions: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """Encoder ALiBi bias ``(H, T, T)``: ``-m_h (|p_i - p_j| - 0.5 [j < i])``; the half step on keys before
    the query breaks the left/right symmetry (reference ``models/positional_encodings.py``)."""
    p = positions.float()
    dist = (p[:, None] - p[None, :]).abs()
    dist = dist - 0.5 * (p[None, :] < p[:, None]).float()
    return -slopes[:, None, None].to(dist) * dist[None]


class Attention(nn.Module):
    """Multi-head self-attention with the PE applied inside attention (rope, relative, alibi)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.base, _ = split_pe(cfg.pe)
        self.h, self.dh, self.max_time = cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.max_time
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        if self.base == "relative":
            self.r_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)  # W_R
            self.u = nn.Parameter(torch.randn(self.h, 1, self.dh) * 0.02)
            self.v = nn.Parameter(torch.randn(self.h, 1, self.dh) * 0.02)
        if self.base == "alibi":
            self.register_buffer("slopes", alibi_slopes(cfg.n_heads), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x ``(B, T, D)``, positions ``(T,)`` -> ``(B, T, D)``."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        scale = self.dh**-0.5
        mask = None
        if self.base == "rope":
            q, k = rotate(q, positions, self.max_time), rotate(k, positions, self.max_time)
        elif self.base == "alibi":
            mask = alibi_bias(positions, self.slopes).to(q.dtype)  # added after the 1/sqrt(Dh) scaling
        elif self.base == "relative":
            q, k = self._relative_qk(q, k, positions, d)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def _relative_qk(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, d: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold the Transformer-XL logit into one dot product so fused attention can run it.

        ``(q_i+v)·W_R R(p_i-p_j) = w_i·R(p_i-p_j)`` with ``w_i = W_R^T (q_i+v)`` (D wide), and by the angle
        difference formulas ``R(p_i-p_j) = [s_i c_j - c_i s_j, c_i c_j + s_i s_j]`` with s, c the sin/cos of
        ``p w``; so the term is ``a_i·[c_j, s_j]`` with ``a_i = [w_s s_i + w_c c_i, w_c s_i - w_s c_i]``. This
        costs O(T^2 D) without materializing the ``(T, T, D)`` relative table (T = 1500 at test time).
        """
        w = torch.einsum("bhtm,hmr->bhtr", q + self.v, self.r_proj.weight.view(self.h, self.dh, d))
        table = sinusoid(positions, d, self.max_time).to(q.dtype)  # (T, D) = [s | c]
        s, c = table.chunk(2, dim=-1)
        ws, wc = w.chunk(2, dim=-1)
        a = torch.cat([ws * s + wc * c, wc * s - ws * c], dim=-1)  # (B, H, T, D)
        kr = torch.cat([c, s], dim=-1).expand(q.shape[0], self.h, -1, -1)
        return torch.cat([q + self.u, a], dim=-1), torch.cat([k, kr], dim=-1)


class Block(nn.Module):
    """Post-LN encoder block: ``x = LN(x + drop(attn(x)))``, ``x = LN(x + drop(ffn(x)))``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg)
        self.ffn = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.ReLU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.drop(self.attn(x, positions)))
        return self.ln2(x + self.drop(self.ffn(x)))


def _trunc_normal(weight: torch.Tensor, std: float) -> None:
    """Haiku's ``TruncatedNormal(std)``: a normal truncated at two standard deviations, not rescaled."""
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def init_like_reference(model: "Encoder") -> None:
    """The reference's parameter initialization (Haiku defaults, ``models/transformer.py``): every linear
    layer ``TruncatedNormal(1 / sqrt(fan_in))`` with zero biases, the input embedding
    ``TruncatedNormal(0.02)`` (before the sqrt(d) scaling), a learned position table ``TruncatedNormal(1)``;
    LayerNorm scale 1 and offset 0 and the relative PE's biases N(0, 0.02) are PyTorch's/ours already."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            _trunc_normal(module.weight, module.in_features**-0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    _trunc_normal(model.embed.weight, 0.02)
    if model.base == "learned":
        _trunc_normal(model.pos_table.weight, 1.0)


class Encoder(nn.Module):
    """The length-generalization transformer: token ids ``(B, T)`` -> logits ``(B, T, output_size)``.

    The blank placeholder of the output slots is token id ``vocab_size`` (:attr:`blank`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.base, self.randomized = split_pe(cfg.pe)
        self.blank = cfg.vocab_size
        self.embed = nn.Embedding(cfg.vocab_size + 1, cfg.d_model)
        if self.base == "learned":
            self.pos_table = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.head = nn.Linear(cfg.d_model, cfg.output_size)
        # Source of randomized positions: torch's global RNG unless set (evaluation sets its own).
        self.position_generator: torch.Generator | None = None
        init_like_reference(self)

    def positions(self, t: int, device: torch.device) -> torch.Tensor:
        """Positions for a tape of length ``t``: ``0..t-1``, or a fresh ordered random subset of [0, L)."""
        if not self.randomized:
            if self.base == "learned" and t > self.cfg.max_len:
                raise UserError(f"tape length {t} exceeds the learned table ({self.cfg.max_len} rows); raise --max-len")
            return torch.arange(t, device=device)
        if t > self.cfg.max_len:
            raise UserError(
                f"tape length {t} (input + output slots) exceeds the randomized range L={self.cfg.max_len}; "
                "raise --max-len or shorten --test-lengths"
            )
        return sample_positions(t, self.cfg.max_len, generator=self.position_generator).to(device)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        pos = self.positions(t, tokens.device)
        if self.base == "sin_cos":
            x = self.drop(x + sinusoid(pos, self.cfg.d_model, self.cfg.max_time).to(x.dtype))
        elif self.base == "learned":
            x = self.drop(x + self.pos_table(pos))
        per_layer = self.randomized and self.base not in ABSOLUTE and self.cfg.resample == "layer"
        for i, block in enumerate(self.blocks):
            if per_layer and i > 0:
                pos = self.positions(t, tokens.device)
            x = block(x, pos)
        return self.head(x)
