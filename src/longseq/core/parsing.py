"""Parsing of user-typed values shared by all commands (lengths like ``16k``, comma lists)."""

from __future__ import annotations

import re

from longseq.core.errors import UserError

_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_length(text: str | int) -> int:
    """``"4096"`` -> 4096, ``"4k"`` -> 4096, ``"1.5k"`` -> 1536, ``"1m"`` -> 1048576 (binary k, as the field uses)."""
    if isinstance(text, int):
        value = text
    else:
        m = _LENGTH.match(str(text))
        if not m:
            raise UserError(f"'{text}' is not a length; write a number of tokens like 4096 or 4k")
        mult = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
        value = int(round(float(m.group(1)) * mult))
    if value <= 0:
        raise UserError(f"length must be positive, got {text}")
    return value


def parse_csv(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; ``None`` or empty -> ``[]``."""
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def parse_lengths(text: str) -> list[int]:
    """Comma list of lengths, sorted and de-duplicated."""
    values = sorted({parse_length(p) for p in parse_csv(text)})
    if not values:
        raise UserError("no lengths given; write e.g. --lengths 1k,2k,4k")
    return values
