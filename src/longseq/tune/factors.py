"""Per-dimension RoPE rescale factors: the search space of ``longseq tune-rope`` and transformers' ``longrope``.

LongRoPE (Ding et al., arXiv 2402.13753, sec. 3) writes every RoPE extension as one rescale factor
lambda_i >= 1 per rotary frequency pair i = 0 .. d/2 - 1: theta_i' = theta_i / lambda_i, with theta_i =
b^(-2i/d). PI is lambda_i = s; NTK-aware, YaRN and Llama-3 are curves from 1 (high frequency) to s (low
frequency). transformers' ``longrope`` rope type computes exactly inv_freq_i = 1 / (ext_i * b^(2i/d)) with
``ext = long_factor`` past ``original_max_position_embeddings`` and ``short_factor`` up to it, and multiplies
cos and sin by one ``attention_factor``. A :class:`Candidate` is such a (long_factor, attention_factor)
pair, written as both the long and the short factors (see :func:`longrope_parameters`).

LongRoPE's other search dimension, n-hat un-interpolated initial tokens, cannot be expressed by any
transformers rope type (one inv_freq table serves every position), so it is not searched.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from longseq.core.errors import UserError
from longseq.models.rope import extend_config, native_context_length, rebuild_rotary, rope_dim

SEED_METHODS: tuple[str, ...] = ("pi", "ntk", "yarn", "llama3")
"""The menu methods whose factor curves seed the search (LongRoPE seeds with PI, NTK and YaRN)."""

GRID = 0.01
"""LongRoPE's search step for a factor (``list_step`` in its hyper-parameters)."""

UPPER = 1.25
"""Factors lie in [1, UPPER * s] (LongRoPE paper, sec. 3.2: "[1.0, s x 1.25]")."""

MONOTONE_TOL = 1e-6


@dataclass(frozen=True)
class Candidate:
    """One point of the search space: ``factors`` (d/2 floats, non-decreasing from high to low frequency,
    i.e. with i) and the cos/sin ``attention`` factor."""

    factors: tuple[float, ...]
    attention: float

    @property
    def key(self) -> str:
        """Identity of the candidate (what "already evaluated" means): values rounded to 1e-6."""
        return ",".join(f"{x:.6f}" for x in (*self.factors, self.attention))

    def to_json(self) -> dict[str, Any]:
        return {"long_factor": list(self.factors), "attention_factor": self.attention}

    @classmethod
    def from_json(cls, rec: dict[str, Any]) -> "Candidate":
        return cls(tuple(float(x) for x in rec["long_factor"]), float(rec["attention_factor"]))


def is_monotone(factors: tuple[float, ...] | list[float]) -> bool:
    """LongRoPE's constraint: lambda_i non-decreasing in i (lower frequencies interpolated at least as much)."""
    return all(b >= a - MONOTONE_TOL for a, b in zip(factors, factors[1:]))


def check_rope_model(config: Any) -> None:
    """Raise :class:`UserError` unless ``config`` is a plain-RoPE model (what a longrope rescaling can extend)."""
    params = getattr(config, "rope_parameters", None) or {}
    if "rope_theta" not in params:
        raise UserError(f"model type '{getattr(config, 'model_type', '?')}' has no RoPE (no rope_parameters.rope_theta); "
                        "tune-rope needs a RoPE model such as Llama, Mistral, Qwen2 or SmolLM2")
    if params.get("rope_type", "default") != "default":
        raise UserError(f"the model already uses rope_type '{params['rope_type']}'; tune the original model instead")


def seed_candidate(config: Any, method: str, target: int) -> Candidate:
    """The menu ``method`` at ``target`` written as per-dimension factors (for the search's first population).

    The method's inverse frequencies and attention factor come from transformers' own init function for the
    config that :func:`longseq.models.rope.extend_config` writes, so lambda_i = theta_i / theta_i' reproduces
    the method exactly (up to float32 rounding) when fed back as a ``longrope`` long_factor.
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    d = rope_dim(config)
    base_inv = default_inv_freq(config.rope_parameters["rope_theta"], d)
    ext = extend_config(config, method, target_length=target)
    rope_type = ext.rope_parameters.get("rope_type", "default")
    if rope_type == "default":  # static NTK is a base change; models define "default" themselves
        inv, attention = default_inv_freq(ext.rope_parameters["rope_theta"], d), 1.0
    else:
        inv, attention = ROPE_INIT_FUNCTIONS[rope_type](ext, "cpu", seq_len=target)
    factors = (base_inv.double() / inv.double()).tolist()
    return Candidate(tuple(factors), float(attention))


def default_inv_freq(theta: float, d: int) -> Any:
    """Plain RoPE inverse frequencies (d/2,) float32: b^(-2i/d) (RoFormer, arXiv 2104.09864), computed as
    transformers' Llama and ``longrope`` compute them (every model class defines its own ``default``)."""
    import torch

    return 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))


def bounds(native: int, target: int) -> tuple[float, float]:
    """The [low, high] range of one factor: [1, 1.25 s]."""
    return 1.0, UPPER * target / native


def longrope_parameters(config: Any, cand: Candidate, target: int) -> dict[str, Any]:
    """``rope_parameters`` of transformers' ``longrope`` type for ``cand`` on the plain-RoPE ``config``."""
    params = dict(config.rope_parameters)
    native = native_context_length(config)
    half = rope_dim(config) // 2
    if len(cand.factors) != half:
        raise UserError(f"{len(cand.factors)} factors given but the model has {half} rotary frequency pairs")
    # short = long: transformers picks the table per forward call, so a generation that crosses the native
    # length would rotate new queries with the long factors against keys cached with the short ones (measured:
    # passkey at 8k 0 of 10 with plain short factors, 7 of 10 unextended). One table serves every length.
    params.update({"rope_type": "longrope", "short_factor": list(cand.factors), "long_factor": list(cand.factors),
                   "factor": target / native, "original_max_position_embeddings": native,
                   "attention_factor": cand.attention})
    return params


def longrope_config(config: Any, cand: Candidate, target: int, meta: dict[str, Any] | None = None) -> Any:
    """A copy of the plain-RoPE ``config`` with ``cand`` as its ``longrope`` rescaling and ``target`` positions.

    ``longseq_extension`` records the native length (longseq reads it; transformers ignores it).
    """
    native = native_context_length(config)
    new = copy.deepcopy(config)
    new.rope_parameters = longrope_parameters(config, cand, target)
    new.max_position_embeddings = target
    new.longseq_extension = {"method": "longrope", "factor": target / native, "native": native, "target": target,
                             "theta": None, "options": dict(meta or {})}
    new.validate_rope()
    return new


def apply_candidate(model: Any, base_config: Any, cand: Candidate, target: int) -> None:
    """Set ``cand`` on an in-memory model (loaded with the plain-RoPE ``base_config``) and rebuild its rotary
    modules, exactly as a checkpoint written with :func:`longrope_config` loads."""
    new = longrope_config(base_config, cand, target)
    model.config.rope_parameters = new.rope_parameters
    model.config.max_position_embeddings = new.max_position_embeddings
    model.config.longseq_extension = new.longseq_extension
    rebuild_rotary(model)


def attention_range(scale: float) -> tuple[float, float]:
    """Range searched for the attention factor: [1, 1 + 0.2 ln s], twice YaRN's temperature term."""
    return 1.0, 1.0 + 0.2 * math.log(scale)
