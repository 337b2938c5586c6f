"""User-facing errors.

Every problem a user can fix (bad flag, missing file, unknown name) is raised as :class:`UserError`.
The CLI prints it as one line (``longseq: error: ...``) and exits with code 2, never with a traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """A problem in the user's input, with the fix in the message. The CLI exits 2 on it."""


def one_line(err: BaseException | str, limit: int = 300) -> str:
    """``err`` as one line of at most ``limit`` characters (+ "..."), for messages that quote a library's error."""
    text = " ".join(str(err).split())
    if not text:
        return type(err).__name__ if isinstance(err, BaseException) else ""
    return (text[:limit] + "...") if len(text) > limit else text


def unknown_choice(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """Build an "unknown X" error that lists the valid choices and suggests the closest one."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return UserError(f"unknown {kind} '{name}'{hint}; choose one of: {', '.join(choices)}")
