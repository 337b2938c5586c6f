"""Why a model does not retrieve: the copy test (does it look back?) and the digit test (can it tell digits apart?).

Retrieval (passkey, lines) needs the in-context copying of induction heads (Olsson et al. 2022, "In-context
Learning and Induction Heads", arXiv 2209.11895): a model that has them predicts the second and later copies of a
random sequence far better than the first, which nothing in the context predicts. The lab reports this for the
pre-trained model, so a model that retrieves nothing comes with its measured cause: whether it copies at all.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from longseq.lab.data import repeat_doc

if TYPE_CHECKING:
    import torch


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


def digit_similarity(model_dir: str) -> dict[str, float]:
    """Mean pairwise cosine of the input embeddings of the ten digit tokens, and of all tokens.

    A passkey or line value is copied digit by digit (the lab tokenizer gives each digit its own token), so a
    copying head must be able to tell the ten digits apart. The lab's data shows digits mostly in random order
    (passkeys, line values), so the output layer gains little from telling them apart; with a tied embedding the
    input vectors are those output vectors. When they coincide (cosine near 1), no attention head can return the
    right digit even if it attends to it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    emb = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).get_input_embeddings().weight
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    if any(i is None or i == tok.unk_token_id for i in digits):
        raise ValueError(f"{model_dir}: the tokenizer has no single token per digit")
    return {"digits": round(_mean_cosine(emb[digits].detach()), 3), "all": round(_mean_cosine(emb.detach()), 3)}


def _mean_cosine(vectors: torch.Tensor) -> float:
    """Mean cosine over all pairs of distinct rows of ``vectors`` (n, d), n >= 2."""
    import torch

    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    total = unit.sum(0)
    n = unit.shape[0]
    return float((total @ total - n) / (n * (n - 1)))  # sum over i != j of u_i . u_j


def describe_digits(result: dict[str, Any]) -> str:
    """One sentence for the report."""
    return (f"the ten digit tokens' input embeddings have mean pairwise cosine {result['digits']:.2f} (all tokens: "
            f"{result['all']:.2f}; near 1 means a head that copies cannot tell the digits of a value apart)")
