"""Shared fixtures for the eval tests: the embedded model's tokenizer and a tiny random Llama using it."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from longseq.models.loading import local_dir

    return AutoTokenizer.from_pretrained(str(local_dir("smollm2-135m")))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smol_tokenizer) -> Path:
    """A 2-layer random Llama (hidden 32) with SmolLM2's tokenizer and chat template, saved to a folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_theta=10000.0, eos_token_id=smol_tokenizer.eos_token_id,
                         bos_token_id=smol_tokenizer.bos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    smol_tokenizer.save_pretrained(out)
    return out
