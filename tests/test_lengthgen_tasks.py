"""The 15 Chomsky-hierarchy task generators against hand-computed examples, independent solvers and the
statistics of the reference generators (google-deepmind/randomized_positional_encodings, ``tasks/``).

Run: PYTHONPATH=src python -m pytest tests/test_lengthgen_tasks.py
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from longseq.lengthgen.chomsky import CHOMSKY_TASKS, get_task, hide_digit, sample_batch
from longseq.core.errors import UserError

MAX = 500  # the paper's longest test length

# Independent per-sequence solvers (plain Python, written from the task definitions, not from the
# generators). Each maps one input row to (targets, mask) as lists.
OPS = {5: "+", 6: "-", 7: "*"}


def _expr(tokens, table):
    return "".join(table.get(t, str(t)) for t in tokens)


def solve(task: str, x: list[int]) -> tuple[list[int], list[bool]]:
    n = len(x)
    full = lambda y: (y, [True] * len(y))  # noqa: E731
    if task == "even_pairs":
        return full([sum(a != b for a, b in zip(x, x[1:])) % 2])
    if task == "parity_check":
        return full([sum(x) % 2])
    if task == "cycle_navigation":
        pos = 0
        for a in x:
            pos = (pos + {0: -1, 1: 0, 2: 1}[a]) % 5
        return full([pos])
    if task == "modular_arithmetic":
        return full([eval(_expr(x, OPS)) % 5])  # Python's own precedence: * before + and -
    if task == "modular_arithmetic_brackets":
        return full([eval(_expr(x, {**OPS, 8: "(", 9: ")"})) % 5])
    if task == "reverse_string":
        return full(x[::-1])
    if task == "duplicate_string":
        return full(x + x)
    if task == "odds_first":
        return full(x[1::2] + x[0::2])
    if task == "bucket_sort":
        return full(sorted(x))
    if task == "stack_manipulation":
        k = 0
        while k < n and x[k] in (0, 1):
            k += 1
        stack = list(x[:k])
        for a in x[k:]:
            if a == 2:
                stack = stack[:-1]
            else:
                stack.append(a - 3)
        y = stack[::-1] + [2] + [0] * (n - len(stack))  # end token, then the reference's 0-padding
        return y, [i <= len(stack) for i in range(n + 1)]
    if task in ("binary_addition", "binary_multiplication"):
        width = n + 1 if task == "binary_addition" else n
        if n <= 2:  # the reference's bare number: its own "sum"; the product is n - 1 zeros
            value = int("".join(map(str, x[::-1])), 2)
            bits = [int(ch) for ch in bin(value)[2:][::-1]] if task == "binary_addition" else [0] * (n - 1)
        else:
            op = x.index(2)
            a, c = int("".join(map(str, x[:op][::-1])), 2), int("".join(map(str, x[op + 1:][::-1])), 2)
            value = a + c if task == "binary_addition" else a * c
            bits = [int(ch) for ch in bin(value)[2:][::-1]]
        y = bits + [2] + [0] * (width - 1 - len(bits))
        return y, [i <= len(bits) for i in range(width)]
    if task == "compute_sqrt":
        v = int("".join(map(str, x)), 2)
        r = 0
        for bit in reversed(range(n)):  # digit-by-digit: set each bit of the root if it still fits
            if (r | 1 << bit) ** 2 <= v:
                r |= 1 << bit
        return full([int(ch) for ch in format(r, f"0{(n + 1) // 2}b")])
    raise KeyError(task)


SOLVABLE = [t for t in CHOMSKY_TASKS if t not in ("solve_equation", "missing_duplicate")]


def rows_with(task: str, n: int, x: list[int], batch: int = 2**16) -> list[tuple[list[int], list[bool]]]:
    """All (targets, mask) the generator emits for input ``x`` in a large batch at length ``n``."""
    xs, ys, ms = sample_batch(task, n, batch, seed=123)
    idx = np.flatnonzero((xs == np.array(x)).all(axis=1))
    assert len(idx), f"{task}: input {x} not drawn in {batch} samples"
    return [(ys[i].tolist(), ms[i].tolist()) for i in idx]


# (task, input, expected targets incl. end-token padding) computed by hand; lengths 1 up to 7.
HAND = [
    ("even_pairs", [1], [0]),
    ("even_pairs", [0, 1, 1], [1]),
    ("even_pairs", [1, 0, 1], [0]),
    ("parity_check", [1], [1]),
    ("parity_check", [1, 0, 1], [0]),
    ("cycle_navigation", [0], [4]),  # one step left from 0 on the 5-cycle
    ("cycle_navigation", [2, 2, 1], [2]),
    ("modular_arithmetic", [3], [3]),
    ("modular_arithmetic", [4, 7, 3], [2]),  # 4*3 = 12 = 2 mod 5
    ("modular_arithmetic", [2, 6, 4, 7, 3], [0]),  # 2 - 12 = -10 = 0: * binds tighter
    ("modular_arithmetic", [1, 5, 2, 7, 3, 6, 4], [3]),  # 1 + 2*3 - 4 = 3
    ("reverse_string", [1], [1]),
    ("reverse_string", [1, 1, 0], [0, 1, 1]),
    ("duplicate_string", [0], [0, 0]),
    ("duplicate_string", [1, 0], [1, 0, 1, 0]),
    ("odds_first", [1], [1]),
    ("odds_first", [1, 0, 0, 1], [0, 1, 1, 0]),
    ("bucket_sort", [3], [3]),
    ("bucket_sort", [4, 0, 2], [0, 2, 4]),
    ("stack_manipulation", [1], [1, 2]),
    ("stack_manipulation", [0, 1, 4], [1, 1, 0, 2]),  # push 1 onto [0, 1]: top-down 1 1 0
    ("stack_manipulation", [1, 2, 2], [2, 0, 0, 0]),  # pop, then pop on empty (ignored): empty stack
    ("binary_addition", [0], [0, 2]),  # n = 1: the reference's bare number 0
    ("binary_addition", [0, 1], [0, 1, 2]),  # n = 2: the bare number 2 ("01" little-endian)
    ("binary_addition", [1, 2, 1], [0, 1, 2, 0]),  # 1 + 1 = 2 = "01" little-endian
    ("binary_addition", [1, 1, 2, 1], [0, 0, 1, 2, 0]),  # 3 + 1 = 4
    ("binary_multiplication", [0], [2]),  # n = 1: the fixed answer, an empty product
    ("binary_multiplication", [1, 0], [0, 2]),  # n = 2: the fixed answer "0"
    ("binary_multiplication", [1, 1, 2, 1], [1, 1, 2, 0]),  # 3 * 1 = 3
    ("binary_multiplication", [0, 1, 2, 1, 1], [0, 1, 1, 2, 0]),  # 2 * 3 = 6 = "011"
    ("compute_sqrt", [1], [1]),
    ("compute_sqrt", [1, 0, 0, 0], [1, 0]),  # floor(sqrt(8)) = 2
    ("compute_sqrt", [1, 1, 1, 1, 1], [1, 0, 1]),  # floor(sqrt(31)) = 5
    ("modular_arithmetic_brackets", [3], [3]),
    ("modular_arithmetic_brackets", [6, 2], [3]),  # -2 = 3 mod 5
    ("modular_arithmetic_brackets", [8, 6, 4, 9], [1]),  # (-4) = 1 mod 5
]


@pytest.mark.parametrize("task,x,expected", HAND, ids=[f"{t}-{''.join(map(str, x))}" for t, x, _ in HAND])
def test_hand_computed_examples(task, x, expected):
    for y, _ in rows_with(task, len(x), x):
        assert y == expected


def test_stack_and_binary_masks_stop_after_end_token():
    y, m = rows_with("stack_manipulation", 3, [1, 2, 2])[0]
    assert y == [2, 0, 0, 0] and m == [True, False, False, False]
    y, m = rows_with("binary_addition", 3, [1, 2, 1])[0]
    assert y == [0, 1, 2, 0] and m == [True, True, True, False]


def test_missing_duplicate_hand_examples():
    xs, ys, _ = sample_batch("missing_duplicate", 5, 512, seed=3)
    for x, y in zip(xs.tolist(), ys.tolist()):
        assert len(x) == 5 and x[-1] == 3 and x[:4].count(2) == 1  # w w with one mask, odd n padded
        i = x.index(2)
        assert y == [x[(i + 2) % 4]]  # the other copy of the masked bit
    x, y, _ = sample_batch("missing_duplicate", 1, 4, seed=0)
    assert x.tolist() == [[1]] * 4 and y.tolist() == [[1]] * 4  # the reference's fixed n = 1 sample


def _eval_equation(x: list[int], answer: int) -> bool:
    table = {5: "+", 6: "-", 7: "(", 8: ")", 9: str(answer)}
    assert x[-2] == 10 and x.count(9) == 1
    return eval(_expr(x[:-2], table)) % 5 == x[-1]


def test_solve_equation_solution_satisfies_equation():
    for n in (3, 4, 9, 60):
        xs, ys, _ = sample_batch("solve_equation", n, 64, seed=n)
        for x, y in zip(xs.tolist(), ys.tolist()):
            assert len(x) == n and 0 <= y[0] < 5 and _eval_equation(x, y[0])
    for n in (1, 2):
        x, y, _ = sample_batch("solve_equation", n, 3, seed=0)
        assert x.shape == (3, n) and (x == 0).all() and (y == 0).all()  # n < 3: the reference's token-0 tape


@pytest.mark.parametrize("task", SOLVABLE)
@pytest.mark.parametrize("n", [1, 2, 3, 8, 40])
def test_generators_match_independent_solver(task, n):
    xs, ys, ms = sample_batch(task, n, 64, seed=n)
    for x, y, m in zip(xs.tolist(), ys.tolist(), ms.tolist()):
        ry, rm = solve(task, x)
        assert (y, m) == (ry, rm), (task, x)


@pytest.mark.parametrize("task", [t for t in SOLVABLE if t not in ("compute_sqrt", "modular_arithmetic_brackets")])
def test_generators_at_max_length(task):
    xs, ys, ms = sample_batch(task, MAX, 8, seed=1)
    for x, y, m in zip(xs.tolist(), ys.tolist(), ms.tolist()):
        assert (y, m) == solve(task, x)


def test_max_length_bracket_and_sqrt_tasks():
    xs, ys, _ = sample_batch("compute_sqrt", MAX, 8, seed=1)
    for x, y in zip(xs.tolist(), ys.tolist()):
        v, r = int("".join(map(str, x)), 2), int("".join(map(str, y)), 2)
        assert 1 <= v and r * r <= v < (r + 1) ** 2 and len(y) == 250
    xs, ys, _ = sample_batch("modular_arithmetic_brackets", MAX, 8, seed=1)
    for x in xs.tolist():  # too deeply nested for Python's parser: check balance and the token set
        depth = [0]
        for t in x:
            depth.append(depth[-1] + (t == 8) - (t == 9))
        assert min(depth) == 0 and depth[-1] == 0 and set(x) <= set(range(10))
    xs, ys, _ = sample_batch("solve_equation", MAX, 4, seed=1)
    assert xs.shape == (4, MAX) and (xs[:, -2] == 10).all() and ((xs == 9).sum(1) == 1).all()


EXPECTED_OUT_LEN = {
    "even_pairs": lambda n: 1, "modular_arithmetic": lambda n: 1, "parity_check": lambda n: 1,
    "cycle_navigation": lambda n: 1, "stack_manipulation": lambda n: n + 1, "reverse_string": lambda n: n,
    "modular_arithmetic_brackets": lambda n: 1, "solve_equation": lambda n: 1,
    "duplicate_string": lambda n: 2 * n, "missing_duplicate": lambda n: 1, "odds_first": lambda n: n,
    "binary_addition": lambda n: n + 1, "binary_multiplication": lambda n: n,
    "compute_sqrt": lambda n: math.ceil(n / 2), "bucket_sort": lambda n: n,
}
VOCAB = {"even_pairs": (2, 2), "modular_arithmetic": (9, 5), "parity_check": (2, 2), "cycle_navigation": (3, 5),
         "stack_manipulation": (5, 3), "reverse_string": (2, 2), "modular_arithmetic_brackets": (11, 5),
         "solve_equation": (11, 5), "duplicate_string": (2, 2), "missing_duplicate": (4, 2), "odds_first": (2, 2),
         "binary_addition": (3, 3), "binary_multiplication": (3, 3), "compute_sqrt": (2, 2), "bucket_sort": (5, 5)}


@pytest.mark.parametrize("task", list(CHOMSKY_TASKS))
def test_output_length_rules_and_vocabulary(task):
    t = get_task(task)
    assert (t.input_size, t.output_size) == VOCAB[task]
    for n in (1, 2, 3, 4, 7, 41, MAX):
        x, y, m = sample_batch(task, n, 4, seed=0)
        n_in = n - 1 if task == "modular_arithmetic" and n % 2 == 0 else n
        assert x.shape == (4, n_in) and y.shape == m.shape == (4, EXPECTED_OUT_LEN[task](n))
        assert t.output_length(n) == y.shape[1] and t.tape_length(n) == n_in + y.shape[1]
        assert x.min() >= 0 and x.max() < t.input_size
        assert y.min() >= 0 and y.max() < t.output_size and m[:, 0].all()


@pytest.mark.parametrize("task", list(CHOMSKY_TASKS))
def test_determinism(task):
    a = sample_batch(task, 30, 16, seed=5)
    b = sample_batch(task, 30, 16, seed=5)
    c = sample_batch(task, 30, 16, seed=6)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


def test_unknown_task_is_a_user_error():
    with pytest.raises(UserError, match="did you mean 'parity_check'"):
        get_task("parity_chek")


# ------------------------------------------- statistics against the reference generators' definitions


def _operands(x: list[int]) -> tuple[int, int, int]:
    """(length of the first operand, first, second) of a binary tape, little-endian."""
    op = x.index(2)
    return op, int("".join(map(str, x[:op][::-1])), 2), int("".join(map(str, x[op + 1:][::-1])), 2)


@pytest.mark.parametrize("task", ["binary_addition", "binary_multiplication"])
def test_binary_operands_are_never_zero(task):
    for n in range(3, 12):
        xs, ys, ms = sample_batch(task, n, 2048, seed=n)
        ops = [_operands(x) for x in xs.tolist()]
        assert all(a >= 1 and c >= 1 for _, a, c in ops), task
        if task == "binary_multiplication":  # a product of nonzero operands is never the trivial "0"
            assert not ((ys[:, 0] == 0) & (ys[:, 1] == 2)).any()


def test_binary_operand_distribution_matches_reference_definition():
    """The reference draws len(a) uniform in [1, n - 2] and each operand uniform in [1, 2^len - 1]:
    at n = 5 that is 23 tapes with exact probabilities; a chi-square test on 30,000 samples."""
    n, draws = 5, 30_000
    exact = {}
    for la in range(1, n - 1):
        lc = n - 1 - la
        for a in range(1, 2**la):
            for c in range(1, 2**lc):
                exact[(la, a, c)] = 1 / (n - 2) / (2**la - 1) / (2**lc - 1)
    xs, _, _ = sample_batch("binary_addition", n, draws, seed=11)
    counts: dict[tuple[int, int, int], int] = {}
    for x in xs.tolist():
        key = _operands(x)
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) <= set(exact)  # no tape outside the reference's support (no zero operand)
    chi2 = sum((counts.get(k, 0) - draws * p) ** 2 / (draws * p) for k, p in exact.items())
    assert chi2 < 48.3, chi2  # 99.9% quantile of chi-square with 22 degrees of freedom


def test_binary_short_inputs_follow_reference():
    """n <= 2: the reference samples a bare number in [0, 2^n - 2] (randint's upper bound is exclusive)."""
    x1, _, _ = sample_batch("binary_addition", 1, 256, seed=0)
    assert (x1 == 0).all()  # randint(0, 1) is always 0
    x2, y2, _ = sample_batch("binary_addition", 2, 3000, seed=0)
    values = (x2[:, 0] + 2 * x2[:, 1]).tolist()
    assert set(values) == {0, 1, 2} and all(abs(values.count(v) / 3000 - 1 / 3) < 0.04 for v in (0, 1, 2))


def _walk_probabilities(tokens: list[int]) -> dict[int, float]:
    """The reference's rule in closed form: a digit preceded (cyclically) by k non-digits is hit by k + 1 of
    the len(tokens) equally likely start indices."""
    out = {}
    for j, t in enumerate(tokens):
        if t < 5:
            k = 1
            while tokens[(j - k) % len(tokens)] >= 5:
                k += 1
            out[j] = k / len(tokens)
    return out


def test_solve_equation_position_of_x_follows_reference_walk():
    tokens = [7, 7, 3, 5, 7, 1, 6, 4, 8, 8]  # ((3+(1-4)): the digits follow 4 (with the wrap), 2 and 1 non-digits
    probs = _walk_probabilities(tokens)
    assert probs == {2: 0.5, 5: 0.3, 7: 0.2}  # a uniform choice among the digits would give 1/3 each
    r = random.Random(0)
    hits = [hide_digit(r, tokens) for _ in range(20_000)]
    for j, p in probs.items():
        assert abs(hits.count(j) / len(hits) - p) < 0.015, (j, hits.count(j) / len(hits), p)
    # Whole generator at n = 7: the expression is always "(d op d)"; starts 0, 1 and 4 (wrapping) reach the
    # first digit: P = 3/5, where a uniform choice among the digits would give 1/2.
    xs, _, _ = sample_batch("solve_equation", 7, 20_000, seed=1)
    assert ((xs == 9).sum(axis=1) == 1).all()
    assert abs((xs[:, 1] == 9).mean() - 0.6) < 0.015
