"""Randomized positional encodings (Ruoss et al., "Randomized Positional Encodings Boost Length
Generalization of Transformers", ACL 2023, arXiv 2305.16843).

Instead of positions 0..n-1, a sequence of n tokens gets an ordered random subset of [0, max_len):
the model sees position values of a long sequence while training on short ones.
"""

from __future__ import annotations

import torch

from longseq.core.errors import UserError


def sample_positions(n: int, max_len: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ``n`` sorted, distinct integer positions in ``[0, max_len)``.

    Args:
        n: sequence length (number of positions).
        max_len: size L of the position range; must be >= n.
        generator: optional ``torch.Generator`` for reproducibility.

    Returns:
        LongTensor of shape ``(n,)``, strictly increasing, usable as ``position_ids``.
    """
    if n < 0:
        raise UserError(f"sequence length must be >= 0, got {n}")
    if max_len < n:
        raise UserError(
            f"randomized positions need max_len >= sequence length, got max_len={max_len} < n={n}; "
            "raise --randomized-positions / max_len"
        )
    # randperm + sort = uniform subset without replacement, as in the paper's reference code.
    perm = torch.randperm(max_len, generator=generator)[:n]
    return torch.sort(perm).values
