"""RoPE methods: transformers' inverse frequencies for our configs equal the papers' closed forms.

The closed forms below are written from the papers (PI, NTK-aware, YaRN, ABF, Llama 3), independently of
longseq.models.rope and of transformers' code; transformers computes the values under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from longseq.core.errors import UserError
from longseq.models.rope import METHODS, extend_config, native_context_length

B, D, L = 10000.0, 16, 256  # tiny config: base, rotary dim (head_dim 64/4), native length


def base_freqs(b: float = B, d: int = D) -> torch.Tensor:
    return torch.tensor([b ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)


def rotary(config) -> LlamaRotaryEmbedding:
    return LlamaRotaryEmbedding(config)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=2e-6, atol=0)


def yarn_closed_form(s: float, beta_fast: float = 32, beta_slow: float = 1) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023) NTK-by-parts in dimension space, truncated range, plus temperature."""
    def dim_of(r):  # dimension index at which pair i makes r turns within L
        return D * math.log(L / (2 * math.pi * r)) / (2 * math.log(B))

    low, high = max(math.floor(dim_of(beta_fast)), 0), min(math.ceil(dim_of(beta_slow)), D - 1)
    theta = base_freqs()
    out = []
    for i in range(D // 2):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        out.append(ramp * theta[i] / s + (1 - ramp) * theta[i])
    return torch.tensor(out, dtype=torch.float64), 0.1 * math.log(s) + 1


def llama3_closed_form(s: float, low_ff: float = 1.0, high_ff: float = 4.0) -> torch.Tensor:
    theta = base_freqs()
    out = []
    for t in theta.tolist():
        wavelen = 2 * math.pi / t
        if wavelen > L / low_ff:
            out.append(t / s)
        elif wavelen < L / high_ff:
            out.append(t)
        else:
            smooth = (L / wavelen - low_ff) / (high_ff - low_ff)
            out.append((1 - smooth) * t / s + smooth * t)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("s", [2.0, 4.0, 8.0])
def test_pi_divides_every_frequency(s, tiny_llama_config):
    rot = rotary(extend_config(tiny_llama_config(), "pi", factor=s))
    close(rot.inv_freq, base_freqs() / s)
    assert rot.attention_scaling == 1.0


@pytest.mark.parametrize("s", [2.0, 8.0])
def test_ntk_changes_base(s, tiny_llama_config):
    rot = rotary(extend_config(tiny_llama_config(), "ntk", factor=s))
    close(rot.inv_freq, base_freqs(B * s ** (D / (D - 2))))
    # NTK-aware: the highest frequency is untouched, the lowest is slowed by exactly s
    assert rot.inv_freq[0].item() == pytest.approx(1.0)
    assert rot.inv_freq[-1].item() == pytest.approx(base_freqs()[-1].item() / s, rel=1e-6)
    assert rot.attention_scaling == 1.0


@pytest.mark.parametrize("s", [2.0, 4.0])
def test_dynamic_ntk_is_plain_until_native_length_then_rescales(s, tiny_llama_config):
    config = extend_config(tiny_llama_config(), "dynamic-ntk", factor=s)
    assert config.max_position_embeddings == L  # transformers reads L from it
    rot = rotary(config)
    close(rot.inv_freq, base_freqs())
    x = torch.zeros(1, dtype=torch.float32)
    seq = 3 * L
    rot(x, torch.arange(seq)[None])
    scaled_base = B * ((s * seq / L) - (s - 1)) ** (D / (D - 2))
    close(rot.inv_freq, base_freqs(scaled_base))


@pytest.mark.parametrize("s", [2.0, 4.0, 16.0])
def test_yarn_matches_ntk_by_parts_and_temperature(s, tiny_llama_config):
    config = extend_config(tiny_llama_config(), "yarn", factor=s)
    assert config.rope_parameters["original_max_position_embeddings"] == L
    rot = rotary(config)
    expected, temp = yarn_closed_form(s)
    close(rot.inv_freq, expected)
    assert rot.attention_scaling == pytest.approx(temp)
    # cos/sin carry the temperature, so logits scale by its square
    cos, _ = rot(torch.zeros(1), torch.zeros(1, 1, dtype=torch.long))
    assert cos[0, 0, 0].item() == pytest.approx(temp, rel=1e-6)


def test_yarn_options_reach_transformers(tiny_llama_config):
    config = extend_config(tiny_llama_config(), "yarn", factor=4, beta_fast=16, beta_slow=2, attention_factor=1.0)
    rot = rotary(config)
    expected, _ = yarn_closed_form(4, beta_fast=16, beta_slow=2)
    close(rot.inv_freq, expected)
    assert rot.attention_scaling == 1.0


@pytest.mark.parametrize("theta", [None, 1e6])
def test_abf_sets_base_only(theta, tiny_llama_config):
    config = extend_config(tiny_llama_config(), "abf", theta=theta, target_length=1024)
    rot = rotary(config)
    close(rot.inv_freq, base_freqs(theta or 500000.0))
    assert rot.attention_scaling == 1.0
    assert config.max_position_embeddings == 1024


@pytest.mark.parametrize("s", [2.0, 8.0])
def test_llama3_wavelength_bands(s, tiny_llama_config):
    rot = rotary(extend_config(tiny_llama_config(), "llama3", factor=s))
    close(rot.inv_freq, llama3_closed_form(s))
    assert rot.attention_scaling == 1.0


def test_none_is_identity(tiny_llama_config):
    config = tiny_llama_config()
    new = extend_config(config, "none")
    assert new.rope_parameters == config.rope_parameters
    close(rotary(new).inv_freq, base_freqs())


def test_every_registered_method_is_tested_here():
    assert set(METHODS) == {"none", "pi", "ntk", "dynamic-ntk", "yarn", "abf", "llama3"}


def test_target_length_gives_factor_and_records_native(tiny_llama_config):
    config = extend_config(tiny_llama_config(), "yarn", target_length="1k")
    assert config.rope_parameters["factor"] == 4.0
    assert config.max_position_embeddings == 1024
    assert config.longseq_extension["native"] == L and config.longseq_extension["target"] == 1024
    assert native_context_length(config) == L


def test_legacy_rope_scaling_spelling_is_understood(tiny_llama_config):
    """transformers 4.x configs spell RoPE as top-level rope_theta (+ rope_scaling); both must work."""
    from transformers import LlamaConfig

    legacy = LlamaConfig.from_dict({**tiny_llama_config().to_dict(), "rope_theta": 5e5, "rope_parameters": None,
                                    "rope_scaling": None})
    rot = rotary(extend_config(legacy, "pi", factor=2))
    close(rot.inv_freq, base_freqs(5e5) / 2)
    old_linear = LlamaConfig.from_dict({**tiny_llama_config().to_dict(), "rope_parameters": None,
                                        "rope_scaling": {"type": "linear", "factor": 8.0}})
    assert old_linear.rope_parameters["rope_type"] == "linear"
    with pytest.raises(UserError, match="already uses rope_type 'linear'"):
        extend_config(old_linear, "yarn", factor=2)


FACTOR_RANGE = "--factor must be a finite number >= 1 and <= 1024"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="bogus", factor=2), "unknown RoPE method 'bogus'"),
        (dict(method="pi", factor=0), FACTOR_RANGE),
        (dict(method="pi", factor=-1), FACTOR_RANGE),
        (dict(method="yarn", factor=0.5), FACTOR_RANGE),
        (dict(method="pi", factor=float("nan")), FACTOR_RANGE + r".*got nan"),
        (dict(method="pi", factor=float("inf")), FACTOR_RANGE + r".*got inf"),
        (dict(method="pi", factor=1e9), FACTOR_RANGE),
        (dict(method="pi", factor="2"), FACTOR_RANGE),
        (dict(method="pi", factor=True), FACTOR_RANGE),
        (dict(method="pi", target_length="1m"), r"4096 x the native context 256; at most 1024 x \(262144 tokens\)"),
        (dict(method="pi"), "needs --factor"),
        (dict(method="pi", target_length=128), "below the native context"),
        (dict(method="pi", factor=2, target_length=1024), "disagree"),
        (dict(method="none", factor=2), "keeps the native context"),
        (dict(method="pi", factor=2, beta_fast=4), "do not apply to 'pi'"),
        (dict(method="yarn", target_length="lots"), "not a length"),
        (dict(method="abf", theta=-5), "--theta must be a finite number > 1 and <= 1e\\+12"),
        (dict(method="abf", theta=1.0), "--theta must be a finite number > 1"),
        (dict(method="abf", theta=float("nan")), "--theta .*got nan"),
        (dict(method="yarn", factor=2, attention_factor=-1.0), "--attention-factor must be a finite number > 0 and <= 10"),
        (dict(method="yarn", factor=2, attention_factor=float("inf")), "--attention-factor .*got inf"),
        (dict(method="yarn", factor=2, beta_fast=1, beta_slow=32), r"--beta-slow \(32\) must be below --beta-fast \(1\)"),
        (dict(method="yarn", factor=2, beta_slow=40), r"--beta-slow \(40\) must be below --beta-fast \(32\)"),
        (dict(method="yarn", factor=2, beta_fast=float("nan")), "--beta-fast must be a finite number > 0"),
        (dict(method="yarn", factor=2, beta_slow=0), "--beta-slow must be a finite number > 0"),
        (dict(method="llama3", factor=2, low_freq_factor=4, high_freq_factor=4), "--low-freq-factor .* must be below"),
        (dict(method="llama3", factor=2, high_freq_factor=-4), "--high-freq-factor must be a finite number > 0"),
    ],
)
def test_bad_requests_are_user_errors(kwargs, message, tiny_llama_config):
    with pytest.raises(UserError, match=message):
        extend_config(tiny_llama_config(), **kwargs)


def test_consistent_factor_and_target_are_accepted(tiny_llama_config):
    config = extend_config(tiny_llama_config(), "pi", factor=4, target_length=1024)
    assert config.rope_parameters["factor"] == 4


@pytest.mark.parametrize("kwargs", [dict(factor=1024), dict(factor=1), dict(beta_fast=64, beta_slow=0.5),
                                    dict(factor=2, attention_factor=10.0)])
def test_range_edges_are_accepted(kwargs, tiny_llama_config):
    config = extend_config(tiny_llama_config(), "yarn", **{"factor": 2, **kwargs})
    assert config.rope_parameters["factor"] == kwargs.get("factor", 2)
