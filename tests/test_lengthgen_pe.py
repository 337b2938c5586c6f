"""Positional encodings of the length-generalization encoder: shapes, randomized positions, and each PE
against a plain reference computation (complex rotation, explicit Transformer-XL table, ALiBi by hand).

Run: PYTHONPATH=src python -m pytest tests/test_lengthgen_pe.py
"""

from __future__ import annotations

import math

import pytest
import torch

from longseq.core.errors import UserError
from longseq.lengthgen.protocol import PES, split_pe
from longseq.lengthgen.randpe import Attention, Encoder, ModelConfig, alibi_bias, alibi_slopes, rotate, sinusoid


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is much faster on a shared CPU
    yield
    torch.set_num_threads(old)


def tiny(pe: str, **kw) -> Encoder:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=4, output_size=3, pe=pe, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                      max_len=kw.pop("max_len", 256), **kw)
    return Encoder(cfg)


def test_pe_registry():
    assert len(PES) == 11 and "randomized_none" not in PES
    assert split_pe("randomized_relative") == ("relative", True) and split_pe("alibi") == ("alibi", False)
    with pytest.raises(UserError, match="did you mean 'rope'"):
        split_pe("rop")


@pytest.mark.parametrize("pe", PES)
def test_shapes_and_finite(pe):
    model = tiny(pe)
    for t in (1, 7, 200):
        tokens = torch.randint(0, 5, (3, t))
        out = model(tokens)
        assert out.shape == (3, t, 3) and torch.isfinite(out).all()
    out.sum().backward()  # every PE is differentiable end to end


@pytest.mark.parametrize("pe", [p for p in PES if p.startswith("randomized_")])
def test_randomized_positions_sorted_distinct_in_range(pe):
    model = tiny(pe, max_len=64)
    draws = [model.positions(t, torch.device("cpu")) for t in (1, 10, 50, 64) for _ in range(20)]
    for pos in draws:
        assert pos.dtype == torch.int64
        assert (pos[1:] > pos[:-1]).all()  # sorted and distinct
        assert pos.min() >= 0 and pos.max() < 64
    assert len({tuple(p.tolist()) for p in draws if len(p) == 10}) > 15  # fresh each call
    assert torch.equal(model.positions(64, torch.device("cpu")), torch.arange(64))  # t = L: every position
    with pytest.raises(UserError, match="exceeds the randomized range"):
        model.positions(65, torch.device("cpu"))


def test_randomized_positions_cover_the_range_uniformly():
    model = tiny("randomized_rope", max_len=100)
    counts = torch.zeros(100)
    for _ in range(2000):
        counts[model.positions(10, torch.device("cpu"))] += 1
    assert counts.min() > 120 and counts.max() < 280  # expected 200 per position


def _positions_seen(model: Encoder, t: int) -> list[torch.Tensor]:
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    model(torch.zeros(1, t, dtype=torch.long))
    return seen


def test_plain_pes_use_0_to_t_and_randomized_resample_per_layer():
    assert all(torch.equal(p, torch.arange(9)) for p in _positions_seen(tiny("rope"), 9))
    per_layer = _positions_seen(tiny("randomized_alibi"), 30)
    assert not torch.equal(per_layer[0], per_layer[1])  # reference: each attention layer draws its own
    shared = _positions_seen(tiny("randomized_rope", resample="forward"), 30)
    assert torch.equal(shared[0], shared[1])


@pytest.mark.parametrize("pe", PES)
def test_eval_is_deterministic_only_without_randomization(pe):
    model = tiny(pe).eval()  # dropout off in evaluation (the reference leaves it on)
    tokens = torch.randint(0, 5, (2, 12))
    a, b = model(tokens), model(tokens)
    if split_pe(pe)[1]:
        assert not torch.allclose(a, b)  # randomized at test time too, as in the paper
    else:
        assert torch.equal(a, b)


def test_no_pe_is_permutation_equivariant_and_others_are_not():
    tokens = torch.randint(0, 5, (1, 10))
    perm = torch.randperm(10)
    none = tiny("none").eval()
    torch.testing.assert_close(none(tokens)[:, perm], none(tokens[:, perm]))
    rope = tiny("rope").eval()
    assert not torch.allclose(rope(tokens)[:, perm], rope(tokens[:, perm]), atol=1e-4)


def test_sinusoid_layout():
    pos = torch.tensor([0, 1, 1000])
    table = sinusoid(pos, 8)
    assert table.shape == (3, 8)
    torch.testing.assert_close(table[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = 10_000 ** (-torch.arange(0, 8, 2) / 8)
    torch.testing.assert_close(table[2, :4], torch.sin(1000 * freqs))
    torch.testing.assert_close(table[2, 4:], torch.cos(1000 * freqs))


def test_learned_and_sin_cos_add_the_row_of_each_position():
    model = tiny("learned").eval()
    captured = []
    model.blocks[0].register_forward_pre_hook(lambda mod, args: captured.append(args[0]))
    tokens = torch.tensor([[1, 2, 3]])
    model(tokens)
    expected = model.embed(tokens) * math.sqrt(32) + model.pos_table.weight[:3]
    torch.testing.assert_close(captured[0], expected)


def test_rope_matches_complex_rotation_and_is_relative():
    x = torch.randn(2, 3, 5, 8)
    pos = torch.tensor([0, 3, 17, 100, 2047])
    z = torch.view_as_complex(x.reshape(2, 3, 5, 4, 2).contiguous())
    theta = 10_000 ** (-torch.arange(4) / 4)
    ref = torch.view_as_real(z * torch.polar(torch.ones(5, 4), pos[:, None].float() * theta)).flatten(-2)
    torch.testing.assert_close(rotate(x, pos), ref, atol=1e-4, rtol=1e-4)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    dot = lambda a, b: (rotate(q, torch.tensor([a])) * rotate(k, torch.tensor([b]))).sum()  # noqa: E731
    torch.testing.assert_close(dot(5, 2), dot(105, 102), atol=1e-4, rtol=1e-4)


def test_alibi_slopes_and_bias_by_hand():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    # fairseq, 12 heads: the 8-head slopes, then every other slope of the 16-head series (2^-0.5, 2^-1.5, ...)
    twelve = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -(0.5 + i) for i in range(4)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(twelve))
    bias = alibi_bias(torch.tensor([0, 1, 3]), torch.tensor([1.0]))
    expected = torch.tensor([[0.0, -1.0, -3.0], [-0.5, 0.0, -2.0], [-2.5, -1.5, 0.0]])
    torch.testing.assert_close(bias[0], expected)


def _attention_reference(att: Attention, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention with the PE written out term by term (no folding, no fused kernel)."""
    b, t, d = x.shape
    h, dh = att.h, att.dh
    q, k, v = att.qkv(x).view(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)
    if att.base == "relative":
        # Transformer-XL: (q_i + u)·k_j + (q_i + v)·W_R R(p_i - p_j), R the sinusoid of the signed distance
        rel = (pos[:, None] - pos[None, :]).flatten()
        r = att.r_proj(sinusoid(rel, d)).view(t, t, h, dh)  # (T, T, H, Dh)
        logits = torch.einsum("bhid,bhjd->bhij", q + att.u, k) + torch.einsum("bhid,ijhd->bhij", q + att.v, r)
    else:
        logits = q @ k.transpose(-1, -2)
    logits = logits / math.sqrt(dh)
    if att.base == "alibi":
        logits = logits + alibi_bias(pos, att.slopes)
    y = logits.softmax(-1) @ v
    return att.out(y.transpose(1, 2).reshape(b, t, d))


@pytest.mark.parametrize("pe", ["none", "relative", "alibi"])
def test_attention_matches_reference(pe):
    torch.manual_seed(1)
    att = Attention(ModelConfig(vocab_size=2, output_size=2, pe=pe, d_model=32, n_heads=4))
    with torch.no_grad():
        if pe == "relative":
            att.u.normal_(), att.v.normal_()  # make the bias terms matter
        x = torch.randn(2, 9, 32)
        for pos in (torch.arange(9), torch.tensor([2, 5, 6, 40, 41, 100, 700, 1500, 2047])):
            torch.testing.assert_close(att(x, pos), _attention_reference(att, x, pos), atol=1e-4, rtol=1e-4)


def test_relative_logits_depend_on_signed_distance():
    # The reference's randomized relative table mixes up distances (its issue #2); ours must be a function of
    # p_i - p_j only: shifting every position leaves the output unchanged, mirroring them does not.
    torch.manual_seed(2)
    att = Attention(ModelConfig(vocab_size=2, output_size=2, pe="relative", d_model=32, n_heads=4))
    x = torch.randn(1, 6, 32)
    pos = torch.tensor([0, 4, 9, 30, 31, 200])
    with torch.no_grad():
        att.u.normal_(), att.v.normal_()
        torch.testing.assert_close(att(x, pos), att(x, pos + 1000), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(att(x, pos), att(x, 2000 - pos), atol=1e-3)


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError):
        ModelConfig(vocab_size=2, output_size=2, pe="rope", d_model=30, n_heads=4)
    with pytest.raises(UserError):
        ModelConfig(vocab_size=2, output_size=2, pe="rope", resample="sometimes")


def test_initialization_follows_the_reference_haiku_defaults():
    """Embedding TruncatedNormal(0.02), linear layers TruncatedNormal(1/sqrt(fan_in)) with zero biases, a
    learned position table TruncatedNormal(1): normals cut at two standard deviations."""
    torch.manual_seed(0)
    model = Encoder(ModelConfig(vocab_size=4, output_size=3, pe="learned", max_len=4096))
    w = model.embed.weight
    assert w.abs().max() <= 0.04 and 0.015 < w.std() < 0.02
    table = model.pos_table.weight
    assert table.abs().max() <= 2.0 and 0.85 < table.std() < 0.9  # a cut N(0, 1) has std 0.88
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5 * 4 + 1  # qkv, out, two FFN layers per block, and the read-out
    for lin in linears:
        bound = 2 * lin.in_features**-0.5
        assert lin.weight.abs().max() <= bound + 1e-6
        assert lin.bias is None or not lin.bias.any()
