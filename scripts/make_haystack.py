"""Regenerate ``src/longseq/data/haystack.txt`` from Python's own documentation (``pydoc_data.topics``).

The haystack ships as a file (instead of being read from ``pydoc_data`` at run time) so that prompts are
identical on every Python version. Only prose paragraphs are kept: headings, grammar productions, code
examples and tables are dropped, and each paragraph is joined into one line.
Text: Python documentation, Copyright Python Software Foundation, PSF License Version 2.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydoc_data.topics import topics


def prose_paragraphs(text: str) -> list[str]:
    """Unindented paragraphs of at least 8 words containing a sentence."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(l.startswith((" ", "\t")) for l in lines) or any(set(l.strip()) <= set("*=-~^") for l in lines):
            continue
        para = " ".join(l.strip() for l in lines)
        if ">>>" in para or len(para.split()) < 8 or "." not in para:
            continue
        para = para.replace("::", ":")
        para = re.sub(r"\s+", " ", para.replace("*", "").replace("\u201c", '"').replace("\u201d", '"'))
        if para.isascii():
            out.append(para)
    return out


def main() -> None:
    paragraphs = [p for name in sorted(topics) for p in prose_paragraphs(topics[name])]
    seen, unique = set(), []
    for p in paragraphs:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "src/longseq/data/haystack.txt")
    out.write_text("\n".join(unique) + "\n", encoding="utf-8")
    print(f"{out}: {len(unique)} paragraphs, {sum(map(len, unique))} characters")


if __name__ == "__main__":
    main()
