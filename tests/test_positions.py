"""Randomized positions (Ruoss et al. 2023): sorted, distinct, in range, seeded, roughly uniform."""

from __future__ import annotations

import pytest
import torch

from longseq.core.errors import UserError
from longseq.models.positions import sample_positions


@pytest.mark.parametrize("n, max_len", [(1, 1), (5, 5), (40, 2048), (500, 2048), (0, 10)])
def test_sorted_distinct_in_range(n, max_len):
    pos = sample_positions(n, max_len, torch.Generator().manual_seed(n))
    assert pos.shape == (n,) and pos.dtype == torch.long
    assert torch.all(pos[1:] > pos[:-1])
    assert n == 0 or (pos.min() >= 0 and pos.max() < max_len)


def test_n_equal_max_len_is_the_identity():
    assert torch.equal(sample_positions(7, 7), torch.arange(7))


def test_deterministic_under_a_seed_and_varies_without():
    a = sample_positions(64, 2048, torch.Generator().manual_seed(3))
    b = sample_positions(64, 2048, torch.Generator().manual_seed(3))
    c = sample_positions(64, 2048, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_uniform_coverage():
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(100)
    for _ in range(2000):
        counts[sample_positions(10, 100, g)] += 1
    # each position is chosen with probability 10/100: 200 expected hits, binomial sd ~13
    assert counts.min() > 140 and counts.max() < 260


def test_max_len_below_n_is_a_clear_error():
    with pytest.raises(UserError, match="max_len >= sequence length"):
        sample_positions(10, 5)
    with pytest.raises(UserError):
        sample_positions(-1, 5)
