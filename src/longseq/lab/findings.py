"""The claims the lab checks (:data:`FINDINGS`) and the rules that judge them from the measured numbers.

Every judge reads a lab summary (``summary.json`` before its ``findings``: ``native``, ``lengths``, ``seeds``,
``costs``, ``evals[run][metric][method][str(length)]`` with metric ``perplexity``, ``passkey``, ``lines`` or
``retrieval``, and ``lengthgen``) and returns ``(verdict, evidence, table, notes)``: True / False, or None
when a number it needs is missing. Each finding is judged on the metric its paper reports.

Margins. A comparison over fine-tuning seeds uses the mean over seeds, and "A beats B" needs the gap to
exceed both the metric's floor and the seed spread (max - min over seeds) of A and of B: a gap that one more
seed could erase is not a finding. Floors: perplexity 2% (same-arm reruns differ by less), retrieval 0.10
(one sample in ten moves a cell by 0.10), cost 10% (same-arm reruns move time and peak memory by 5-10%),
lengthgen accuracy 5 points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from longseq.lab.presets import FACTORS, FT_FACTOR, ZERO_SHOT

Judgement = tuple[bool | None, str, list[list[str]], list[str]]

MARGIN = 0.02  # perplexity: relative floor
SCORE_MARGIN = 0.10  # passkey / lines accuracy: absolute floor
COST_MARGIN = 0.10  # time / peak memory: relative floor
LENGTHGEN_MARGIN = 0.05  # lengthgen per-token accuracy: absolute floor
FIT_ACCURACY = 0.90  # a lengthgen model below this training accuracy did not learn its task
LOWER_IS_BETTER = {"perplexity": True, "cost": True, "passkey": False, "lines": False, "retrieval": False,
                   "lengthgen": False}


@dataclass(frozen=True)
class Finding:
    """One claim of the literature, the numbers it is judged on, and the rule that judges it."""

    key: str
    title: str
    source: str
    claim: str
    judge: Callable[[dict[str, Any]], Judgement]


@dataclass(frozen=True)
class Stat:
    """A measured number over seeds: mean and spread (max - min; 0 for one seed)."""

    mean: float
    spread: float
    n: int

    @staticmethod
    def of(values: Sequence[float | None]) -> Stat | None:
        if not values or any(v is None for v in values):
            return None
        vals = [float(v) for v in values if v is not None]
        return Stat(sum(vals) / len(vals), max(vals) - min(vals), len(vals))

    def cell(self, digits: int = 2) -> str:
        """``mean`` or ``mean ±half-range`` for a table."""
        return f"{self.mean:.{digits}f}" if self.n < 2 else f"{self.mean:.{digits}f} ±{self.spread / 2:.{digits}f}"


def value(s: dict[str, Any], run: str, metric: str, method: str, length: int) -> float | None:
    """``metric`` of eval run ``run`` with RoPE ``method`` at ``length`` tokens (None if not measured)."""
    return s["evals"].get(run, {}).get(metric, {}).get(method, {}).get(str(length))


def ppl_at(s: dict[str, Any], run: str, method: str, length: int) -> float | None:
    """Perplexity of eval run ``run`` with RoPE ``method`` at ``length`` tokens."""
    return value(s, run, "perplexity", method, length)


def arm_runs(s: dict[str, Any], arm: str) -> list[str]:
    """The run names of fine-tuning arm ``arm``, one per seed."""
    return [f"{arm}-s{k}" for k in s["seeds"]]


def arm(s: dict[str, Any], name: str, metric: str, length: int) -> Stat | None:
    """``metric`` at ``length`` of fine-tuning arm ``name`` over its seeds."""
    return Stat.of([value(s, r, metric, "none", length) for r in arm_runs(s, name)])


def arm_cost(s: dict[str, Any], name: str, key: str) -> Stat | None:
    """Training cost ``key`` (``train_seconds``, ``peak_rss_mb``, ...) of arm ``name`` over its seeds."""
    return Stat.of([s["costs"].get(r, {}).get(key) for r in arm_runs(s, name)])


def margin(a: Stat, b: Stat, metric: str) -> float:
    """The gap "a beats b" must exceed: the metric's floor and both seed spreads."""
    floor = {"perplexity": MARGIN * b.mean, "cost": COST_MARGIN * b.mean,
             "lengthgen": LENGTHGEN_MARGIN}.get(metric, SCORE_MARGIN)
    return max(floor, a.spread, b.spread)


def beats(a: Stat | None, b: Stat | None, metric: str) -> bool | None:
    """``a`` is better than ``b`` by more than :func:`margin` (lower is better for perplexity and cost)."""
    if a is None or b is None:
        return None
    gap = b.mean - a.mean if LOWER_IS_BETTER[metric] else a.mean - b.mean
    return gap > margin(a, b, metric)


def not_worse(a: Stat | None, b: Stat | None, metric: str) -> bool | None:
    """``a`` is not worse than ``b`` by more than :func:`margin` ("matches or beats")."""
    worse = beats(b, a, metric)
    return None if worse is None else not worse


def fmt(x: Stat | float | None, digits: int = 2) -> str:
    """A table cell: a number or :class:`Stat` with ``digits`` decimals, or an en dash when not measured."""
    if x is None:
        return "–"
    return x.cell(digits) if isinstance(x, Stat) else f"{x:.{digits}f}"


def _all(values: list[bool | None]) -> bool | None:
    return None if any(v is None for v in values) else all(values)


def _arm_rows(s: dict[str, Any], arms: tuple[str, ...]) -> list[list[str]]:
    """Header + one row per fine-tuning arm: perplexity at every length, passkey and lines at 4L."""
    L4 = FT_FACTOR * s["native"]
    header = ["arm", *(f"ppl@{n}" for n in s["lengths"]), f"passkey@{L4}", f"lines@{L4}"]
    return [header, *([a, *(fmt(arm(s, a, "perplexity", n)) for n in s["lengths"]),
                       fmt(arm(s, a, "passkey", L4)), fmt(arm(s, a, "lines", L4))] for a in arms)]


def _versus(a: Stat | None, b: Stat | None, metric: str) -> str:
    if a is None or b is None:
        return "not measured"
    return f"{fmt(a)} vs {fmt(b)} (margin {margin(a, b, metric):.2f})"


def judge_pi(s: dict[str, Any]) -> Judgement:
    """Chen et al. report passkey retrieval and perplexity at the extended length after a short fine-tune."""
    L4 = FT_FACTOR * s["native"]
    checks, parts = [], []
    for metric in ("passkey", "perplexity"):
        pi, direct = arm(s, "ft-pi", metric, L4), arm(s, "ft-direct", metric, L4)
        better, worse = beats(pi, direct, metric), beats(direct, pi, metric)
        checks.append((better, worse))
        parts.append(f"{metric} at {L4}: PI {_versus(pi, direct, metric)} extrapolation")
    if any(b is None or w is None for b, w in checks):
        ok = None
    else:
        ok = any(b for b, _ in checks) and not any(w for _, w in checks)
    notes = []
    zs = [(m, value(s, "zero-shot-8x", "passkey", m, L4), ppl_at(s, "zero-shot-8x", m, L4)) for m in ("none", "pi")]
    if all(v is not None for _, v, p in zs):
        notes.append(f"before fine-tuning, at {L4}: " + "; ".join(
            f"{m}: passkey {v:.2f}, perplexity {p:.2f}" for m, v, p in zs if v is not None and p is not None))
    L, L8 = s["native"], s["lengths"][-1]
    at_l, at_8 = ppl_at(s, "zero-shot-8x", "none", L), ppl_at(s, "zero-shot-8x", "none", L8)
    if at_l and at_8:  # what interpolation is meant to repair: the unextended model's loss beyond L
        notes.append(f"the base model without any extension: perplexity {at_l:.2f} at L = {L} and {at_8:.2f} at "
                     f"{L8} ({at_8 / at_l - 1:+.0%}); extrapolation fails only where this rises")
    return ok, "; ".join(parts) + "; the rule: better on one, worse on neither", \
        _arm_rows(s, ("ft-direct", "ft-pi")), notes


def _mean_over(s: dict[str, Any], run: str, metric: str, method: str, lengths: list[int]) -> Stat | None:
    """The mean of ``metric`` over ``lengths`` (one number: these runs have no seeds)."""
    vs = [value(s, run, metric, method, n) for n in lengths]
    return None if not vs or any(v is None for v in vs) else Stat.of([sum(vs) / len(vs)])  # type: ignore[arg-type]


def judge_yarn_ntk(s: dict[str, Any]) -> Judgement:
    """Peng et al. compare perplexity (and passkey) of the scaling methods without training, 2x to 8x."""
    header = ["target", "method", *(f"ppl@{n}" for n in s["lengths"]), *(f"passkey@{n}" for n in s["lengths"])]
    rows, checks, notes = [], [], []
    L = s["native"]
    for f in FACTORS:
        run, target = f"zero-shot-{f}x", f * L
        longer = [n for n in s["lengths"] if L < n <= target]
        for m in ZERO_SHOT:
            src = "zero-shot-8x" if m == "none" else run  # "none" ignores the target: measured once
            rows.append([f"{f}x", m, *(fmt(ppl_at(s, src, m, n)) for n in s["lengths"]),
                         *(fmt(value(s, src, "passkey", m, n)) for n in s["lengths"])])
        for m in ("yarn", "ntk"):
            p_m, p_pi = Stat.of([ppl_at(s, run, m, target)]), Stat.of([ppl_at(s, run, "pi", target)])
            k_m, k_pi = (_mean_over(s, run, "passkey", x, longer) for x in (m, "pi"))
            checks += [beats(p_m, p_pi, "perplexity"), not_worse(k_m, k_pi, "passkey")]
            notes.append(f"{f}x: {m} perplexity at {target} {_versus(p_m, p_pi, 'perplexity')} pi; passkey over "
                         f"{longer[0]}-{target} {_versus(k_m, k_pi, 'passkey')} pi")
    return _all(checks), "; ".join(notes), [header, *rows], []


def judge_abf(s: dict[str, Any]) -> Judgement:
    """Xiong et al.: ABF matches or beats PI in continual pre-training (perplexity and retrieval)."""
    L4 = FT_FACTOR * s["native"]
    checks, parts = [], []
    for metric in ("perplexity", "retrieval"):
        a, p = arm(s, "ft-abf", metric, L4), arm(s, "ft-pi", metric, L4)
        checks.append(not_worse(a, p, metric))
        parts.append(f"{metric} at {L4}: ABF {_versus(a, p, metric)} PI")
    return _all(checks), "; ".join(parts) + " (Llama 2 Long: perplexity 6.323 vs 6.341)", \
        _arm_rows(s, ("ft-abf", "ft-pi")), []


def judge_longlora(s: dict[str, Any]) -> Judgement:
    """Chen et al. (LongLoRA): perplexity close to full fine-tuning at lower time and memory; LoRA alone worse."""
    L4 = FT_FACTOR * s["native"]
    header = ["arm", f"ppl@{L4}", f"ppl@{2 * L4}", f"passkey@{L4}", "train s", "peak RSS MB", "trainable params"]
    arms = ("ft-pi", "ft-longlora", "ft-lora")
    rows = [[a, fmt(arm(s, a, "perplexity", L4)), fmt(arm(s, a, "perplexity", 2 * L4)), fmt(arm(s, a, "passkey", L4)),
             fmt(arm_cost(s, a, "train_seconds"), 1), fmt(arm_cost(s, a, "peak_rss_mb"), 0),
             fmt(arm_cost(s, a, "trainable_parameters"), 0)] for a in arms]
    full, ll, lora = (arm(s, a, "perplexity", L4) for a in arms)
    # "close": within 10% of full fine-tuning, or within the seed spread when that is wider
    near = None if ll is None or full is None else ll.mean - full.mean <= max(0.10 * full.mean, ll.spread,
                                                                               full.spread)
    cheaper_t = beats(arm_cost(s, "ft-longlora", "train_seconds"), arm_cost(s, "ft-pi", "train_seconds"), "cost")
    cheaper_m = beats(arm_cost(s, "ft-longlora", "peak_rss_mb"), arm_cost(s, "ft-pi", "peak_rss_mb"), "cost")
    cheaper = None if cheaper_t is None or cheaper_m is None else cheaper_t or cheaper_m
    behind = beats(ll, lora, "perplexity")
    why = (f"perplexity at {L4}: LongLoRA {fmt(ll)} vs full fine-tuning {fmt(full)} (within 10%: {near}); "
           f"cheaper than full fine-tuning by more than {COST_MARGIN:.0%} in time: {cheaper_t}, in peak memory: "
           f"{cheaper_m}; LoRA alone {fmt(lora)}, behind LongLoRA: {behind}")
    notes = []
    tl, tf = arm_cost(s, "ft-longlora", "trainable_parameters"), arm_cost(s, "ft-pi", "trainable_parameters")
    if tl and tf:
        notes.append(f"LongLoRA trains {tl.mean / tf.mean:.0%} of the weights (LoRA adapters, the token embedding "
                     "and the norms, as in the paper)")
    t_ll, t_lora = arm_cost(s, "ft-longlora", "train_seconds"), arm_cost(s, "ft-lora", "train_seconds")
    if t_ll and t_lora:  # both train adapters; LongLoRA adds S²-Attn (and trains embedding + norms)
        notes.append(f"training time with S²-Attn (LongLoRA) {fmt(t_ll, 1)} s vs full attention (LoRA) "
                     f"{fmt(t_lora, 1)} s: {t_ll.mean / t_lora.mean - 1:+.0%}")
    return _all([near, cheaper, behind]), why, [header, *rows], notes


def _lengthgen_runs(s: dict[str, Any], pe: str) -> list[dict[str, Any]]:
    return [r for r in s.get("lengthgen", {}).get("runs", []) if r.get("pe") == pe]


def judge_randomized(s: dict[str, Any]) -> Judgement:
    """Ruoss et al.: per-token accuracy on lengths longer than any trained on, RoPE vs randomized RoPE.

    As the paper (and Delétang et al. 2023, whose protocol it uses), each encoding is scored by its best seed:
    the question is what the encoding can learn, and a seed that never fits the training lengths says nothing
    about positions. The best seed must reach :data:`FIT_ACCURACY` on its training lengths.
    """
    lg = s.get("lengthgen") or {}
    proto = lg.get("protocol", {})
    header = ["positional encoding", "seeds", "train acc (best seed)", "test acc per token: best seed",
              "mean over seeds", "per sequence (best seed)"]
    rows, best = [], {}
    for pe in ("rope", "randomized_rope"):
        runs = _lengthgen_runs(s, pe)
        top = max(runs, key=lambda r: r.get("accuracy", 0.0)) if runs else None
        best[pe] = top
        mean = Stat.of([r.get("accuracy") for r in runs])
        rows.append([pe, str(len(runs)), fmt(top and top.get("train_accuracy"), 3), fmt(top and top.get("accuracy"), 3),
                     fmt(mean, 3), fmt(top and top.get("sequence_accuracy"), 3)])
    tasks = ", ".join(proto.get("tasks", [])) or "–"
    train, test = proto.get("train_lengths") or [0], proto.get("test_lengths") or [0]
    rnd, plain = (Stat.of([best[pe]["accuracy"]]) if best[pe] else None for pe in ("randomized_rope", "rope"))
    why = (f"{tasks}, trained on lengths {min(train)}-{max(train)}, tested on {min(test)}-{max(test)}, best seed: "
           f"randomized RoPE {_versus(rnd, plain, 'lengthgen')} RoPE")
    ok, notes = beats(rnd, plain, "lengthgen"), []
    unfit = [pe for pe, r in best.items() if r and r.get("train_accuracy", 0.0) < FIT_ACCURACY]
    if ok is not None and unfit:
        notes.append(f"{', '.join(unfit)}: no seed reached {FIT_ACCURACY:.0%} training accuracy in "
                     f"{proto.get('steps')} steps, so the encoding did not learn the task on the training lengths "
                     "and its test lengths say nothing about position handling")
        ok = None
    return ok, why, [header, *rows], notes


FINDINGS: tuple[Finding, ...] = (
    Finding("pi", "Position interpolation beats extrapolation", "Chen et al. 2023 (PI), arXiv 2306.15595",
            "Fine-tuning with interpolated positions reaches the long context within a short budget (passkey "
            "retrieval and perplexity at the new length), while direct fine-tuning (extrapolation) barely "
            "extends it.", judge_pi),
    Finding("yarn_ntk", "YaRN and NTK beat PI without training", "Peng et al. 2023 (YaRN), arXiv 2309.00071",
            "Without fine-tuning, NTK-aware and YaRN scaling keep perplexity low at the extended length where "
            "plain PI degrades.", judge_yarn_ntk),
    Finding("abf", "ABF suits continual pre-training", "Xiong et al. 2023 (Llama 2 Long), arXiv 2309.16039",
            "Raising the RoPE base and continuing pre-training on long sequences matches or beats PI "
            "(Books PPL 6.323 vs 6.341).", judge_abf),
    Finding("longlora", "LongLoRA nearly matches full fine-tuning at a fraction of the cost",
            "Chen et al. 2023 (LongLoRA), arXiv 2309.12307",
            "S²-Attn + LoRA with trainable embeddings and norms comes close to full fine-tuning perplexity with "
            "less time and memory; plain LoRA falls behind.", judge_longlora),
    Finding("randomized", "Randomized positions generalize to unseen lengths",
            "Ruoss et al. 2023, arXiv 2305.16843",
            "Training on ordered random subsets of a larger position range improves accuracy on lengths never "
            "seen in training (+12.0% on average on algorithmic tasks).", judge_randomized),
)
