"""``longseq memory bench``: the SCM paper's Table 2 protocol on a synthetic long-dialogue set.

Each session is a deterministic (seeded) dialogue in which the user states facts early (a pet's name, a
locker code, a favourite drink, a trip, where they live, a sibling and where the sibling works), buries them
under chatter, later updates one (a move to another city), and is then probed with single-hop, update and
multi-hop questions. Systems compared (same model, same window):

  * ``no-memory``     flash memory only (the previous turn);
  * ``full-history``  as many of the latest turns as fit in the window (plain truncation);
  * ``no-controller`` SCM retrieval, full texts in similarity order up to the memory budget (the ablation);
  * ``scm``           SCM with its controller (:mod:`longseq.memory.controller`; the public code's by default).

Metrics (paper Table 2): answer accuracy (the gold string appears in the answer), retrieval recall (share of
a probe's evidence turns present in the prompt), and accuracy split by single-hop / multi-hop; per system, how
often a retrieved memory was dropped, summarized or kept in full.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from longseq.core.errors import UserError, unknown_choice
from longseq.core.fsutil import atomic_write_text
from longseq.core.parsing import parse_csv
from longseq.core.tables import md_table
from longseq.memory.agent import SCMAgent
from longseq.memory.controller import FORMS, ControllerConfig, MemoryController
from longseq.memory.embedders import Embedder
from longseq.memory.llm import ChatLLM
from longseq.memory.store import MemoryStream

PETS = ["Biscuit", "Pepper", "Mochi", "Juniper", "Waffles", "Nimbus", "Clementine", "Pickles"]
ANIMALS = ["dog", "cat", "parrot", "rabbit", "tortoise", "hamster"]
DRINKS = ["mango lassi", "oolong tea", "cold brew", "hibiscus tea", "ginger beer", "matcha latte"]
CITIES = ["Porto", "Lyon", "Tallinn", "Kyoto", "Valparaiso", "Bergen", "Ghent", "Cusco", "Hobart", "Tartu"]
TRIPS = ["Nairobi", "Reykjavik", "Hanoi", "Marrakesh", "Montreal", "Lisbon", "Seoul", "Quito"]
MONTHS = ["March", "April", "May", "June", "September", "October"]
SIBLINGS = ["Ingrid", "Tomas", "Aiko", "Rafael", "Oksana", "Dmitri", "Leila", "Mateo"]
JOBS = ["dentist", "architect", "pilot", "librarian", "chemist", "baker"]
CHATTER = [
    ("Can you suggest a quick breakfast idea?", "Overnight oats with fruit are quick and filling."),
    ("What is a good way to stay focused while working?", "Try short focused blocks with small breaks in between."),
    ("Tell me a fun fact about octopuses.", "Octopuses have three hearts and blue blood."),
    ("How do I keep houseplants alive?", "Water them when the soil is dry and give them indirect light."),
    ("Any tips for sleeping better?", "Keep a regular schedule and avoid screens before bed."),
    ("What should I read this weekend?", "A short novel or a collection of essays would fit a weekend."),
    ("How long should I boil an egg?", "About nine minutes for a firm yolk."),
    ("Is it going to be a busy week for you?", "I am always here whenever you want to chat."),
    ("Recommend a board game for four people.", "Ticket to Ride is easy to learn and fun for four."),
    ("How can I make my coffee less bitter?", "Use slightly cooler water and a coarser grind."),
    ("What is a good stretch after running?", "A standing quad stretch and a calf stretch work well."),
    ("Give me a word that rhymes with orange.", "Few words rhyme perfectly; door hinge is a near rhyme."),
    ("How do I start learning to draw?", "Sketch simple shapes every day and copy objects around you."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("Why is the sky blue?", "Air scatters blue light more than red light."),
    ("Can you help me plan a picnic?", "Bring sandwiches, fruit, water, a blanket and a bag for trash."),
]
ACK = ["Got it, I will remember that.", "Thanks for telling me!", "Noted.", "That is good to know."]


@dataclass
class Probe:
    """A question asked at the end of a session: ``gold`` must appear in the answer."""

    question: str
    gold: str
    evidence: list[int]  # turn indices (0-based) holding the needed facts
    hops: int
    kind: str


@dataclass
class Session:
    """One generated dialogue: (user, assistant) turns, then the probes asked after it."""

    turns: list[tuple[str, str]]
    probes: list[Probe] = field(default_factory=list)


MIN_CHATTER = 6  # one chatter turn follows each of the six facts told early in a session


def check_chatter_turns(n: int) -> None:
    """Raise :class:`UserError` unless a session can hold ``n`` chatter turns."""
    if not MIN_CHATTER <= n <= len(CHATTER) * 3:
        raise UserError(f"--chatter-turns must be between {MIN_CHATTER} and {len(CHATTER) * 3}, got {n}")


def make_session(seed: int, chatter_turns: int = 36) -> Session:
    """One deterministic session: facts, chatter, an update, then probes (see module docstring)."""
    check_chatter_turns(chatter_turns)
    rng = random.Random(seed)
    pet, animal, drink = rng.choice(PETS), rng.choice(ANIMALS), rng.choice(DRINKS)
    city1, city2 = rng.sample(CITIES, 2)
    trip, month = rng.choice(TRIPS), rng.choice(MONTHS)
    sib, job, sib_city = rng.choice(SIBLINGS), rng.choice(JOBS), rng.choice([c for c in CITIES if c not in (city1, city2)])
    code = str(rng.randint(1000, 9999))
    facts = {
        "pet": f"My {animal} is called {pet}.",
        "code": f"My gym locker code is {code}.",
        "drink": f"My favourite drink is {drink}.",
        "trip": f"I am flying to {trip} in {month} for a conference.",
        "home": f"I live in {city1}.",
        "sibling": f"My sister is called {sib}.",
        "sibling_job": f"{sib} works as a {job} in {sib_city}.",
    }
    chatter = [CHATTER[i % len(CHATTER)] for i in rng.sample(range(len(CHATTER) * 3), chatter_turns)]
    turns: list[tuple[str, str]] = []
    where: dict[str, int] = {}
    order = list(facts)
    rng.shuffle(order)
    # facts in the first third, one chatter turn after each; the sibling's job comes later than the sibling
    order.remove("sibling_job")
    for name in order:
        where[name] = len(turns)
        turns.append((facts[name], rng.choice(ACK)))
        turns.append(chatter.pop())
    third = len(chatter) // 3
    for _ in range(third):
        turns.append(chatter.pop())
    where["sibling_job"] = len(turns)
    turns.append((facts["sibling_job"], rng.choice(ACK)))
    for _ in range(third):
        turns.append(chatter.pop())
    where["move"] = len(turns)
    turns.append((f"Big news: I moved away from {city1}, I live in {city2} now.", "Congratulations on the move!"))
    turns.extend(chatter)
    probes = [
        Probe(f"What is the name of my {animal}?", pet, [where["pet"]], 1, "single"),
        Probe("What is my gym locker code?", code, [where["code"]], 1, "single"),
        Probe("What is my favourite drink?", drink, [where["drink"]], 1, "single"),
        Probe(f"Which city am I flying to in {month}?", trip, [where["trip"]], 1, "single"),
        Probe("Which city do I live in now?", city2, [where["move"]], 1, "update"),
        Probe("In which city does my sister work?", sib_city, [where["sibling"], where["sibling_job"]], 2, "multi"),
    ]
    return Session(turns, probes)


SYSTEMS = ("no-memory", "full-history", "no-controller", "scm")


def parse_systems(text: str | None) -> list[str]:
    """Comma list of :data:`SYSTEMS` (empty: all of them); an unknown name is a :class:`UserError`."""
    systems = parse_csv(text) or list(SYSTEMS)
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        raise unknown_choice("system", bad[0], SYSTEMS)
    return systems


def run_bench(llm: ChatLLM, embedder: Embedder, sessions: int = 4, seed: int = 0, k: int = 4, max_new_tokens: int = 32,
              systems: Sequence[str] = SYSTEMS, chatter_turns: int = 36, progress: bool = True,
              controller: ControllerConfig | None = None, prompt_style: str = "reference") -> dict[str, Any]:
    """Run every system on every probe; return per-system metrics and per-probe records.

    ``controller`` is the controller's policy and thresholds at the reference's 4k window (default: the public
    code's), scaled to ``llm.context_length``; ``prompt_style`` picks the agent's prompt (:class:`SCMAgent`).
    """
    from tqdm import tqdm

    config = (controller or ControllerConfig()).scaled(llm.context_length)

    records: list[dict[str, Any]] = []
    dialogue_tokens = []
    total = sessions * 6 * len(systems)
    bar = tqdm(total=total, desc="memory bench", disable=not progress, file=sys.stderr)
    for s in range(sessions):
        sess = make_session(seed * 1000 + s, chatter_turns)
        texts = [f"User: {u}\n\nAssistant: {a}" for u, a in sess.turns]
        dialogue_tokens.append(sum(llm.count(t) for t in texts))
        for system in systems:
            stream = MemoryStream(":memory:", embedder)
            ids = stream.add(texts, [f"s{s}:{i}" for i in range(len(texts))], [llm.count(t) for t in texts])
            for probe in sess.probes:
                agent = SCMAgent(llm, stream, k=k, mode=system, max_new_tokens=max_new_tokens,
                                 controller=MemoryController(llm, config), prompt_style=prompt_style)
                agent.touch = False  # probes are independent of each other
                reply = agent.respond(probe.question, store=False)
                in_prompt = set(reply.prompt.activation) | ({reply.prompt.flash} if reply.prompt.flash else set())
                evidence = [ids[i] for i in probe.evidence]
                records.append({
                    "session": s, "system": system, "kind": probe.kind, "hops": probe.hops,
                    "question": probe.question, "gold": probe.gold, "answer": reply.text,
                    "correct": probe.gold.lower() in reply.text.lower(),
                    "recall": sum(e in in_prompt for e in evidence) / len(evidence),
                    "prompt_tokens": reply.prompt.tokens, "budget": reply.prompt.budget,
                    "used_memory": reply.prompt.used_memory,
                    "forms": [reply.prompt.forms[i] for i in sorted(reply.prompt.forms)],
                    "decisions": [d.__dict__ for d in reply.decisions],
                })
                bar.update(1)
            stream.close()
    bar.close()
    return {"records": records, "summary": summarize_records(records), "dialogue_tokens": dialogue_tokens}


def summarize_records(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per system: accuracy, recall, single-hop and multi-hop accuracy (percent), max prompt/budget."""
    out: dict[str, dict[str, float]] = {}
    for system in dict.fromkeys(r["system"] for r in records):
        rs = [r for r in records if r["system"] == system]
        single = [r for r in rs if r["hops"] == 1]
        multi = [r for r in rs if r["hops"] > 1]
        pct = lambda xs, key: 100.0 * sum(float(x[key]) for x in xs) / len(xs) if xs else float("nan")  # noqa: E731
        out[system] = {"n": len(rs), "accuracy": pct(rs, "correct"), "recall": pct(rs, "recall"),
                       "single_acc": pct(single, "correct"), "multi_acc": pct(multi, "correct"),
                       "max_prompt_tokens": max(r["prompt_tokens"] for r in rs), "budget": rs[0]["budget"],
                       "gate_skipped": sum(any(d["kind"] == "needs_memory" and not d["value"] for d in r["decisions"])
                                           for r in rs),
                       **{form: sum(r["forms"].count(form) for r in rs) for form in FORMS}}
    return out


REPORT_HEADER = ("system", "answer acc.", "retrieval recall", "single-hop acc.", "multi-hop acc.",
                 "max prompt / budget", "gate said no", "drop / summary / full")


def report_markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    """``report.md``: the run's settings, the protocol, and one table row per system."""
    rows = [(system, f"{m['accuracy']:.1f}", f"{m['recall']:.1f}", f"{m['single_acc']:.1f}", f"{m['multi_acc']:.1f}",
             f"{m['max_prompt_tokens']} / {m['budget']}", m["gate_skipped"], f"{m['drop']} / {m['summary']} / {m['full']}")
            for system, m in result["summary"].items()]
    toks = result["dialogue_tokens"]
    head = [
        "# longseq memory bench",
        "",
        f"Model: {meta['model']}; window {meta['context_length']} tokens; k={meta['k']}; {meta['sessions']} sessions "
        f"(seed {meta['seed']}), {result['summary'][next(iter(result['summary']))]['n']} probes per system; "
        f"dialogue length {min(toks)}-{max(toks)} tokens; embedder {meta['embedder']}.",
        "",
        "Protocol: SCM paper Table 2 (arXiv 2304.13343) on generated dialogues: accuracy = gold string in the "
        "answer; recall = share of evidence turns present in the prompt (activation + flash memory).",
        f"Controller: {meta.get('policy', 'code')} policy, {meta.get('parser', 'reference')} answer parser, "
        f"{meta.get('prompt_style', 'reference')} prompt; "
        "drop / summary / full counts the form given to each retrieved memory over all probes.",
        "",
    ]
    return "\n".join(head) + "\n" + md_table(REPORT_HEADER, rows) + "\n"


def save_report(out: str | Path, result: dict[str, Any], meta: dict[str, Any]) -> str:
    """Write ``report.md`` and ``results.json`` (meta + every record) into ``out``; return the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = report_markdown(result, meta)
    atomic_write_text(out / "report.md", report)
    atomic_write_text(out / "results.json", json.dumps({"meta": meta, **result}, indent=1, ensure_ascii=False))
    return report
