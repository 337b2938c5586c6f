"""RoPE context-extension methods, as one small registry.

Every method maps (model config, scale factor s = L'/L, options) to the ``rope_parameters`` dict that
transformers 5.x understands, so the rotary math itself is transformers' own (``modeling_rope_utils``);
only static NTK-aware scaling has no built-in ``rope_type`` and is expressed as a base change.

Notation (as in the YaRN paper): d = rotary dim, b = base (``rope_theta``),
L = native (pre-training) context, L' = target context, s = L'/L.

The extended config also records ``longseq_extension = {"method", "factor", "native", "target", ...}``;
plain transformers ignores that key, longseq reads the native length from it (never from
``max_position_embeddings``, whose meaning differs between rope types).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from longseq.core.errors import UserError, unknown_choice
from longseq.core.fsutil import atomic_dir, output_errors
from longseq.core.parsing import parse_length
from longseq.models.loading import (DTYPES, SOURCE_DTYPE, check_output_path, has_tokenizer, load_config,
                                    load_tokenizer, load_weights, local_dir)

ABF_DEFAULT_THETA = 500_000.0


MAX_FACTOR = 1024.0  # the largest published extension is 512x (LongRoPE: 4k -> 2M); beyond that s is a typo
MAX_THETA = 1e12  # published bases reach 1e8; far above that every frequency but the first is ~0


@dataclass(frozen=True)
class Extension:
    """A resolved extension request: the method, s, L, L' and method options."""

    method: str
    factor: float
    native: int
    target: int
    theta: float | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    """A numeric method option and its valid range: ``low < value <= high`` (``high`` None: no upper bound)."""

    name: str
    default: float | None  # transformers' default; None where it is computed (yarn's attention factor)
    low: float
    high: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


RopeFn = Callable[[dict[str, Any], Extension, int], dict[str, Any]]


@dataclass(frozen=True)
class RopeMethod:
    """Registry entry. ``fn(base_params, ext, rotary_dim) -> rope_parameters``."""

    name: str
    fn: RopeFn
    scales: bool  # True: needs s >= 1 (a factor or target length); False: s is optional (none, abf)
    dynamic: bool = False  # transformers' dynamic types read L from max_position_embeddings: keep it at L
    options: tuple[Option, ...] = ()
    ordered: tuple[str, str] | None = None  # (smaller, larger): two options that must keep this order

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)


METHODS: dict[str, RopeMethod] = {}


def register(name: str, scales: bool = True, dynamic: bool = False, options: tuple[Option, ...] = (),
             ordered: tuple[str, str] | None = None) -> Callable[[RopeFn], RopeFn]:
    """Decorator adding a method to :data:`METHODS`."""

    def deco(fn: RopeFn) -> RopeFn:
        METHODS[name] = RopeMethod(name, fn, scales, dynamic, options, ordered)
        return fn

    return deco


def check_number(flag: str, value: Any, low: float, high: float | None = None, low_closed: bool = False,
                 high_closed: bool = True, note: str = "") -> float:
    """``value`` as a float, or a :class:`UserError` naming ``flag`` and its valid range.

    Accepted: a finite int or float (not a bool) with ``low < value`` (``<=`` when ``low_closed``) and
    ``value <= high`` (``<`` unless ``high_closed``; ``high`` None: no upper bound).
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if low_closed else value > low) and (
            high is None or (value <= high if high_closed else value < high))
    if not ok:
        cond = f"{'>=' if low_closed else '>'} {low:g}"
        if high is not None:
            cond += f" and {'<=' if high_closed else '<'} {high:g}"
        raise UserError(f"{flag} must be a finite number {cond}{note}, got {value!r}")
    return float(value)


@register("none", scales=False)
def rope_none(p: dict[str, Any], ext: Extension, d: int) -> dict[str, Any]:
    """Plain RoPE (Su et al., RoFormer, arXiv 2104.09864): theta_i = b^(-2i/d); beyond L it extrapolates."""
    return p


@register("pi")
def rope_pi(p: dict[str, Any], ext: Extension, d: int) -> dict[str, Any]:
    """Position Interpolation (Chen et al., arXiv 2306.15595; LongChat's "condense"): m -> m/s,
    i.e. theta_i' = theta_i / s. transformers ``linear``."""
    return {**p, "rope_type": "linear", "factor": ext.factor}


@register("ntk")
def rope_ntk(p: dict[str, Any], ext: Extension, d: int) -> dict[str, Any]:
    """Static NTK-aware scaling (bloc97, r/LocalLLaMA 2023; YaRN paper sec. 3.1): b' = b * s^(d/(d-2)).
    transformers has no static NTK type, so it is a ``default`` rope with the new base."""
    return {**p, "rope_type": "default", "rope_theta": p["rope_theta"] * ext.factor ** (d / (d - 2))}


@register("dynamic-ntk", dynamic=True)
def rope_dynamic_ntk(p: dict[str, Any], ext: Extension, d: int) -> dict[str, Any]:
    """Dynamic NTK (emozilla, 2023): b' = b * (s*l/L - (s-1))^(d/(d-2)) for current length l > L,
    recomputed on the fly. transformers ``dynamic``. Approximate with a KV cache: cached keys keep the
    rotation of the base that was in force when they were written (YaRN paper sec. 3.3)."""
    return {**p, "rope_type": "dynamic", "factor": ext.factor}


@register("yarn", options=(Option("beta_fast", 32.0, 0.0), Option("beta_slow", 1.0, 0.0),
                           Option("attention_factor", None, 0.0, 10.0)), ordered=("beta_slow", "beta_fast"))
def rope_yarn(p: dict[str, Any], ext: Extension, d: int) -> dict[str, Any]:
    """YaRN (Peng et al., arXiv 2309.00071): NTK-by-parts ramp between theta_i/s and theta_i over the
    dimensions whose number of turns in L lies in [beta_slow, beta_fast], plus attention temperature
    sqrt(1/t) = 0.1 ln s + 1 applied to cos and sin. transformers ``yarn``; L stored explicitly."""
    params = {**p, "rope_type": "yarn", "factor": ext.factor, "original_max_position_embeddings": ext.native}
    params.update({k: v for k, v in ext.options.items() if v is not None})
    return params


@register("abf", scales=False)
def rope_abf(p: dict[str, Any], ext: Extension, d: int) -> dict[str, Any]:
    """Adjusted base frequency (Xiong et al., "Effective Long-Context Scaling of Foundation Models",
    arXiv 2309.16039): set b (500,000 in Llama 2 Long), no position scaling, no temperature. Meant for
    continual pre-training at the longer length."""
    return {**p, "rope_type": "default", "rope_theta": ext.theta or ABF_DEFAULT_THETA}


@register("llama3", options=(Option("low_freq_factor", 1.0, 0.0), Option("high_freq_factor", 4.0, 0.0)),
          ordered=("low_freq_factor", "high_freq_factor"))
def rope_llama3(p: dict[str, Any], ext: Extension, d: int) -> dict[str, Any]:
    """Llama 3.1 scaling (Llama 3 herd, arXiv 2407.21783; constants from transformers): wavelengths
    above L/low_freq_factor are divided by s, below L/high_freq_factor kept, smooth blend between."""
    return {
        **p,
        "rope_type": "llama3",
        "factor": ext.factor,
        "low_freq_factor": ext.options.get("low_freq_factor") or METHODS["llama3"].options[0].default,
        "high_freq_factor": ext.options.get("high_freq_factor") or METHODS["llama3"].options[1].default,
        "original_max_position_embeddings": ext.native,
    }


def head_dim(config: Any) -> int:
    """Per-head width: ``config.head_dim`` where the architecture sets it, else hidden_size / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def has_rope(config: Any) -> bool:
    """Whether the model uses RoPE (``rope_parameters`` with a ``rope_theta``); GPT-2-style models do not."""
    return "rope_theta" in (getattr(config, "rope_parameters", None) or {})


def rope_dim(config: Any) -> int:
    """Rotary dimension d = head_dim * partial_rotary_factor."""
    factor = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    return int(head_dim(config) * factor)


def native_context_length(config: Any) -> int:
    """The pre-training context L: recorded by longseq, else the rope's original length, else max positions."""
    ext = getattr(config, "longseq_extension", None)
    if isinstance(ext, dict) and ext.get("native"):
        return int(ext["native"])
    orig = (getattr(config, "rope_parameters", None) or {}).get("original_max_position_embeddings")
    return int(orig or config.max_position_embeddings)



def resolve_extension(
    method: str,
    native: int,
    factor: float | None = None,
    target_length: int | str | None = None,
    theta: float | None = None,
    **options: Any,
) -> Extension:
    """Validate a request and compute s and L'. ``factor`` or ``target_length`` (or both, if consistent).

    Every number is checked here (so the Python API refuses what the CLI refuses): 1 <= s <= MAX_FACTOR,
    1 < theta <= MAX_THETA, each method option finite in its range, and ordered options (yarn
    beta_slow < beta_fast, llama3 low_freq_factor < high_freq_factor, defaults filling a missing one).
    """
    if not isinstance(method, str) or method not in METHODS:
        raise unknown_choice("RoPE method", str(method), METHODS)
    spec = METHODS[method]
    target = parse_length(target_length) if target_length is not None else None
    if factor is not None:
        check_number("--factor", factor, 1.0, MAX_FACTOR, low_closed=True, note=" (s = target / native length)")
    if target is not None and target < native:
        raise UserError(f"target length {target} is below the native context {native}; choose a target >= {native}")
    if target is not None and target > native * MAX_FACTOR:
        raise UserError(f"target length {target} is {target / native:g} x the native context {native}; "
                        f"at most {MAX_FACTOR:g} x ({int(native * MAX_FACTOR)} tokens) is supported")
    if factor is not None and target is not None and abs(native * factor - target) > 0.5:
        raise UserError(
            f"--factor {factor} and --target-length {target} disagree (native {native} x {factor} = "
            f"{native * factor:g}); give only one of them"
        )
    if factor is None:
        factor = target / native if target is not None else None
    if factor is None:
        if spec.scales:
            raise UserError(f"method '{method}' needs --factor F or --target-length T")
        factor = 1.0
    if method == "none" and factor != 1:
        raise UserError("method 'none' keeps the native context; drop --factor/--target-length or pick a method")
    if theta is not None:
        check_number("--theta", theta, 1.0, MAX_THETA, note=" (the RoPE base, e.g. 500000)")
    _check_options(spec, options)
    return Extension(method, float(factor), native, target or int(round(native * factor)),
                     None if theta is None else float(theta), options)


def _check_options(spec: RopeMethod, options: dict[str, Any]) -> None:
    """Refuse options the method does not take, values out of range, and a broken order (see RopeMethod)."""
    given = {k: v for k, v in options.items() if v is not None}
    unknown = set(given) - set(spec.option_names)
    if unknown:
        raise UserError(f"option(s) {', '.join(sorted(unknown))} do not apply to '{spec.name}' "
                        f"(it takes: {', '.join(spec.option_names) or 'none'})")
    by_name = {o.name: o for o in spec.options}
    for name, value in given.items():
        opt = by_name[name]
        check_number(opt.flag, value, opt.low, opt.high)
    if spec.ordered and given.keys() & set(spec.ordered):
        lo, hi = (by_name[n] for n in spec.ordered)
        low_value, high_value = given.get(lo.name, lo.default), given.get(hi.name, hi.default)
        if not low_value < high_value:
            raise UserError(f"{lo.flag} ({low_value:g}) must be below {hi.flag} ({high_value:g}) for "
                            f"'{spec.name}' (defaults {lo.default:g} and {hi.default:g})")


def extend_config(config: Any, method: str, factor: float | None = None, target_length: int | str | None = None,
                  theta: float | None = None, **options: Any) -> Any:
    """Return a copy of ``config`` whose ``rope_parameters`` implement the method.

    Args:
        config: a transformers ``PreTrainedConfig`` with RoPE (``rope_parameters`` of type ``default``).
        method: a key of :data:`METHODS`.
        factor: scale s; or give ``target_length`` L' and s = L'/L.
        theta: new base b (``abf``; for other methods a base change applied before scaling).
        options: method options (yarn: beta_fast, beta_slow, attention_factor; llama3: low/high_freq_factor).
    """
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in params:
        raise UserError("this model has no RoPE parameters (rope_parameters.rope_theta); RoPE methods do not apply")
    current = params.get("rope_type", "default")
    if method != "none" and current != "default":
        raise UserError(
            f"the model already uses rope_type '{current}'; extend the original model instead of stacking methods"
        )
    ext = resolve_extension(method, native_context_length(config), factor, target_length, theta, **options)
    if ext.theta is not None and method != "abf":
        params["rope_theta"] = float(ext.theta)
    new = copy.deepcopy(config)
    new.rope_parameters = METHODS[method].fn(params, ext, rope_dim(config))
    if method != "none":
        new.max_position_embeddings = ext.native if METHODS[method].dynamic else ext.target
        new.longseq_extension = {**asdict(ext), "options": {k: v for k, v in ext.options.items() if v is not None}}
    new.validate_rope()
    return new


def apply_rope(model: Any, method: str, factor: float | None = None, target_length: int | str | None = None,
               theta: float | None = None, **options: Any) -> Any:
    """Extend an in-memory model in place: set its config and rebuild every rotary-embedding module."""
    new = extend_config(model.config, method, factor, target_length, theta, **options)
    model.config.rope_parameters = new.rope_parameters
    model.config.max_position_embeddings = new.max_position_embeddings
    if hasattr(new, "longseq_extension"):
        model.config.longseq_extension = new.longseq_extension
    rebuild_rotary(model)
    return model


def rebuild_rotary(model: Any) -> None:
    """Re-create rotary modules from ``model.config`` (their inv_freq buffers are computed at init)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__.endswith("RotaryEmbedding"):
                device = next(iter(child.buffers()), None)
                fresh = type(child)(config=model.config)
                if device is not None:
                    fresh.to(device.device)
                setattr(parent, name, fresh)


EXTEND_DTYPES = (SOURCE_DTYPE, *DTYPES)


def extend_checkpoint(spec: str, out: str, method: str, factor: float | None = None,
                      target_length: int | str | None = None, theta: float | None = None,
                      dtype: str = SOURCE_DTYPE, overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Write a Hugging Face checkpoint of ``spec`` with the extended RoPE (atomic: nothing half-written).

    Only the RoPE configuration changes: the weights keep the checkpoint's dtype unless ``dtype`` (one of
    :data:`EXTEND_DTYPES`) says otherwise, so the written model computes exactly what :func:`apply_rope`
    computes in memory. The tokenizer is copied when the source has one (training checkpoints often
    have none; the extension does not need it).
    """
    if dtype not in EXTEND_DTYPES:
        raise unknown_choice("dtype", str(dtype), EXTEND_DTYPES)
    config = extend_config(load_config(spec), method, factor, target_length, theta, **options)
    if Path(out).exists() and not overwrite:
        raise UserError(f"output folder {out} already exists; choose another --out or pass --overwrite")
    check_output_path(out)
    source = local_dir(spec)
    if isinstance(source, Path) and Path(out).resolve() == source.resolve():
        raise UserError(f"--out {out} is the model folder being extended; write the extension to another folder")
    tokenizer = load_tokenizer(spec) if has_tokenizer(spec) else None
    model = load_weights(spec, dtype=dtype, config=config)
    with output_errors(out), atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return {"out": str(out), "rope_parameters": config.rope_parameters,
            "max_position_embeddings": config.max_position_embeddings,
            "longseq_extension": getattr(config, "longseq_extension", None),
            "dtype": str(model.dtype).removeprefix("torch."), "tokenizer": tokenizer is not None}
