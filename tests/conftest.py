"""Shared fixtures: a tiny random Llama (seconds) and offline settings."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Hub ids must fail fast in tests, not retry for 20 s
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def tiny_llama_config(**overrides):
    """A 2-layer Llama config small enough for CPU unit tests (head_dim 16, GQA 4/2, 256-token native context)."""
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _byte_tokenizer():
    """A small real tokenizer (word-level over a fixed vocabulary) built with the `tokenizers` library."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(125):
        vocab[f"w{i}"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


@pytest.fixture
def tiny_llama_dir(tmp_path):
    """A saved tiny random Llama checkpoint (safetensors + tokenizer) in a temporary folder."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    out = tmp_path / "tiny-llama"
    model.save_pretrained(out)
    _byte_tokenizer().save_pretrained(out)
    return out
