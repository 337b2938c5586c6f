"""Parsing of user-typed values shared by all commands (lengths like ``16k``, comma lists)."""

from __future__ import annotations

import re
from decimal import Decimal

from longseq.core.errors import UserError

_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_length(text: str | int) -> int:
    """``"4096"`` -> 4096, ``"4k"`` -> 4096, ``"1.5k"`` -> 1536, ``"1m"`` -> 1048576 (binary k, as the field uses).

    A length is a whole number of tokens: ``"1000.7"`` or ``"1.3k"`` (1331.2) is an error, not rounded.
    """
    if isinstance(text, int):
        value = text
    else:
        m = _LENGTH.match(str(text))
        if not m:
            raise UserError(f"'{text}' is not a length; write a number of tokens like 4096 or 4k")
        exact = Decimal(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
        if exact != exact.to_integral_value():
            raise UserError(f"'{str(text).strip()}' is {exact} tokens, not a whole number; write e.g. "
                            f"{int(exact)} or {int(exact) + 1}")
        value = int(exact)
    if value <= 0:
        raise UserError(f"length must be positive, got {text}")
    return value


def parse_csv(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; ``None`` or empty -> ``[]``."""
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def parse_lengths(text: str, flag: str = "--lengths") -> list[int]:
    """Comma list of lengths, sorted; an empty list or a length given twice (``4k,4096``) is an error."""
    parts = parse_csv(text)
    values = [parse_length(p) for p in parts]
    if not values:
        raise UserError(f"no lengths given; write e.g. {flag} 1k,2k,4k")
    seen: dict[int, str] = {}
    for part, value in zip(parts, values):
        if value in seen:
            raise UserError(f"{flag} lists {value} tokens twice ({seen[value]} and {part}); give each length once")
        seen[value] = part
    return sorted(values)
