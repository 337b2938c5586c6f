"""LongRoPE's evolutionary search over per-dimension rescale factors, with successive halving and a pass budget.

The algorithm follows microsoft/LongRoPE ``evolution/algorithms/genetic_base.py`` and ``dim_mono.py``
(Ding et al., arXiv 2402.13753, Alg. 1) at a smaller scale:
  * the first population is the seed methods (PI, NTK, YaRN, Llama-3 as factor curves) plus mutations of
    them; every generation keeps the ``parents`` best and adds ``mutations`` mutants of random parents and
    ``crossovers`` children of two distinct random parents (a failed crossover mutates the first parent);
  * mutation re-draws every factor on a 0.01 grid between its neighbours (1.0 before the first, 1.25 s
    after the last), so the curve stays non-decreasing; crossover walks the genes, each taken from the
    second parent with probability 0.3 x 0.5, until the child is new and monotone;
  * a candidate is never evaluated twice (LongRoPE's ``history``).
What LongRoPE does not have: the children of a generation are scored by successive halving (Jamieson and
Talwalkar 2016; Li et al., Hyperband, 2018): all on ``rungs[0]`` windows, the best 1/eta of them (and only
those that beat the worst parent on the same windows) on ``rungs[1]``, and so on; only candidates scored on
every window may become parents, so the seeds, always fully scored first, bound the result from above.

Resumability: every window score is appended to ``search.jsonl`` as it is computed. A rerun replays the
whole search from the seed, taking known scores from that file instead of running the model, so it reaches
the same state (the search is a pure function of the seed and the scores) and continues where it stopped.
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from longseq.core.fsutil import append_jsonl, read_jsonl
from longseq.tune.factors import GRID, Candidate, is_monotone
from longseq.tune.scoring import WindowScore, loss, perplexity

MAX_TRIES = 50


@dataclass(frozen=True)
class SearchSettings:
    """Search sizes. LongRoPE's defaults are population 64, parents 32, 16 mutations + 16 crossovers."""

    initial: int = 16
    parents: int = 8
    mutations: int = 4
    crossovers: int = 4
    rungs: tuple[int, ...] = (1, 2, 4)
    eta: int = 2
    p_gene: float = 0.3


@dataclass
class Scored:
    """A candidate with its origin and its window scores so far."""

    cand: Candidate
    origin: str
    scores: list[WindowScore] = field(default_factory=list)

    def loss(self, windows: int | None = None) -> float:
        return loss(self.scores[:windows] if windows else self.scores)

    @property
    def ppl(self) -> float:
        return perplexity(self.scores)


class BudgetSpent(Exception):
    """Raised inside the search when the next forward pass would exceed the budget."""


@dataclass
class SearchResult:
    """The outcome: best candidate, the seeds' scores, the final parents and the cost."""

    best: Scored
    seeds: dict[str, Scored]
    parents: list[Scored]
    candidates: int  # scored on at least one window
    passes: int
    generations: int
    best_per_generation: list[float]


def cand_id(cand: Candidate) -> str:
    """Short stable id of a candidate (in ``search.jsonl``)."""
    return hashlib.sha1(cand.key.encode()).hexdigest()[:12]


class Search:
    """One resumable search.

    Args:
        score: ``score(cand, window) -> WindowScore`` (one or two forward passes, see ``passes_per_window``).
        seeds: name -> seed candidate, in order.
        high: upper bound of a factor (1.25 s); ``attention``: (low, high) range of the attention factor.
        settings: the sizes; ``budget``: forward passes; ``seed``: RNG seed; ``log``: the JSONL path.
        progress: a callable ``progress(passes, best_ppl)`` called after every window (e.g. a tqdm update).
    """

    def __init__(self, score: Callable[[Candidate, int], WindowScore], passes_per_window: int,
                 seeds: dict[str, Candidate], high: float, attention: tuple[float, float], settings: SearchSettings,
                 budget: int, seed: int, log: Path, progress: Callable[[int, float], None] | None = None):
        self.score_fn, self.ppw, self.seeds, self.high = score, passes_per_window, seeds, high
        self.att_lo, self.att_hi = attention
        self.s, self.budget, self.rng, self.log = settings, budget, random.Random(seed), Path(log)
        self.progress = progress
        self.cache = {(r["candidate"], int(r["window"])): WindowScore(r["nll"], r["tokens"], r.get("passkey"))
                      for r in read_jsonl(self.log) if "window" in r}
        self.history: set[str] = set()
        self.used = 0
        self.scored: set[str] = set()  # ids of the candidates scored on at least one window
        self.generation = 0
        self.best_ppl = math.inf

    @property
    def full(self) -> int:
        return self.s.rungs[-1]

    # ------------------------------------------------------------------------------------- evaluation

    def _window(self, sc: Scored) -> None:
        """Score ``sc`` on its next window, from the cache when this run (or a killed one) already did."""
        j = len(sc.scores)
        key = (cand_id(sc.cand), j)
        if self.used + self.ppw > self.budget:
            raise BudgetSpent
        self.used += self.ppw
        if key not in self.cache:
            ws = self.score_fn(sc.cand, j)
            self.cache[key] = ws
            append_jsonl(self.log, {"candidate": key[0], "window": j, "generation": self.generation,
                                    "origin": sc.origin, "nll": ws.nll, "tokens": ws.tokens, "passkey": ws.passkey,
                                    **sc.cand.to_json()})
        sc.scores.append(self.cache[key])
        self.scored.add(key[0])
        if len(sc.scores) == self.full:
            self.best_ppl = min(self.best_ppl, sc.ppl)
        if self.progress:
            self.progress(self.ppw, self.best_ppl)

    def _upto(self, sc: Scored, windows: int) -> None:
        while len(sc.scores) < windows:
            self._window(sc)

    def halve(self, batch: list[Scored], parents: list[Scored]) -> list[Scored]:
        """Successive halving of ``batch``; returns the candidates scored on every window."""
        alive = batch
        for r, windows in enumerate(self.s.rungs):
            for sc in alive:
                self._upto(sc, windows)
            if r == len(self.s.rungs) - 1:
                break
            alive = sorted(alive, key=lambda c: c.loss(windows))[:math.ceil(len(alive) / self.s.eta)]
            if len(parents) >= self.s.parents:
                worst = max(p.loss(windows) for p in parents[:self.s.parents])
                alive = [c for c in alive if c.loss(windows) < worst]
        return alive

    # -------------------------------------------------------------------------------------- operators

    def _new(self, factors: list[float], attention: float) -> Candidate | None:
        cand = Candidate(tuple(factors), attention)
        if cand.key in self.history or not is_monotone(cand.factors):
            return None
        self.history.add(cand.key)
        return cand

    def _grid_pick(self, lo: float, hi: float) -> float:
        """A value of the 0.01 grid starting at ``lo`` that does not pass ``hi`` (``lo`` when hi <= lo)."""
        steps = max(0, int(math.floor((hi - lo) / GRID + 1e-9)))
        return round(lo + GRID * self.rng.randint(0, steps), 6)

    def mutate(self, parent: Candidate) -> Candidate | None:
        """LongRoPE's monotone mutation: every factor re-drawn between its (updated) neighbours; the attention
        factor re-drawn within +-0.05 of the parent's with probability ``p_gene``."""
        for _ in range(MAX_TRIES):
            f = list(parent.factors)
            n = len(f)
            for i in range(n):
                lo = 1.0 if i == 0 else f[i - 1]
                hi = f[i + 1] if i < n - 1 else self.high
                f[i] = self._grid_pick(lo, hi)
            att = parent.attention
            if self.rng.random() < self.s.p_gene:
                lo = max(self.att_lo, att - 0.05)
                att = self._grid_pick(lo, min(self.att_hi, att + 0.05))
            cand = self._new(f, att)
            if cand is not None:
                return cand
        return None

    def crossover(self, a: Candidate, b: Candidate) -> Candidate | None:
        """LongRoPE's crossover: genes of ``b`` copied into ``a`` one by one until the child is new and monotone."""
        if a.key == b.key:
            return None
        genes, other = [*a.factors, a.attention], [*b.factors, b.attention]
        for _ in range(MAX_TRIES):
            for i in range(len(genes)):
                if self.rng.random() < self.s.p_gene:
                    if self.rng.random() < 0.5:
                        genes[i] = other[i]
                    cand = self._new(genes[:-1], genes[-1])
                    if cand is not None:
                        return cand
        return None

    # ------------------------------------------------------------------------------------------- loop

    def _children(self, parents: list[Scored]) -> list[Scored]:
        kids: list[Scored] = []
        for _ in range(self.s.mutations):
            p = parents[self.rng.randrange(len(parents))]
            c = self.mutate(p.cand)
            if c is not None:
                kids.append(Scored(c, "mutation"))
        for _ in range(self.s.crossovers):
            if len(parents) < 2:
                break
            i, j = sorted(self.rng.sample(range(len(parents)), 2))
            c = self.crossover(parents[i].cand, parents[j].cand)
            origin = "crossover"
            if c is None:
                c, origin = self.mutate(parents[i].cand), "mutation"
            if c is not None:
                kids.append(Scored(c, origin))
        return kids

    def run(self) -> SearchResult:
        """Run (or replay and continue) the search until the budget is spent."""
        seeds: dict[str, Scored] = {}
        for name, cand in self.seeds.items():
            if cand.key in self.history:
                continue
            self.history.add(cand.key)
            seeds[name] = Scored(cand, f"seed:{name}")
            self._upto(seeds[name], self.full)  # BudgetSpent here: the caller checked the seeds' cost
        population = sorted(seeds.values(), key=lambda c: c.loss())
        best_per_gen = [population[0].loss()]
        try:
            first = []
            for k in range(max(0, self.s.initial - len(seeds))):
                c = self.mutate(population[k % len(population)].cand)
                if c is not None:
                    first.append(Scored(c, "mutation"))
            population = sorted(population + self.halve(first, population), key=lambda c: c.loss())
            best_per_gen.append(population[0].loss())
            while True:
                self.generation += 1
                parents = population[:self.s.parents]
                kids = self._children(parents)
                if not kids:
                    break
                population = sorted(parents + self.halve(kids, parents), key=lambda c: c.loss())
                best_per_gen.append(population[0].loss())
        except BudgetSpent:
            pass
        return SearchResult(population[0], seeds, population[:self.s.parents], len(self.scored), self.used,
                            self.generation, best_per_gen)


def seed_cost(n_seeds: int, settings: SearchSettings, passes_per_window: int) -> int:
    """Forward passes needed to score the seeds on every window (the least useful budget)."""
    return n_seeds * settings.rungs[-1] * passes_per_window


def tqdm_progress(budget: int, enabled: bool) -> tuple[Any, Callable[[int, float], None]]:
    """A tqdm bar over the pass budget showing the best perplexity so far, and its update callback."""
    from tqdm.auto import tqdm

    bar = tqdm(total=budget, desc="tune-rope", unit="pass", disable=not enabled, file=sys.stderr)

    def update(passes: int, best: float) -> None:
        bar.update(passes)
        if math.isfinite(best):
            bar.set_postfix(best_ppl=f"{best:.3f}", refresh=False)

    return bar, update
