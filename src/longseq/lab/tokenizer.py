"""The lab's own tokenizer: byte-level BPE trained on the lab corpus with the ``tokenizers`` library.

A thousand or so tokens keep the input and output embeddings a small share of the weights, as in real LLMs
(Llama 2 7B: 2 x 32k x 4096 = 262M of 6.7B, about 4%); the 49k-token vocabulary of the embedded model
would make it most of a few-million-parameter model. Digits are split one per token (as Llama's tokenizer
does), so every passkey and line value is a sequence of single-digit tokens that a small model can copy, and
byte-level BPE decodes every string back exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from longseq.core.fsutil import atomic_dir

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE (``PreTrainedTokenizerFast``) with ``vocab_size`` tokens learned from ``texts``.

    ``<|endoftext|>`` is BOS, EOS and padding; no special token is added when encoding, so packing in
    ``longseq train`` (EOS between documents) and prompts in ``longseq eval`` see the same ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                   clean_up_tokenization_spaces=False, model_max_length=1 << 30)


def build_tokenizer(target: Path, texts: Iterable[str], vocab_size: int) -> str:
    """Train the tokenizer once and save it to ``target`` (cached: an existing one is reused)."""
    if (target / "tokenizer.json").is_file():
        return str(target)
    tok = train_tokenizer(texts, vocab_size)
    with atomic_dir(target, overwrite=True) as tmp:
        tok.save_pretrained(tmp)
    return str(target)
