"""The copy test: does a model look back? Loss on a repeated list of random words, first copy vs repeats.

Retrieval (passkey, lines) needs the in-context copying of induction heads (Olsson et al. 2022, "In-context
Learning and Induction Heads", arXiv 2209.11895): a model that has them predicts the second and later copies of a
random sequence far better than the first, which nothing in the context predicts. The lab reports this for the
pre-trained model, so a model that retrieves nothing comes with its measured cause: whether it copies at all.
"""

from __future__ import annotations

import random
from typing import Any

from longseq.lab.data import repeat_doc


def _span_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose first character lies in ``[start, end)``."""
    return [i for i, (a, b) in enumerate(offsets) if start <= a < end and b > a]


def copy_test(model_dir: str, seed: int = 0, docs: int = 8, items: int = 40) -> dict[str, float]:
    """Mean per-token NLL (nats) of the first listing and of its three repeats over ``docs`` repeat documents.

    ``gain`` = first - repeats: about 0 without look-back, several nats with induction heads.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rng = random.Random(seed)
    first: list[float] = []
    repeats: list[float] = []
    for _ in range(docs):
        doc = repeat_doc(rng, items)
        listing = doc.split("Here is a list: ", 1)[1].split(".\n", 1)[0]
        enc = tok(doc, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        nll = -logp[:-1].gather(-1, ids[0, 1:, None])[:, 0]  # nll[i - 1]: token i given tokens < i
        spans, at = [], 0
        while (at := doc.find(listing, at)) >= 0:
            spans.append(_span_tokens(enc["offset_mapping"], at, at + len(listing)))
            at += len(listing)
        first += [float(nll[i - 1]) for i in spans[0][1:]]  # the listing's first token follows fixed text
        repeats += [float(nll[i - 1]) for span in spans[1:] for i in span[1:]]
    f, r = sum(first) / len(first), sum(repeats) / len(repeats)
    return {"first": round(f, 3), "repeats": round(r, 3), "gain": round(f - r, 3)}


def describe(result: dict[str, Any]) -> str:
    """One sentence for the report."""
    return (f"copy test (Olsson et al. 2022): loss {result['first']:.2f} nats per token on a list of random words, "
            f"{result['repeats']:.2f} on its repeats (gain {result['gain']:.2f}; about 0 means the model does not "
            "look back)")
