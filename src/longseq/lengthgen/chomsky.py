"""The 15 algorithmic tasks of the Chomsky-hierarchy length-generalization suite.

Delétang et al., "Neural Networks and the Chomsky Hierarchy" (ICLR 2023), as used by Ruoss et al.,
"Randomized Positional Encodings Boost Length Generalization of Transformers" (ACL 2023, §4).
Reference: google-deepmind/neural_networks_chomsky_hierarchy (``tasks/{regular,dcf,cs}/*.py``).

Every task is a batched generator ``sample(rng, batch_size, n) -> (inputs, targets, mask)`` over numpy
int64 arrays:

* ``inputs``  ``(B, n_in)`` token ids in ``[0, input_size)``; ``n_in == n`` except Modular Arithmetic
  (even ``n`` is shortened to ``n - 1``, as in the reference);
* ``targets`` ``(B, output_length(n))`` class ids in ``[0, output_size)``; after the end token of the
  variable-length outputs (Stack Manipulation, binary tasks) the reference pads with 0, and so do we;
* ``mask``    ``(B, output_length(n))`` bool; False after the end token (the reference's ``accuracy_mask``).

:func:`sample_batch` keys the randomness by ``(task, n, seed)``, so a batch is reproducible. The
distributions are the reference's (see docs/fidelity.md for the few deliberate differences); the regular,
string and binary tasks are vectorized over the batch in numpy (binary operands by rejection sampling,
which is uniform over the reference's range [1, 2^len - 1]); the two bracket grammars are recursive and
sampled per sequence (as in the reference, which also uses plain Python for them), and Compute Sqrt uses
Python's exact ``math.isqrt`` because numpy has no big integers.

Token ids (the reference's one-hot order; ``input_size`` matches the paper's vocabularies):

* Modular Arithmetic (9): digits 0-4, ``+`` 5, ``-`` 6, ``*`` 7, 8 reserved (blank, never sampled).
* Modular Arithmetic Brackets (11): digits 0-4, ``+`` 5, ``-`` 6, ``*`` 7, ``(`` 8, ``)`` 9, 10 reserved.
* Solve Equation (11): digits 0-4, ``+`` 5, ``-`` 6, ``(`` 7, ``)`` 8, ``x`` 9, ``=`` 10.
* Stack Manipulation (5): stack bits 0/1, POP 2, PUSH-0 3, PUSH-1 4; outputs 0/1 and end 2.
* Binary Addition / Multiplication (3): bits 0/1 and the operator 2; outputs bits and end 2.
* Cycle Navigation (3): 0 = step -1, 1 = stay, 2 = step +1.
* Missing Duplicate (4): bits 0/1, mask 2, pad 3.

Inputs too short for a task's format follow the reference's fixed samples: Solve Equation n < 3 is a
tape of token 0 with target 0; Missing Duplicate n = 1 is the input ``1`` with target 1; the binary tasks
at n <= 2 see a bare number in [0, 2^n - 2] (no operator) whose sum is the number itself and whose product
is written as n - 1 zeros; Stack Manipulation n = 1 is a one-symbol stack.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from longseq.core.errors import unknown_choice

Array = np.ndarray
Sample = tuple[Array, Array, Array]


@dataclass(frozen=True)
class Task:
    """One task: its Chomsky level, vocabulary sizes, output length rule and batched sampler."""

    name: str
    level: str  # "R" (regular), "DCF" (deterministic context-free) or "CS" (context-sensitive)
    input_size: int
    output_size: int
    output_length: Callable[[int], int]
    sample: Callable[[np.random.Generator, int, int], Sample]
    end_token: int | None = None  # class id after which targets are masked

    def tape_length(self, n: int) -> int:
        """Tokens the model sees for input length ``n``: the input plus one blank per output token."""
        n_in = n - 1 if self.name == "modular_arithmetic" and n % 2 == 0 else n
        return n_in + self.output_length(n)


def _full_mask(targets: Array) -> Array:
    return np.ones(targets.shape, dtype=bool)


def _end_terminated(values: Array, length: Array, out_len: int, end: int) -> tuple[Array, Array]:
    """Targets ``values[:, :length]``, the ``end`` token, then 0-padding to ``out_len`` (the reference's
    layout), and the mask that is True up to and including the end token.

    values ``(B, >= max(length))`` class ids, length ``(B,)`` with ``length < out_len``.
    """
    cols = np.arange(out_len)[None, :]
    padded = np.zeros((values.shape[0], out_len), dtype=np.int64)
    w = min(values.shape[1], out_len)
    padded[:, :w] = values[:, :w]
    y = np.where(cols < length[:, None], padded, 0)
    y[np.arange(len(y)), length] = end
    return y, cols <= length[:, None]


# ----------------------------------------------------------------------------------------- regular


def _even_pairs(rng: np.random.Generator, b: int, n: int) -> Sample:
    x = rng.integers(0, 2, (b, n))
    unequal = (x[:, 1:] != x[:, :-1]).sum(axis=1)
    y = (unequal % 2)[:, None]
    return x, y, _full_mask(y)


def _parity_check(rng: np.random.Generator, b: int, n: int) -> Sample:
    x = rng.integers(0, 2, (b, n))
    y = (x.sum(axis=1) % 2)[:, None]
    return x, y, _full_mask(y)


def _cycle_navigation(rng: np.random.Generator, b: int, n: int) -> Sample:
    x = rng.integers(0, 3, (b, n))
    y = ((x - 1).sum(axis=1) % 5)[:, None]
    return x, y, _full_mask(y)


_PLUS, _MINUS, _TIMES = 5, 6, 7


def _modular_arithmetic(rng: np.random.Generator, b: int, n: int) -> Sample:
    if n % 2 == 0:  # digits and operators alternate, so the reference uses odd lengths only
        n -= 1
    digits = rng.integers(0, 5, (b, n // 2 + 1))
    ops = rng.choice(np.array([_PLUS, _MINUS, _TIMES]), (b, n // 2))
    x = np.empty((b, n), dtype=np.int64)
    x[:, 0::2] = digits
    x[:, 1::2] = ops
    # Left-to-right evaluation with '*' binding tighter: keep the running sum and the current product term.
    total = np.zeros(b, dtype=np.int64)
    term = digits[:, 0].copy()
    for i in range(n // 2):
        op, d = ops[:, i], digits[:, i + 1]
        times = op == _TIMES
        total = np.where(times, total, total + term)
        term = np.where(times, term * d, np.where(op == _PLUS, d, -d)) % 5
    y = ((total + term) % 5)[:, None]
    return x, y, _full_mask(y)


# ----------------------------------------------------------------------------------- context-free


def _reverse_string(rng: np.random.Generator, b: int, n: int) -> Sample:
    x = rng.integers(0, 2, (b, n))
    y = x[:, ::-1].copy()
    return x, y, _full_mask(y)


_POP, _PUSH0, _PUSH1, _STACK_END = 2, 3, 4, 2


def _stack_manipulation(rng: np.random.Generator, b: int, n: int) -> Sample:
    # A random initial stack (bottom first, length uniform in [1, n)), then n - length actions.
    # n == 1 leaves no room for actions: the sample is a one-symbol stack.
    stack_len = rng.integers(1, n, b) if n > 1 else np.ones(b, dtype=np.int64)
    bits = rng.integers(0, 2, (b, n))
    actions = rng.integers(_POP, _PUSH1 + 1, (b, n))
    cols = np.arange(n)[None, :]
    x = np.where(cols < stack_len[:, None], bits, actions)
    stack = np.zeros((b, n), dtype=np.int64)
    height = np.zeros(b, dtype=np.int64)
    rows = np.arange(b)
    for j in range(n):  # the initial stack symbols are pushes, then the actions; POP on empty is ignored
        tok = x[:, j]
        push = (j < stack_len) | (tok != _POP)
        value = np.where(j < stack_len, tok, tok - _PUSH0)
        stack[rows[push], height[push]] = value[push]
        height = np.where(push, height + 1, np.maximum(height - 1, 0))
    # Output: the final stack top to bottom, the end token, then 0-padding (masked).
    k = np.arange(n)[None, :]
    top_down = np.take_along_axis(stack, np.clip(height[:, None] - 1 - k, 0, n - 1), axis=1)
    y, mask = _end_terminated(top_down, height, n + 1, _STACK_END)
    return x, y, mask


_LPAREN, _RPAREN = 8, 9  # Modular Arithmetic Brackets


def _bracket_expression(r: random.Random, n: int, ops: tuple[int, ...], lp: int, rp: int) -> tuple[list[int], int]:
    """The reference grammar that produces exactly ``n`` tokens: d | -d | (d) | (-d) | (L op R), value mod 5."""
    if n <= 4:
        d = r.randrange(5)
        return [[d], [_MINUS, d], [lp, d, rp], [lp, _MINUS, d, rp]][n - 1], (-d if n % 2 == 0 else d) % 5
    left = r.randint(1, n - 4)
    ltok, lval = _bracket_expression(r, left, ops, lp, rp)
    rtok, rval = _bracket_expression(r, n - left - 3, ops, lp, rp)
    op = ops[r.randrange(len(ops))]
    value = {_PLUS: lval + rval, _MINUS: lval - rval, _TIMES: lval * rval}[op] % 5
    return [lp, *ltok, op, *rtok, rp], value


def _py_random(rng: np.random.Generator) -> random.Random:
    return random.Random(int(rng.integers(0, 2**63 - 1)))


def _modular_arithmetic_brackets(rng: np.random.Generator, b: int, n: int) -> Sample:
    r = _py_random(rng)
    rows = [_bracket_expression(r, n, (_PLUS, _MINUS, _TIMES), _LPAREN, _RPAREN) for _ in range(b)]
    x = np.array([t for t, _ in rows], dtype=np.int64).reshape(b, n)
    y = np.array([[v] for _, v in rows], dtype=np.int64)
    return x, y, _full_mask(y)


_EQ_LP, _EQ_RP, _X, _EQUALS = 7, 8, 9, 10  # Solve Equation


def hide_digit(r: random.Random, tokens: list[int]) -> int:
    """Index of the digit that Solve Equation replaces by ``x``: a uniform start index, then forward
    (cyclically) to the first digit, as in the reference. A digit preceded by k non-digits is chosen with
    probability (k + 1) / len(tokens), so digits after brackets and operators are favoured."""
    j = r.randrange(len(tokens))
    while tokens[j] >= 5:
        j = (j + 1) % len(tokens)
    return j


def _solve_equation(rng: np.random.Generator, b: int, n: int) -> Sample:
    if n < 3:  # no room for "expr = v": the reference emits a tape of token 0 with target 0
        return np.zeros((b, n), dtype=np.int64), np.zeros((b, 1), dtype=np.int64), np.ones((b, 1), dtype=bool)
    r = _py_random(rng)
    x = np.empty((b, n), dtype=np.int64)
    y = np.empty((b, 1), dtype=np.int64)
    for i in range(b):
        tokens, value = _bracket_expression(r, n - 2, (_PLUS, _MINUS), _EQ_LP, _EQ_RP)
        j = hide_digit(r, tokens)
        y[i, 0] = tokens[j]
        tokens[j] = _X
        x[i] = [*tokens, _EQUALS, value]
    return x, y, _full_mask(y)


# ----------------------------------------------------------------------------- context-sensitive


def _duplicate_string(rng: np.random.Generator, b: int, n: int) -> Sample:
    x = rng.integers(0, 2, (b, n))
    return x, np.concatenate([x, x], axis=1), np.ones((b, 2 * n), dtype=bool)


_MASK, _PAD = 2, 3


def _missing_duplicate(rng: np.random.Generator, b: int, n: int) -> Sample:
    # w (length n // 2) written twice with one position masked; odd n gets a trailing pad token.
    # n == 1 has no room for w: the reference's fixed sample, input "1" and target 1.
    h = n // 2
    if h == 0:
        return np.ones((b, 1), dtype=np.int64), np.ones((b, 1), dtype=np.int64), np.ones((b, 1), dtype=bool)
    w = rng.integers(0, 2, (b, h))
    x = np.concatenate([w, w] + ([np.full((b, 1), _PAD)] if n % 2 else []), axis=1)
    where = rng.integers(0, 2 * h, b)
    rows = np.arange(b)
    y = x[rows, where][:, None].copy()
    x[rows, where] = _MASK
    return x, y, _full_mask(y)


def _odds_first(rng: np.random.Generator, b: int, n: int) -> Sample:
    # The reference code's order: symbols at odd 0-based indices, then those at even indices
    # (its docstring shows the opposite; see the reference notes).
    x = rng.integers(0, 2, (b, n))
    y = np.concatenate([x[:, 1::2], x[:, 0::2]], axis=1)
    return x, y, _full_mask(y)


def _bucket_sort(rng: np.random.Generator, b: int, n: int) -> Sample:
    x = rng.integers(0, 5, (b, n))
    y = np.sort(x, axis=1)
    return x, y, _full_mask(y)


_OP, _BIN_END = 2, 2


def _binary_operands(rng: np.random.Generator, b: int, n: int) -> tuple[Array, Array, Array]:
    """Inputs ``a + op + c`` (n >= 3) of two little-endian numbers, as in the reference: the length of
    ``a`` is uniform in [1, n - 2], ``c`` takes the remaining n - 1 - len(a) bits, and each operand is
    uniform in [1, 2^len - 1] (never zero; all-zero draws are redrawn, which keeps it uniform).

    Returns the tape ``(B, n)`` and the two operands zero-padded to ``(B, n)``.
    """
    len_a = rng.integers(1, n - 1, b)
    cols = np.arange(n)[None, :]
    in_a, in_c = cols < len_a[:, None], cols > len_a[:, None]
    bits = np.zeros((b, n), dtype=np.int64)
    redo = np.arange(b)
    while redo.size:
        bits[redo] = rng.integers(0, 2, (redo.size, n))
        zero = ~(bits[redo] & in_a[redo]).any(axis=1) | ~(bits[redo] & in_c[redo]).any(axis=1)
        redo = redo[zero]
    x = np.where(cols == len_a[:, None], _OP, bits)
    a = np.where(in_a, bits, 0)
    shifted = np.take_along_axis(bits, np.clip(cols + len_a[:, None] + 1, 0, n - 1), axis=1)
    c = np.where(cols < (n - 1 - len_a)[:, None], shifted, 0)
    return x, a, c


def _bare_number(rng: np.random.Generator, b: int, n: int) -> Array:
    """The reference's input for n <= 2: a number in [0, 2^n - 2] in n little-endian bits, no operator."""
    return (rng.integers(0, 2**n - 1, b)[:, None] >> np.arange(n)[None, :]) & 1


def _bits_then_end(value_bits: Array, out_len: int) -> tuple[Array, Array]:
    """Little-endian bits ``(B, W)`` without high zeros (zero is written ``0``), the end token, 0-padding."""
    nonzero = value_bits != 0
    digits = np.where(nonzero.any(axis=1), value_bits.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 1)
    return _end_terminated(value_bits, digits, out_len, _BIN_END)


def _carry(columns: Array) -> Array:
    """Propagate carries through little-endian column sums ``(B, W)`` -> bits ``(B, W)``."""
    bits = np.empty_like(columns)
    carry = np.zeros(columns.shape[0], dtype=np.int64)
    for j in range(columns.shape[1]):
        total = columns[:, j] + carry
        bits[:, j] = total & 1
        carry = total >> 1
    return bits


def _binary_addition(rng: np.random.Generator, b: int, n: int) -> Sample:
    if n <= 2:  # the reference: a bare number, "summed" alone
        x = _bare_number(rng, b, n)
        return (x, *_bits_then_end(x, n + 1))
    x, a, c = _binary_operands(rng, b, n)
    total = _carry(np.concatenate([a + c, np.zeros((b, 1), dtype=np.int64)], axis=1))
    y, mask = _bits_then_end(total, n + 1)
    return x, y, mask


def _binary_multiplication(rng: np.random.Generator, b: int, n: int) -> Sample:
    if n <= 2:  # the reference: a bare number and the fixed answer of n - 1 zeros, then the end token
        y, mask = _end_terminated(np.zeros((b, 1), dtype=np.int64), np.full(b, n - 1), n, _BIN_END)
        return _bare_number(rng, b, n), y, mask
    x, a, c = _binary_operands(rng, b, n)
    # Column sums of the schoolbook product are a convolution of the bit vectors; an FFT does the whole
    # batch at once and is exact here (sums are integers <= n, far below float64's 2^53).
    size = 2 * n
    conv = np.fft.irfft(np.fft.rfft(a, size, axis=1) * np.fft.rfft(c, size, axis=1), size, axis=1)
    product = _carry(np.rint(conv).astype(np.int64))
    y, mask = _bits_then_end(product, n)  # the product of nonzero operands fits in n - 1 bits
    return x, y, mask


def _compute_sqrt(rng: np.random.Generator, b: int, n: int) -> Sample:
    x = rng.integers(0, 2, (b, n))
    zero = ~x.any(axis=1)
    while zero.any():  # the number is uniform in [1, 2^n - 1]: redraw the all-zero rows
        x[zero] = rng.integers(0, 2, (int(zero.sum()), n))
        zero = ~x.any(axis=1)
    out = (n + 1) // 2
    y = np.empty((b, out), dtype=np.int64)
    for i, row in enumerate(x):  # exact big-integer square root (numpy has no big integers)
        root = math.isqrt(int("".join("01"[v] for v in row), 2))
        y[i] = [int(ch) for ch in format(root, f"0{out}b")]
    return x, y, _full_mask(y)


# ------------------------------------------------------------------------------------- registry

CHOMSKY_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("even_pairs", "R", 2, 2, lambda n: 1, _even_pairs),
        Task("modular_arithmetic", "R", 9, 5, lambda n: 1, _modular_arithmetic),
        Task("parity_check", "R", 2, 2, lambda n: 1, _parity_check),
        Task("cycle_navigation", "R", 3, 5, lambda n: 1, _cycle_navigation),
        Task("stack_manipulation", "DCF", 5, 3, lambda n: n + 1, _stack_manipulation, _STACK_END),
        Task("reverse_string", "DCF", 2, 2, lambda n: n, _reverse_string),
        Task("modular_arithmetic_brackets", "DCF", 11, 5, lambda n: 1, _modular_arithmetic_brackets),
        Task("solve_equation", "DCF", 11, 5, lambda n: 1, _solve_equation),
        Task("duplicate_string", "CS", 2, 2, lambda n: 2 * n, _duplicate_string),
        Task("missing_duplicate", "CS", 4, 2, lambda n: 1, _missing_duplicate),
        Task("odds_first", "CS", 2, 2, lambda n: n, _odds_first),
        Task("binary_addition", "CS", 3, 3, lambda n: n + 1, _binary_addition, _BIN_END),
        Task("binary_multiplication", "CS", 3, 3, lambda n: n, _binary_multiplication, _BIN_END),
        Task("compute_sqrt", "CS", 2, 2, lambda n: (n + 1) // 2, _compute_sqrt),
        Task("bucket_sort", "CS", 5, 5, lambda n: n, _bucket_sort),
    )
}


def get_task(name: str) -> Task:
    """Look a task up by name (one-line error with a suggestion otherwise)."""
    if name not in CHOMSKY_TASKS:
        raise unknown_choice("task", name, CHOMSKY_TASKS)
    return CHOMSKY_TASKS[name]


def task_rng(name: str, n: int, seed: int) -> np.random.Generator:
    """The generator for ``(task, n, seed)``: independent streams per task and length."""
    return np.random.default_rng([seed, n, zlib.crc32(name.encode())])


def sample_batch(name: str, n: int, batch_size: int, seed: int) -> Sample:
    """A reproducible batch of task ``name`` at input length ``n >= 1``: ``(inputs, targets, mask)``."""
    task = get_task(name)
    if n < 1:
        raise ValueError(f"input length must be >= 1, got {n}")
    x, y, mask = task.sample(task_rng(name, n, seed), batch_size, n)
    return x.astype(np.int64), y.astype(np.int64), mask
