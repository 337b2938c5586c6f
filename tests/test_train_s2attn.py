"""S²-Attn against an independent dense reference built from explicit per-head block masks."""

from __future__ import annotations

import math

import pytest
import torch

from longseq.train.s2attn import register, shifted_sparse_attention


def segment_ids(n: int, group: int, shifted: bool) -> list[int]:
    """Segment index of each token, written out from the definition (not from the implementation)."""
    if not shifted:
        return [t // group for t in range(n)]
    half = group // 2
    return [0 if t < half else 1 + (t - half) // group for t in range(n)]


def dense_reference(q, k, v, group, pad=None):
    """softmax(q k^T / sqrt(D) + mask) v with a full N x N mask per head, in float64."""
    b, h, n, d = q.shape
    out = torch.zeros(b, h, n, v.shape[-1], dtype=torch.float64)
    for head in range(h):
        seg = segment_ids(n, group, shifted=head >= h // 2)
        allowed = torch.tensor([[j <= i and seg[i] == seg[j] for j in range(n)] for i in range(n)])
        for bi in range(b):
            a = allowed.clone()
            if pad is not None:
                a &= pad[bi].bool()[None, :]
            logits = (q[bi, head].double() @ k[bi, head].double().T) / math.sqrt(d)
            logits = logits.masked_fill(~a, float("-inf"))
            w = torch.softmax(logits, -1).nan_to_num(0.0)
            out[bi, head] = w @ v[bi, head].double()
    return out


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n,group", [(16, 4), (16, 8), (13, 4), (21, 6), (7, 8), (10, 2)])
def test_matches_dense_block_mask_reference(heads, n, group):
    g = torch.Generator().manual_seed(heads * 100 + n * 10 + group)
    q, k, v = (torch.randn(2, heads, n, 8, generator=g) for _ in range(3))
    out = shifted_sparse_attention(q, k, v, group)
    ref = dense_reference(q, k, v, group)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_no_future_and_no_wraparound():
    """Changing a late token must not change any earlier output (the roll variant leaks here)."""
    n, group = 16, 8
    q, k, v = (torch.randn(1, 2, n, 4) for _ in range(3))
    base = shifted_sparse_attention(q, k, v, group)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 10.0
    v2[:, :, -1] += 10.0
    moved = shifted_sparse_attention(q, k2, v2, group)
    torch.testing.assert_close(moved[:, :, :-1], base[:, :, :-1])
    # and it is really sparse: the first token of a group ignores everything before it
    k3 = k.clone()
    k3[:, :, :group] += 5.0
    assert torch.equal(shifted_sparse_attention(q, k3, v, group)[:, 0, group:], base[:, 0, group:])


@pytest.mark.parametrize("heads,n,group", [(4, 16, 4), (3, 15, 6)])
def test_padding_mask_matches_reference(heads, n, group):
    q, k, v = (torch.randn(2, heads, n, 8) for _ in range(3))
    pad = torch.ones(2, n, dtype=torch.long)
    pad[0, :3] = 0  # left padding
    pad[1, -4:] = 0  # right padding
    out = shifted_sparse_attention(q, k, v, group, attention_mask=pad)
    ref = dense_reference(q, k, v, group, pad)
    real = pad.bool()[:, None, :, None].expand_as(out)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double()[real], ref[real], atol=1e-5, rtol=1e-5)
    # a 4D boolean mask (what transformers builds) gives the same result
    idx = torch.arange(n)
    mask4 = (idx[:, None] >= idx[None, :])[None, None] & pad.bool()[:, None, None, :]
    out4 = shifted_sparse_attention(q, k, v, group, attention_mask=mask4)
    torch.testing.assert_close(out4[real], out[real])


def test_gradients_are_finite_with_padding():
    q, k, v = (torch.randn(1, 2, 12, 4, requires_grad=True) for _ in range(3))
    pad = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    shifted_sparse_attention(q, k, v, 4, attention_mask=pad).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_group_size_must_be_even():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="even"):
        shifted_sparse_attention(q, q, q, 3)


def test_cost_is_linear_in_length():
    """O(N*G): with G fixed, the largest attention score matrix never exceeds G x G (counted by SDPA calls)."""
    import torch.nn.functional as F

    seen = []
    orig = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(q.shape[-2] * k.shape[-2] * q.shape[:-2].numel())
        return orig(q, k, v, **kw)

    F.scaled_dot_product_attention = spy
    try:
        for n in (64, 128, 256):
            seen.clear()
            shifted_sparse_attention(*(torch.randn(1, 2, n, 4) for _ in range(3)), 16)
            assert sum(seen) <= 2 * n * 16  # two halves, each at most N*G scores
    finally:
        F.scaled_dot_product_attention = orig


@pytest.fixture
def tiny_llama_model(tiny_llama_config):
    """``tiny_llama_model(heads, kv_heads, layers)``: a random in-memory Llama (vocabulary 64, hidden 32)."""
    from transformers import LlamaForCausalLM

    def build(heads=4, kv_heads=2, layers=2):
        torch.manual_seed(0)
        return LlamaForCausalLM(tiny_llama_config(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=layers, num_attention_heads=heads,
                                                  num_key_value_heads=kv_heads, pad_token_id=None))

    return build


def test_registered_in_transformers_and_full_attention_in_eval(tiny_llama_model):
    """In a Llama model with GQA: training mode equals a per-layer dense reference; eval mode equals sdpa."""
    register()
    model = tiny_llama_model()
    ids = torch.randint(0, 64, (2, 24))
    pad = torch.ones(2, 24, dtype=torch.long)
    pad[1, :5] = 0
    model.eval()
    full = model(ids, attention_mask=pad).logits
    model.set_attn_implementation("s2attn")
    model.config.s2attn_group_size = 8
    real_tok = pad.bool()
    # eval: full attention (padded query rows are arbitrary in both, so compare real tokens)
    torch.testing.assert_close(model(ids, attention_mask=pad).logits[real_tok], full[real_tok], atol=1e-5, rtol=1e-5)

    # training mode: capture q/k/v of layer 0 and compare with the dense reference
    model.train()
    captured = {}
    attn = model.model.layers[0].self_attn
    from longseq.train import s2attn as mod

    orig = mod.shifted_sparse_attention

    def spy(q, k, v, group_size, **kw):
        out = orig(q, k, v, group_size, **kw)
        captured.setdefault("qkv", (q.detach(), k.detach(), v.detach(), out.detach(), group_size))
        return out

    mod.shifted_sparse_attention = spy
    try:
        train_logits = model(ids, attention_mask=pad).logits
    finally:
        mod.shifted_sparse_attention = orig
    q, k, v, out, g = captured["qkv"]
    assert g == 8 and k.shape[1] == attn.config.num_attention_heads  # GQA expanded
    ref = dense_reference(q, k, v, g, pad)
    real = pad.bool()[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out.double()[real], ref[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(train_logits[real_tok], full[real_tok], atol=1e-3)  # sparse attention really was used


def test_package_exports():
    import longseq
    from longseq.train import config, trainer

    assert longseq.shifted_sparse_attention is shifted_sparse_attention
    assert longseq.train_model is trainer.train and longseq.TrainConfig is config.TrainConfig


def reference_flash_segments(n: int, group: int, bsz: int) -> list[int]:
    """Segment boundaries of LongLoRA's flash-attn S²-Attn (``llama_attn_replace.forward_flashattn``), rebuilt from
    its arithmetic: the 2*bsz half-head sequences are packed one after another (row b*2 + half, half 0 = heads
    < H/2), group starts ``arange(0, N, G)`` for half 0 and the same + G/2 for half 1, each sequence's start
    added, its end appended. Returns the flat ``cu_seqlens``."""
    rows = 2 * bsz
    group_starts = [[r * n + t + (group // 2 if r % 2 else 0) for t in range(0, n, group)] for r in range(rows)]
    return [c for r in range(rows) for c in group_starts[r] + [(r + 1) * n]]  # row r's end is row r+1's start


@pytest.mark.parametrize("heads,n,group,bsz", [(4, 16, 4, 2), (2, 32, 8, 1), (6, 24, 6, 2)])
def test_matches_the_reference_flash_path(heads, n, group, bsz):
    """Packed varlen causal attention over the reference's cu_seqlens (written as plain per-segment softmax
    attention in float64) gives our output for every head, batch row and token (no padding, G | N)."""
    g = torch.Generator().manual_seed(heads + n + group)
    q, k, v = (torch.randn(bsz, heads, n, 8, generator=g) for _ in range(3))
    cu = reference_flash_segments(n, group, bsz)
    assert cu[0] == 0 and cu[-1] == 2 * bsz * n and cu == sorted(cu)

    def pack(x):  # (B, H, N, D) -> (B*2*N, H/2, D): rows b*2 + half, as the reference's reshape/permute
        b, h, t, d = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, t, 2, h // 2, d).permute(0, 2, 1, 3, 4).reshape(b * 2 * t, h // 2, d)

    qp, kp, vp = (pack(x).double() for x in (q, k, v))
    out = torch.zeros_like(qp)
    for s, e in zip(cu[:-1], cu[1:]):
        logits = torch.einsum("thd,shd->hts", qp[s:e], kp[s:e]) / math.sqrt(q.shape[-1])
        logits = logits.masked_fill(~torch.ones(e - s, e - s, dtype=torch.bool).tril(), float("-inf"))
        out[s:e] = torch.einsum("hts,shd->thd", torch.softmax(logits, -1), vp[s:e])
    ref = out.reshape(bsz, 2, n, heads // 2, 8).permute(0, 1, 3, 2, 4).reshape(bsz, heads, n, 8)
    torch.testing.assert_close(shifted_sparse_attention(q, k, v, group).double(), ref, atol=1e-5, rtol=1e-5)


def test_unshifted_heads_with_one_group_are_full_attention():
    """G = N: the unshifted half is plain full causal attention (the S²-Attn limit the paper starts from)."""
    import torch.nn.functional as F

    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    out = shifted_sparse_attention(q, k, v, 16)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out[:, :2], full[:, :2], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out[:, 2:], full[:, 2:], atol=1e-3)  # the shifted half is not
